"""Where genaug keeps things: the storage root, safe names and paths, atomic writes.

Everything genaug writes lives under the storage root (``GENAUG_HOME``, default ``./genaug-data``,
overridable by ``--home``) unless an output URI says otherwise. Paths inside the root are built here
and only here, so the rules (no ``..``, no escaping through symlinks, atomic publish) hold everywhere.

Layout under the root::

    models/<name>/v<k>/     immutable registered model versions (jobs.registry)
    runs/<name>/            Ray Train run storage: checkpoints for --resume
    datasets/<job-id>/      generation job outputs (jobs.shards)
    state/queue.sqlite      the job queue (cluster.queue)
    cache/                  derived caches (feature classifiers, ...)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_HOME = "./genaug-data"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would also accept "x\n"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The storage root: ``home`` if given, else ``$GENAUG_HOME``, else ``./genaug-data`` (absolute)."""
    raw = home if home not in (None, "") else os.environ.get("GENAUG_HOME") or DEFAULT_HOME
    raw = str(raw)
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    if "://" in raw:
        raise ValueError(f"storage root {raw!r} is not a local path; valid: a local directory or file://PATH")
    return Path(raw).expanduser().resolve()


def validate_name(name: str, what: str = "name") -> str:
    """Check a model/run/dataset name: 1-64 chars of letters, digits, '.', '_', '-', no '/' or '..'."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def confine(root: Path, candidate: str | os.PathLike) -> Path:
    """Resolve ``candidate`` (relative to ``root`` or absolute) and require it to stay inside ``root``.

    Symlinks are resolved first, so a link pointing out of the root is rejected too.
    """
    root = Path(root).resolve()
    raw = str(candidate)
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    if "://" in raw:
        raise ValueError(f"output {str(candidate)!r} is not a local path; valid: a path under {root}")
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    try:
        resolved = path.resolve()
        resolved.exists()  # an over-long name fails here (ENAMETOOLONG), not later in the caller
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ValueError(
            f"output {str(candidate)!r} cannot be resolved ({e}); valid: a path under {root}"
        ) from None
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"output {str(candidate)!r} escapes the storage root {root}; valid: a path under it")
    return resolved


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and an atomic rename."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """Read a JSON file, raising ``FileNotFoundError`` that names it when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    return json.loads(path.read_text())
