"""What an audit is: ``AuditSpec`` (a validated, JSON-serialisable request), its limits, file names and
checks; shared by ``genaug audit`` and the service's audit jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from jobs.data.images import ImageDataset
from jobs.data.spec import load_dataset
from jobs.entry import JsonRecord
from jobs.store import shards
from jobs.store.location import resolve_home, validate_name
from jobs.store.registry import ModelVersion, Registry
from models.audit import AuditConfig

if TYPE_CHECKING:  # Ray, pandas and matplotlib load when an audit runs, not with `genaug --help`
    pass

DEFAULT_SHARD_ROWS = shards.DEFAULT_SHARD_ROWS
REFERENCE_PER_CLASS = 1000  # training images per class behind the outlier percentiles (the first ones)
REFERENCE_FILE = "reference.json"
SPEC_FILE = "audit.json"  # the request an output was started with; a resume must match it
REPORT_FILE = "audit.md"
OUTLIER_GRID = "outliers.png"
LABEL_ERROR_GRID = "label_errors.png"
GRID_PER_CLASS = 8  # images per class row in outliers.png
GRID_LABEL_ERRORS = 48  # images in label_errors.png
TOP_RANGE = (1, 10_000)


@dataclass(frozen=True)
class AuditSpec(JsonRecord):
    """A validated audit request: everything needed to write the audit, JSON-serialisable."""

    TUPLE_FIELDS = ("classes", "image_shape")

    model: str  # resolved "name:vK" of a cVAE
    dataset: str  # dataset spec of the audited images
    split: str  # "train" | "test"
    reference: str  # dataset spec whose train split calibrates the outlier percentiles
    classes: tuple[str, ...]  # the model's (and the dataset's) class names
    image_shape: tuple[int, int, int]  # (C, H, W) the model takes; the dataset is resized to it
    num_images: int  # rows of the audit: one per image of the split
    shard_rows: int  # images per shard (the last may be shorter)
    samples: int  # K importance samples per (image, class)
    seed: int  # seeds the K noise draws
    top: int  # rows per list in audit.md
    output: str  # output folder (absolute local path or URI under the storage root)

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_rows)

    @property
    def config(self) -> AuditConfig:
        return AuditConfig(samples=self.samples, seed=self.seed)

    def shard_range(self, shard: int) -> range:
        """The split indices of shard ``shard``."""
        return range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.num_images))


def check_range(value: Any, name: str, low: int, high: int) -> int:
    """``value`` if it is an integer in ``low..high``; ValueError naming it and the range otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} {value!r} is out of range; valid: an integer in {low}..{high}")
    return value


def load_images(spec: str, split: str, shape: Sequence[int], classes: Sequence[str]) -> ImageDataset:
    """The ``split`` of ``spec`` at the model's image size; ValueError if channels or classes differ."""
    ds = load_dataset(spec, split=split, image_size=int(shape[1]))
    if ds.channels != shape[0]:
        raise ValueError(f"dataset {spec!r} has {ds.channels} channel(s); the model takes {shape[0]}")
    if list(ds.classes) != list(classes):
        raise ValueError(
            f"dataset {spec!r} has classes {list(ds.classes)}; valid: the model's classes {list(classes)}"
        )
    return ds


def check_cvae_version(mv: ModelVersion) -> ModelVersion:
    """``mv`` if it is a cVAE (from its model.json, nothing loaded); ValueError naming its type otherwise."""
    if mv.info.get("type") != "cvae":
        raise ValueError(f"audit needs a cvae model; {mv.ref} is a {mv.info.get('type')}")
    return mv


def validate_audit(
    req: Mapping[str, Any], home: str | None = None, *, job_id: str, allow_existing: bool = False
) -> tuple[AuditSpec, ImageDataset]:
    """Check an audit request before anything is written; returns the spec and the loaded images.

    Keys: ``model``, ``dataset``, ``split``, ``reference``, ``shard_rows``, ``samples``, ``seed``, ``top``,
    ``out``. A model that is not a cVAE, a dataset whose classes or channels differ from the model's, an
    output that escapes the root or is not empty raise ``ValueError`` naming the value.
    """
    root = resolve_home(home)
    mv = check_cvae_version(Registry(root).resolve(str(req.get("model") or "")))
    classes, shape = tuple(mv.info["classes"]), tuple(int(d) for d in mv.info["image_shape"])
    reference = req.get("reference") or (mv.info.get("data") or {}).get("spec")
    if not reference:
        raise ValueError(f"{mv.ref} does not record its training data spec; pass --reference SPEC")
    ds = load_images(str(req.get("dataset")), str(req.get("split") or "train"), shape, classes)
    given = {k: req.get(k) for k in ("shard_rows", "samples", "seed", "top")}
    given = {
        **{"shard_rows": DEFAULT_SHARD_ROWS, "samples": AuditConfig().samples, "seed": 0, "top": 100},
        **{k: v for k, v in given.items() if v is not None},
    }
    shard_rows = check_range(given["shard_rows"], "shard_rows", 1, 100_000)
    samples = check_range(given["samples"], "samples", 1, 4096)
    seed = check_range(given["seed"], "seed", 0, shards.MAX_SEED)
    top = check_range(given["top"], "top", *TOP_RANGE)
    out = root.confine(req.get("out") or root.join("audits", validate_name(job_id, "job id")).uri)
    kind = out.info().type
    if kind == pafs.FileType.File or (kind == pafs.FileType.Directory and out.list() and not allow_existing):
        raise ValueError(f"output {out.uri!r} already exists and is not empty; choose a new path")
    spec = AuditSpec(
        model=mv.ref,
        dataset=ds.spec,
        split=ds.split,
        reference=str(reference),
        classes=classes,
        image_shape=shape,  # type: ignore[arg-type]
        num_images=len(ds),
        shard_rows=shard_rows,
        samples=samples,
        seed=seed,
        top=top,
        output=out.uri,
    )
    if spec.num_images == 0:
        raise ValueError(f"dataset {ds.spec!r} split {ds.split!r} has no images; valid: a non-empty split")
    return spec, ds
