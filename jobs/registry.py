"""The model registry: immutable, numbered model versions under ``<home>/models/<name>/v<k>/``.

A version directory holds the checkpoint (``config.json``, ``weights.pt``, ``classes.json``,
``data.json`` - see ``models.checkpoint``), ``model.json`` (what it is and how it was trained) and
``samples.png`` (one row per class). A version is built in a hidden temporary directory and published
with one atomic rename, so a half-written version is never visible; published versions never change.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.storage import read_json, resolve_home, validate_name, write_json_atomic

_VERSION_RE = re.compile(r"^v(\d+)$")
MODEL_JSON = "model.json"
SAMPLES_PNG = "samples.png"


class UnknownModel(ValueError):
    """A model name or version that is not registered (HTTP 404)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version."""

    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        """``name:vK``: how datasets and the API name this version."""
        return f"{self.name}:v{self.version}"

    @property
    def info(self) -> dict[str, Any]:
        """The version's ``model.json`` (cached: a published version never changes)."""
        return _model_json(str(self.path))


@functools.lru_cache(maxsize=256)
def _model_json(path: str) -> dict[str, Any]:
    return read_json(Path(path) / MODEL_JSON)


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
    """Model versions under ``<home>/models``."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = resolve_home(home)
        self.root = self.home / "models"

    def names(self) -> list[str]:
        """Registered model names that have at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """The published version numbers of ``name``, ascending (empty when unknown).

        One ``stat`` per call while the model's folder is unchanged (the listing is cached, see
        ``_list_versions``): ``POST /v1/samples`` resolves a model on every request.
        """
        folder = self.root / validate_name(name, "model name")
        try:
            st = os.stat(folder)
        except OSError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        return list(_list_versions(str(folder), st))

    def list(self) -> list[ModelVersion]:
        """Every published version of every model."""
        return [ModelVersion(n, v, self.root / n / f"v{v}") for n in self.names() for v in self.versions(n)]

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
        return ModelVersion(name, version, self.root / name / f"v{version}")

    def register(self, name: str, fill: Callable[[Path], dict[str, Any]]) -> ModelVersion:
        """Publish a new version of ``name``.

        ``fill(tmpdir)`` writes the version's files into an empty temporary directory and returns the
        ``model.json`` content; the directory is then renamed to the next free ``v<k>``. If ``fill``
        raises, nothing is published.
        """
        folder = self.root / validate_name(name, "model name")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            info = dict(fill(tmp))
            while True:
                version = (self.versions(name) or [0])[-1] + 1
                info.update(name=name, version=version, ref=f"{name}:v{version}")
                write_json_atomic(tmp / MODEL_JSON, info)
                try:
                    os.rename(tmp, folder / f"v{version}")  # fails if another writer took v<k>
                    break
                except OSError:
                    if not (folder / f"v{version}").exists():
                        raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ModelVersion(name, version, folder / f"v{version}")


def register_model(
    home: str | os.PathLike | None,
    name: str,
    model: Any,
    classes: list[str],
    data: dict[str, Any],
    **info: Any,
) -> ModelVersion:
    """Publish an in-memory model (e.g. freshly built, for tests and benchmarks) as the next version."""
    from models.checkpoint import checkpoint_hash, model_type_of, save_checkpoint

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
