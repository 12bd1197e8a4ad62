"""The model registry: immutable, numbered model versions under ``<home>/models/<name>/v<k>/``.

A version directory holds the checkpoint (``config.json``, ``weights.pt``, ``classes.json``,
``data.json`` - see ``models.checkpoint``), ``model.json`` (what it is and how it was trained) and
``samples.png`` (one row per class). A version is published only when whole; published versions
never change (evaluation only adds its ``eval.*`` files):

- on a local root it is built in a hidden temporary directory and published with one atomic rename,
  durably: every file and the directory are fsynced before the rename, ``models/<name>/`` after it
  (``jobs.store.atomic.commit_rename``), so a version that was reported published survives a power cut;
- on an object-store root (``s3://``, ``gs://``; see ``jobs.store.location``) its files are uploaded into
  ``v<k>/`` one by one and ``model.json`` is uploaded *last*: it is the commit marker, and a ``v<k>/``
  without it (an upload in progress, or one that crashed) is not a version. Object stores have no
  atomic create-if-absent here, so two processes must not register the same model name at the same
  moment; different names never interfere.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.store.atomic import commit_rename, make_dirs
from jobs.store.location import Location, location, resolve_home, validate_name, write_json_atomic
from models.checkpoint import (
    CHECKPOINT_FILES,
    checkpoint_hash,
    load_checkpoint,
    model_type_of,
    save_checkpoint,
)

_VERSION_RE = re.compile(r"^v(\d+)$")
MODEL_JSON = "model.json"
SAMPLES_PNG = "samples.png"


class UnknownModel(ValueError):
    """A model name or version that is not registered (HTTP 404)."""


class ModelUnavailable(ValueError):
    """A registered version that cannot be used: damaged ``model.json`` or checkpoint (HTTP 503)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version; ``location`` is its folder (local or in an object store)."""

    name: str
    version: int
    location: Location

    @property
    def ref(self) -> str:
        """``name:vK``: how datasets and the API name this version."""
        return f"{self.name}:v{self.version}"

    @property
    def uri(self) -> str:
        """The version folder as a string: a local path or ``s3://...``."""
        return self.location.uri

    @property
    def path(self) -> Path:
        """The version folder on local disk (``ValueError`` on an object-store root: use ``load``)."""
        return self.location.local_path

    @property
    def info(self) -> dict[str, Any]:
        """The version's ``model.json`` (cached: a published version never changes)."""
        return _model_json(self.location.uri)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[Path]:
        """A local folder holding the checkpoint files: the version itself, or a downloaded copy."""

        if self.location.is_local:
            yield self.location.local_path
            return
        with tempfile.TemporaryDirectory(prefix="genaug-ckpt-") as tmp:
            try:
                self.location.download_files(tmp, CHECKPOINT_FILES)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"checkpoint of {self.ref} is incomplete: {e}") from None
            yield Path(tmp)

    def load(self, device: str = "cpu"):
        """``models.checkpoint.load_checkpoint`` of this version (downloaded first when remote)."""

        with self.checkpoint_dir() as d:
            return load_checkpoint(d, device=device)


@functools.lru_cache(maxsize=256)
def _model_json(uri: str) -> dict[str, Any]:
    """Read (and cache) a version's ``model.json``; ``ModelUnavailable`` when it is missing or damaged."""
    file = location(uri).join(MODEL_JSON)
    ref = "{}:{}".format(*uri.rstrip("/").rsplit("/", 2)[-2:])
    try:
        info = file.read_json()
    except (OSError, ValueError) as e:  # missing, unreadable, truncated or not UTF-8/JSON
        raise ModelUnavailable(f"model {ref} is unavailable: cannot read {file.uri}: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list):
        raise ModelUnavailable(f"model {ref} is unavailable: {file.uri} is damaged (no 'classes' list)")
    return info


_VERSIONS_CACHE: dict[str, tuple[tuple[int, int, int], tuple[int, ...]]] = {}
_SETTLED_NS = 2_000_000_000  # a folder unchanged for 2 s: any later change gets a newer mtime


def _list_versions(folder: str, st: os.stat_result) -> tuple[int, ...]:
    """Version numbers in ``folder``, cached by its (inode, mtime, link count).

    Publishing a version renames a directory into the folder, which changes its mtime. Timestamps are
    taken from a coarse clock, so two changes a few ms apart can share one mtime: a listing is cached
    only once the folder has been unchanged for ``_SETTLED_NS``, after which any change shows.
    """
    key = (st.st_ino, st.st_mtime_ns, st.st_nlink)
    hit = _VERSIONS_CACHE.get(folder)
    if hit is not None and hit[0] == key:
        return hit[1]
    found = (_VERSION_RE.match(entry.name) for entry in os.scandir(folder))
    versions = tuple(sorted(int(m.group(1)) for m in found if m))
    if time.time_ns() - st.st_mtime_ns > _SETTLED_NS:
        _VERSIONS_CACHE[folder] = (key, versions)
    else:
        _VERSIONS_CACHE.pop(folder, None)
    return versions


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``NAME[:VERSION]`` (VERSION as ``3`` or ``v3``) into ``(name, version or None)``."""
    if not isinstance(ref, str) or not ref:
        raise ValueError(
            f"invalid model reference {ref!r}; valid: NAME or NAME:VERSION (e.g. digits-cgan:v2)"
        )
    name, _, ver = ref.partition(":")
    validate_name(name, "model name")
    if not ver:
        return name, None
    m = re.fullmatch(r"v?([0-9]+)", ver)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"invalid model version {ver!r} in {ref!r}; valid: a positive number like 2 or v2")
    return name, int(m.group(1))


class Registry:
    """Model versions under ``<home>/models`` (a local folder or an object-store prefix)."""

    def __init__(self, home: str | os.PathLike | Location | None = None):
        self.home = resolve_home(home)
        self.root = self.home / "models"

    @staticmethod
    def _scan(folder: Location, depth: int) -> dict[str, list[int]]:
        """Published versions below ``folder`` from one listing: ``v<k>`` counts once its model.json exists.

        ``depth`` 1: ``folder`` is one model (key ""); 2: ``folder`` holds models (key: the name).
        """
        found: dict[str, set[int]] = {}
        for info in folder.list(recursive=True, max_depth=depth):
            if info.base_name != MODEL_JSON:
                continue
            parts = folder.child(info).relative_to(folder).split("/")
            m = _VERSION_RE.match(parts[-2]) if len(parts) == depth + 1 else None
            if m:
                found.setdefault(parts[0] if depth == 2 else "", set()).add(int(m.group(1)))
        return {key: sorted(v) for key, v in found.items()}

    def names(self) -> list[str]:
        """Registered model names that have at least one version, sorted."""
        return sorted(self._scan(self.root, 2))

    def versions(self, name: str) -> list[int]:
        """The published version numbers of ``name``, ascending (empty when unknown).

        On a local root, one ``stat`` per call while the model's folder is unchanged (the listing is
        cached, see ``_list_versions``): ``POST /v1/samples`` resolves a model on every request. A local
        ``v<k>`` folder is always complete (it is published by one rename).
        """
        folder = self.root / validate_name(name, "model name")
        if not folder.is_local:  # an object store: one listing (v<k> counts once its model.json exists)
            return self._scan(folder, 1).get("", [])
        try:
            st = os.stat(folder.local_path)
        except OSError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        return list(_list_versions(str(folder.local_path), st))

    def list(self) -> list[ModelVersion]:
        """Every published version of every model."""
        return [
            ModelVersion(n, v, self.root.join(n, f"v{v}"))
            for n, versions in sorted(self._scan(self.root, 2).items())
            for v in versions
        ]

    def resolve(self, ref: str) -> ModelVersion:
        """Find ``NAME[:VERSION]`` (latest when no version); unknown names/versions list the valid ones."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none registered yet (run `genaug train`)"
            raise UnknownModel(f"unknown model {name!r}; valid: {known}")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            valid = ", ".join(f"v{v}" for v in versions)
            raise UnknownModel(f"unknown version v{version} of model {name!r}; valid: {valid}")
        return ModelVersion(name, version, self.root.join(name, f"v{version}"))

    def register(self, name: str, fill: Callable[[Path], dict[str, Any]]) -> ModelVersion:
        """Publish a new version of ``name``.

        ``fill(tmpdir)`` writes the version's files into an empty local temporary directory and returns
        the ``model.json`` content; the files are then published as the next free ``v<k>`` (see the
        module docstring). If ``fill`` or the publishing raises, nothing is published.
        """
        folder = self.root / validate_name(name, "model name")
        if folder.is_local:
            return self._register_local(name, folder.local_path, fill)
        with tempfile.TemporaryDirectory(prefix="genaug-register-") as tmp:
            info = dict(fill(Path(tmp)))
            files = sorted(p.name for p in Path(tmp).iterdir() if p.is_file() and p.name != MODEL_JSON)
            version = (self.versions(name) or [0])[-1] + 1
            while (folder / f"v{version}").list():  # taken by a concurrent or crashed upload: skip it
                version += 1
            target = folder / f"v{version}"
            try:
                target.upload_files(tmp, files)
                info.update(name=name, version=version, ref=f"{name}:v{version}")
                write_json_atomic(Path(tmp) / MODEL_JSON, info)
                target.upload_files(tmp, [MODEL_JSON])  # the commit marker, last
            except BaseException:
                with contextlib.suppress(Exception):
                    target.delete_tree()
                raise
        return ModelVersion(name, version, target)

    def _register_local(
        self, name: str, folder: Path, fill: Callable[[Path], dict[str, Any]]
    ) -> ModelVersion:
        make_dirs(folder)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            info = dict(fill(tmp))
            while True:
                version = (self.versions(name) or [0])[-1] + 1
                info.update(name=name, version=version, ref=f"{name}:v{version}")
                write_json_atomic(tmp / MODEL_JSON, info)
                try:
                    commit_rename(tmp, folder / f"v{version}")  # fails if another writer took v<k>
                    break
                except OSError:
                    if not (folder / f"v{version}").exists():
                        raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ModelVersion(name, version, self.root.join(name, f"v{version}"))


def register_model(
    home: str | os.PathLike | None,
    name: str,
    model: Any,
    classes: list[str],
    data: dict[str, Any],
    **info: Any,
) -> ModelVersion:
    """Publish an in-memory model (e.g. freshly built, for tests and benchmarks) as the next version."""

    def fill(tmp: Path) -> dict[str, Any]:
        save_checkpoint(model, tmp, classes=classes, data=data)
        return {
            "type": model_type_of(model),
            "dataset": data.get("spec"),
            "data": data,
            "classes": list(classes),
            "image_shape": data.get("image_shape"),
            "checkpoint_sha256": checkpoint_hash(tmp),
            **info,
        }

    return Registry(home).register(name, fill)
