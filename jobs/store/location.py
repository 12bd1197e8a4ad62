"""Where genaug keeps things: the storage root (a local folder or an object-store URI), safe names and
paths, atomic writes. Every other module builds its paths through this one.

The storage root is ``--home`` if given, else ``$GENAUG_HOME``, else ``./genaug-data``. It may be:

- a local path, or ``file://PATH``;
- ``s3://BUCKET[/PREFIX]``: AWS S3 or any S3-compatible store (MinIO, Ceph RGW, moto). The endpoint
  comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://host:port`` for a plain-HTTP
  store), the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (else the bucket's region is looked
  up), credentials from the standard AWS chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``~/.aws``, instance roles). The bucket must exist; genaug never creates one;
- ``gs://BUCKET[/PREFIX]``: Google Cloud Storage with the default Google credentials
  (``STORAGE_EMULATOR_HOST`` points it at an emulator).

All of them go through ``pyarrow.fs``. A :class:`Location` is a filesystem plus a path in it; it prints
as the URI (a plain absolute path when local), pickles as that URI (the receiving process builds its
own filesystem from its own environment, so no credentials travel) and joins only validated relative
names (:meth:`Location.join`, :meth:`Location.confine`).

Commit semantics. ``write_bytes`` never leaves a partial object under the final name: on local disk
it writes a temporary file beside the target, fsyncs it, renames it and fsyncs the folder, so the
commit survives a power cut (``jobs.store.atomic.commit_rename``); on S3/GCS a single upload is atomic
(the object appears only once the upload completed), so it writes the final key directly.
Multi-file artefacts add a commit marker written last: a dataset's
``manifest.json`` then ``_SUCCESS`` (``jobs.store.shards``), a model version's ``model.json``
(``jobs.store.registry``); readers treat anything without its marker as not committed.

Layout under the root::

    models/<name>/v<k>/     immutable registered model versions (jobs.store.registry)
    runs/<name>/            Ray Train run storage: checkpoints for --resume
    datasets/<job-id>/      generation job outputs (jobs.store.shards)
    state/queue.sqlite      the job queue (cluster.queue)      - local roots only, see local_base()
    cache/                  derived caches (feature classifiers) - local roots only, see local_base()

The SQLite queue and the caches always stay on a local disk (SQLite cannot live on an object store):
with a URI root they go under ``$GENAUG_STATE_DIR`` (default ``~/.genaug/<root slug>``) instead."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from jobs.store.atomic import join_path, json_bytes, put_atomic, read_bytes

DEFAULT_HOME = "./genaug-data"


STATE_DIR_ENV = "GENAUG_STATE_DIR"


DEFAULT_STATE_BASE = "~/.genaug"


OBJECT_STORES = ("s3", "gs")  # URI schemes served by an object store (atomic single-object PUT)


MAX_KEY_BYTES = 1024  # S3 and GCS object names: at most 1024 bytes of UTF-8


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would also accept "x\n"


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


_LOCAL_FS = pafs.LocalFileSystem()


HOME_HELP = (
    "storage root: a folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (default $GENAUG_HOME or ./genaug-data)"
)


_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


VALID_FORMS = "a local path, file://PATH, s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]"


# --------------------------------------------------------------------------------------------------
# Filesystems from the environment
# --------------------------------------------------------------------------------------------------


def s3_options(bucket: str | None = None) -> dict[str, Any]:
    """``pyarrow.fs.S3FileSystem`` keyword arguments from the standard AWS environment variables.

    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` -> ``endpoint_override`` and ``scheme``;
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` -> ``region`` (without either and without an endpoint, the
    bucket's region is looked up). Credentials are *not* copied here: the AWS SDK reads
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``~/.aws`` or the instance
    role itself, so a pickled filesystem carries no secret. Buckets are never created.
    """
    env = os.environ
    opts: dict[str, Any] = {"allow_bucket_creation": False, "allow_bucket_deletion": False}
    endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip()
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"AWS_ENDPOINT_URL {endpoint!r} invalid; valid: http://HOST:PORT or https://HOST[:PORT]"
            )
        opts.update(scheme=parts.scheme, endpoint_override=parts.netloc + parts.path.rstrip("/"))
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
    if region:
        opts["region"] = region
    elif not endpoint and bucket:
        opts["region"] = _bucket_region(bucket)
    return opts


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError as e:
        raise ValueError(f"cannot find the region of bucket {bucket!r} ({e}); set AWS_REGION") from None


def gcs_options() -> dict[str, Any]:
    """``pyarrow.fs.GcsFileSystem`` keyword arguments: an emulator from ``STORAGE_EMULATOR_HOST``."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return {}
    parts = urllib.parse.urlsplit(host if "://" in host else f"http://{host}")
    return {"scheme": parts.scheme, "endpoint_override": parts.netloc, "anonymous": True}


@functools.lru_cache(maxsize=16)
def _cached_fs(scheme: str, options: tuple[tuple[str, Any], ...], identity: str) -> pafs.FileSystem:
    # ``identity`` only keys the cache (a filesystem resolves its credentials when it is built)
    if scheme == "s3":
        return pafs.S3FileSystem(**dict(options))
    return pafs.GcsFileSystem(**dict(options))


def filesystem_for(scheme: str, bucket: str | None = None) -> pafs.FileSystem:
    """The (cached) pyarrow filesystem for ``scheme`` ("s3" or "gs") as the environment configures it now."""
    if scheme == "s3":
        opts = s3_options(bucket)
    elif scheme == "gs":
        opts = gcs_options()
    else:
        raise ValueError(f"unsupported storage scheme {scheme!r}; valid: {VALID_FORMS}")
    creds = "\0".join(os.environ.get(k, "") for k in _CREDENTIAL_VARS)
    return _cached_fs(scheme, tuple(sorted(opts.items())), hashlib.sha256(creds.encode()).hexdigest())


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def _norm_key(path: str) -> str:
    """``bucket/a/b`` from ``bucket//a/./b/``; ``..`` resolved lexically (object stores have no links)."""
    norm = posixpath.normpath("/" + path).lstrip("/")
    return "" if norm == "." else norm


class Location:
    """A file or folder: a ``pyarrow.fs`` filesystem and a path inside it, printable as a URI.

    ``scheme`` is "" for local paths, else "s3" or "gs"; ``path`` is absolute for local paths and
    ``BUCKET/KEY`` for object stores. Build one with :func:`location`, extend it with ``/`` or
    :meth:`join` (relative names only), and keep user input in with :meth:`confine`.
    """

    __slots__ = ("fs", "path", "scheme")

    def __init__(self, fs: pafs.FileSystem, path: str, scheme: str = "") -> None:
        self.fs, self.path, self.scheme = fs, path, scheme

    # ---------------------------------------------------------------- identity

    @property
    def uri(self) -> str:
        """An absolute local path, or ``s3://BUCKET/KEY`` / ``gs://BUCKET/KEY``."""
        return self.path if not self.scheme else f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.scheme, self.path) == (other.scheme, other.path)

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    def __reduce__(self):
        return (location, (self.uri,))  # rebuilt from the receiver's environment: no secrets pickled

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local_path(self) -> Path:
        """The local ``Path``; ``ValueError`` for an object-store location."""
        if self.scheme:
            raise ValueError(f"{self.uri} is not on a local disk; valid here: a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        """The enclosing folder (a bucket and the local ``/`` are their own parent)."""
        head = posixpath.dirname(self.path.rstrip("/"))
        return Location(self.fs, head or (self.path if self.scheme else "/"), self.scheme)

    # ---------------------------------------------------------------- paths

    def join(self, *parts: str) -> Location:
        """A location below this one; each part is a relative name (``/`` separates levels).

        Refused with ``ValueError``: absolute parts, URIs, empty/``.``/``..`` segments, NUL bytes.
        """
        return Location(self.fs, join_path(self.path, *parts), self.scheme)

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def relative_to(self, other: Location) -> str:
        """This location's path below ``other`` (``ValueError`` if it is not below it)."""
        if self.scheme != other.scheme or not _is_within(self.path, other.path):
            raise ValueError(f"{self.uri} is not under {other.uri}")
        return self.path[len(other.path.rstrip("/")) :].lstrip("/")

    def confine(self, candidate: str | os.PathLike | Location) -> Location:
        """Resolve ``candidate`` (relative to this root, or absolute/URI) and require it to stay inside.

        Local roots resolve symlinks first, so a link pointing out is refused too. Object-store roots
        accept relative names and URIs of the same store whose key lies under the root's prefix (``..``
        is resolved lexically); anything else raises ``ValueError`` naming the root.
        """
        if self.is_local:
            return Location(self.fs, str(_confine_local(Path(self.path), candidate)))
        raw = candidate.uri if isinstance(candidate, Location) else os.fspath(candidate)
        valid = f"valid: a relative path or a {self.scheme}:// URI under {self.uri}"
        if not isinstance(raw, str) or any(ord(c) < 32 for c in raw):
            raise ValueError(f"output {raw!r} invalid (control characters); {valid}")
        m = _SCHEME_RE.match(raw)
        if m:
            if m.group(1).lower() != self.scheme:
                raise ValueError(f"output {raw!r} escapes the storage root {self.uri}; {valid}")
            path = _norm_key(raw[m.end() :])
        elif raw.startswith("/") or raw.startswith("~"):
            raise ValueError(f"output {raw!r} escapes the storage root {self.uri}; {valid}")
        else:
            path = _norm_key(self.path + "/" + raw)
        if not _is_within(path, self.path):
            raise ValueError(f"output {raw!r} escapes the storage root {self.uri}; {valid}")
        if len(path.partition("/")[2].encode()) > MAX_KEY_BYTES:
            raise ValueError(f"output {raw!r} is too long (object keys are at most {MAX_KEY_BYTES} bytes)")
        return Location(self.fs, path, self.scheme)

    # ---------------------------------------------------------------- queries

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list(self, recursive: bool = False, max_depth: int | None = None) -> list[pafs.FileInfo]:
        """Entries below this folder (empty when it does not exist or is a file), sorted by path.

        ``max_depth`` (with ``recursive``) keeps entries at most that many levels below the first one:
        1 = children and grandchildren. On object stores a recursive listing is one paged LIST request.
        """
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        try:
            infos = self.fs.get_file_info(sel)
        except OSError:  # a file, not a folder (NotADirectoryError locally, OSError elsewhere)
            if self.info().type != pafs.FileType.File:
                raise
            return []
        if recursive and max_depth is not None:
            start = len(self.path.rstrip("/")) + 1
            infos = [i for i in infos if i.path[start:].count("/") <= max_depth]
        return sorted(infos, key=lambda i: i.path)

    def child(self, info: pafs.FileInfo) -> Location:
        """The location of an entry returned by :meth:`list`."""
        return Location(self.fs, info.path, self.scheme)

    # ---------------------------------------------------------------- reading and writing

    def read_bytes(self) -> bytes:
        """The whole file; ``FileNotFoundError`` naming it when it is missing."""
        return read_bytes(self.fs, self.path, self.uri)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def write_bytes(self, data: bytes) -> None:
        """Write atomically (see the module docstring): readers see the old file or the whole new one."""
        put_atomic(self.fs, self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_json(self, obj: Any) -> None:
        self.write_bytes(json_bytes(obj))

    def open_input_file(self):
        return self.fs.open_input_file(self.path)

    def delete(self, missing_ok: bool = True) -> None:
        """Delete this file (not a folder)."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_tree(self) -> None:
        """Delete this folder and everything in it (nothing happens when it does not exist)."""
        if self.info().type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def mkdir(self) -> None:
        """Create the folder on local disk; a no-op on object stores (keys need no folders)."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def upload_files(self, folder: str | os.PathLike, names: Iterable[str]) -> None:
        """Copy local files ``folder/<name>`` to ``<self>/<name>`` in order, each written atomically."""
        folder = Path(folder)
        for name in names:
            (self / name).write_bytes((folder / name).read_bytes())

    def download_files(self, folder: str | os.PathLike, names: Iterable[str]) -> None:
        """Copy ``<self>/<name>`` to local ``folder/<name>`` for each name."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes((self / name).read_bytes())


def _is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it, by whole path segments (``a/bc`` is not below ``a/b``)."""
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def location(target: str | os.PathLike | Location) -> Location:
    """Parse a local path, ``file://PATH``, ``s3://BUCKET/KEY`` or ``gs://BUCKET/KEY`` into a Location.

    Local paths become absolute (``~`` expanded, symlinks kept). Other schemes, a URI without a bucket
    and URI query strings raise ``ValueError`` naming the valid forms.
    """
    if isinstance(target, Location):
        return target
    raw = os.fspath(target)
    if not isinstance(raw, str):
        raise ValueError(f"storage location {raw!r} invalid; valid: {VALID_FORMS}")
    m = _SCHEME_RE.match(raw)
    if m is None or m.group(1).lower() == "file":
        local = raw[m.end() :] if m else raw
        if not local or "\x00" in local:
            raise ValueError(f"storage location {raw!r} invalid; valid: {VALID_FORMS}")
        return Location(_LOCAL_FS, os.path.abspath(os.path.expanduser(local)))
    scheme = m.group(1).lower()
    scheme = "gs" if scheme == "gcs" else scheme
    if scheme not in OBJECT_STORES:
        raise ValueError(f"storage location {raw!r} has an unsupported scheme; valid: {VALID_FORMS}")
    rest = raw[m.end() :]
    if "?" in rest or "#" in rest:
        raise ValueError(
            f"storage location {raw!r} has a query string; valid: {VALID_FORMS} "
            "(configure S3 through AWS_ENDPOINT_URL, AWS_REGION and the AWS credential variables)"
        )
    path = _norm_key(rest)
    bucket = path.partition("/")[0]
    if not bucket or rest.startswith("/") or any(ord(c) < 32 for c in path):
        raise ValueError(f"storage location {raw!r} names no bucket; valid: {VALID_FORMS}")
    return Location(filesystem_for(scheme, bucket), path, scheme)


def as_location(target: str | os.PathLike | Location) -> Location:
    """Alias of :func:`location` for readability at call sites that accept Path, URI or Location."""
    return location(target)


# --------------------------------------------------------------------------------------------------
# The storage root and its local side
# --------------------------------------------------------------------------------------------------


def resolve_home(home: str | os.PathLike | Location | None = None) -> Location:
    """The storage root: ``home`` if given, else ``$GENAUG_HOME``, else ``./genaug-data``.

    A local root is made absolute with symlinks resolved; a URI root is checked for form only (nothing
    is contacted). ``ValueError`` for anything else, naming the valid forms.
    """
    if isinstance(home, Location):
        return home
    raw = home if home not in (None, "") else os.environ.get("GENAUG_HOME") or DEFAULT_HOME
    loc = location(raw)
    if loc.is_local:
        return Location(loc.fs, str(Path(loc.path).resolve()))
    return loc


def local_base(home: str | os.PathLike | Location | None = None) -> Path:
    """The local folder that holds ``state/`` (the SQLite queue) and ``cache/`` for a storage root.

    A local root holds them itself. For a URI root they live on this machine's disk under
    ``$GENAUG_STATE_DIR`` if set, else ``~/.genaug/<scheme>-<bucket-and-prefix>-<hash>`` (one folder per
    root, so two roots never share a queue).
    """
    root = resolve_home(home)
    if root.is_local:
        return Path(root.path)
    configured = os.environ.get(STATE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{root.scheme}-{root.path}")[:80]
    digest = hashlib.sha256(root.uri.encode()).hexdigest()[:10]
    return (Path(DEFAULT_STATE_BASE).expanduser() / f"{slug}-{digest}").resolve()


def state_dir(home: str | os.PathLike | Location | None = None) -> Path:
    """Where the job queue's SQLite file lives (always local): ``local_base(home) / "state"``."""
    return local_base(home) / "state"


def cache_dir(home: str | os.PathLike | Location | None = None) -> Path:
    """Where derived caches (feature classifiers) live (always local): ``local_base(home) / "cache"``."""
    return local_base(home) / "cache"


# --------------------------------------------------------------------------------------------------
# Names and confinement
# --------------------------------------------------------------------------------------------------


def validate_name(name: str, what: str = "name") -> str:
    """Check a model/run/dataset name: 1-64 chars of letters, digits, '.', '_', '-', no '/' or '..'."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def confine(root: str | os.PathLike | Location, candidate: str | os.PathLike | Location) -> Any:
    """Resolve ``candidate`` (relative to ``root`` or absolute) and require it to stay inside ``root``.

    With a local ``root`` given as a path this returns the resolved ``Path`` (symlinks resolved, so a
    link pointing out of the root is rejected too); with a :class:`Location` or URI root it returns a
    :class:`Location` (see :meth:`Location.confine`). ``ValueError`` names the root when it escapes.
    """
    if isinstance(root, Location) or _SCHEME_RE.match(os.fspath(root)):
        return resolve_home(root).confine(candidate)
    return _confine_local(Path(root), candidate)


OUTPUT_ROOTS_ENV = "GENAUG_OUTPUT_ROOTS"


def output_roots(spec: str | None = None) -> tuple[Location, ...]:
    """The output roots: ``spec``, else ``$GENAUG_OUTPUT_ROOTS``: comma-separated local folders or URIs
    where outputs may go besides the storage root (empty by default). ``ValueError`` names a bad entry."""
    raw = os.environ.get(OUTPUT_ROOTS_ENV, "") if spec is None else spec
    roots = []
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        try:
            roots.append(resolve_home(entry))
        except ValueError as e:
            raise ValueError(f"{OUTPUT_ROOTS_ENV} entry {entry!r} invalid: {e}") from None
    return tuple(roots)


def confine_output(
    home: str | os.PathLike | Location | None,
    candidate: str | os.PathLike | Location,
    roots: Iterable[str | os.PathLike | Location] | None = None,
) -> Location:
    """Where an output may be written: under the storage root (:meth:`Location.confine`), or, for an
    absolute path or a URI, under one of ``roots`` (default :func:`output_roots`), confined there the same
    way (no ``..`` out, no symlink out, no other bucket or prefix). Relative names stay relative to the
    storage root. ``ValueError`` names the storage root and the output roots when nothing takes it."""
    root = resolve_home(home)
    extra = output_roots() if roots is None else tuple(resolve_home(r) for r in roots)
    try:
        return root.confine(candidate)
    except ValueError:
        raw = candidate.uri if isinstance(candidate, Location) else os.fspath(candidate)
        if not extra:
            raise
    if isinstance(raw, str) and (raw.startswith("/") or _SCHEME_RE.match(raw)):
        for allowed in extra:
            try:
                return allowed.confine(raw)
            except ValueError:
                continue
    valid = ", ".join(r.uri for r in (root, *extra))
    raise ValueError(
        f"output {raw!r} is under neither the storage root nor an output root ({OUTPUT_ROOTS_ENV}); "
        f"valid: a relative name, or a path or URI under one of {valid}"
    )


def _confine_local(root: Path, candidate: str | os.PathLike | Location) -> Path:
    root = Path(root).resolve()
    raw = candidate.uri if isinstance(candidate, Location) and candidate.is_local else str(candidate)
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


def write_json_atomic(path: str | os.PathLike | Location, obj: Any) -> None:
    """Write JSON to ``path`` (a local path, URI or Location) atomically."""
    write_bytes_atomic(path, json_bytes(obj))


def write_bytes_atomic(path: str | os.PathLike | Location, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    location(path).write_bytes(data)


def read_json(path: str | os.PathLike | Location) -> Any:
    """Read a JSON file, raising ``FileNotFoundError`` that names it when it is missing."""
    return location(path).read_json()
