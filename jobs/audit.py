"""Audit jobs: score every image of a labelled dataset with a registered cVAE, as sharded Parquet.

For each image (in the split's order) a row holds its ``index``, given ``label``, ``nll`` (nats per
image, the IWAE bound of ``models.audit`` with K samples), ``outlier_percentile`` (that nll among the
same class's training scores), ``p_0``..``p_{C-1}`` (p(c | x) with a uniform class prior),
``suggested_label`` (the most probable class), ``label_error`` (1 - p(label | x)) and ``margin``.
Beside the shards: ``audit.md`` (summary, top outliers, top suspected label errors), ``outliers.png``
(per class, its most unusual images), ``label_errors.png`` (given -> suggested), ``reference.json``
(the outlier percentiles' per-class reference), the ``audit`` card ``README.md``, ``manifest.json``
and ``_SUCCESS`` last.

Launch::

    genaug audit --model digits-cvae --dataset digits --split train --top 100
    ray job submit --working-dir . -- python -m jobs.audit --model digits-cvae --dataset digits

Shards run as Ray tasks (one per shard, as many at once as the cluster has CPUs). Shard k always holds
the images ``k * shard_rows ..`` of the split and its scores depend only on (model version, dataset,
K, seed), so a run interrupted at any point resumes with the same ``--job-id``: committed shards are
kept, temporary files removed, the missing shards written; the result has exactly one row per image.
The job does not go through the service's queue (``genaug jobs`` does not list it); over HTTP an audit
is a queue job (``cluster.dispatcher``) whose replicas write the same shards with ``write_audit_shard``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
import yaml

from jobs.data.images import ImageDataset
from jobs.data.spec import load_dataset
from jobs.entry import JsonRecord, job_main
from jobs.generate import lineage, new_job_id
from jobs.rayinit import ray_session
from jobs.store import png, shards
from jobs.store.location import Location, location, resolve_home, validate_name, write_json_atomic
from jobs.store.manifest import cleanup_temp, mark_success, write_manifest
from jobs.store.registry import ModelVersion, Registry
from models.audit import AuditConfig, OutlierReference, score
from models.sampling import denormalize_uint8

if TYPE_CHECKING:  # Ray, pandas and matplotlib load when an audit runs, not with `genaug --help`
    import pandas as pd
    import ray

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


# ----------------------------------------------------------------------------- one shard


def audit_schema(classes: Sequence[str]) -> pa.Schema:
    """The columns of an audit shard, with the ``huggingface`` features metadata (image, class labels)."""
    names = shards.validate_classes(classes)
    probs = [(f"p_{i}", pa.float64()) for i in range(len(names))]
    columns = [
        ("image", shards.IMAGE_TYPE),
        ("index", pa.int64()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("nll", pa.float64()),
        ("outlier_percentile", pa.float64()),
        ("label_error", pa.float64()),
        ("margin", pa.float64()),
        ("suggested_label", pa.int64()),
        ("suggested_name", pa.string()),
        *probs,
        ("model", pa.string()),
    ]
    label = {"names": names, "_type": "ClassLabel"}
    features = {
        name: {"_type": "Image"}
        if name == "image"
        else dict(label)
        if name in ("label", "suggested_label")
        # pa.float64() prints as "double"; Hugging Face calls it float64
        else {"dtype": "float64" if t == pa.float64() else str(t), "_type": "Value"}
        for name, t in columns
    }
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([pa.field(n, t) for n, t in columns], metadata=meta)


def audit_table(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: np.ndarray,
    model: torch.nn.Module,
    spec: AuditSpec,
    reference: OutlierReference,
) -> pa.Table:
    """The rows of ``images`` (N, C, H, W) in [-1, 1] with ``labels`` (N,) at split ``indices`` (N,)."""
    s = score(model, images, labels, spec.config, reference)
    names = pa.array(spec.classes, pa.string())
    pngs = png.encode_pngs(denormalize_uint8(images))
    n = len(pngs)
    values = {
        "image": pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.nulls(n, pa.string())], fields=list(shards.IMAGE_TYPE)
        ),
        "index": indices.astype(np.int64),
        "label": labels.numpy(),
        "label_name": names.take(pa.array(labels.numpy())),
        "nll": s.nll.double().numpy(),
        "outlier_percentile": s.outlier.numpy(),
        "label_error": s.label_error.double().numpy(),
        "margin": s.margin.double().numpy(),
        "suggested_label": s.suggested.numpy(),
        "suggested_name": names.take(pa.array(s.suggested.numpy())),
        **{f"p_{c}": s.posterior[:, c].double().numpy() for c in range(len(spec.classes))},
        "model": pa.array([spec.model] * n, pa.string()),
    }
    schema = audit_schema(spec.classes)
    return pa.Table.from_arrays([pa.array(values[f.name], f.type) for f in schema], schema=schema)


def _shard_info(spec: AuditSpec, shard: int, data: bytes, labels: np.ndarray) -> dict[str, Any]:
    """The manifest entry of a committed shard from its bytes and label column."""
    per_class = np.bincount(labels, minlength=len(spec.classes))
    return {
        "shard": shard,
        "path": shards.shard_path(shard, spec.num_shards),
        "rows": int(labels.size),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "class_counts": {c: int(per_class[i]) for i, c in enumerate(spec.classes)},
    }


def write_audit_shard(
    model: torch.nn.Module,
    spec: AuditSpec,
    shard: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    reference: OutlierReference,
) -> dict[str, Any]:
    """Score shard ``shard``'s ``images`` (its rows of the split) and commit its Parquet file (temp name,
    then rename); returns its manifest entry."""
    rows = spec.shard_range(shard)
    if len(labels) != len(rows):
        raise ValueError(f"shard {shard} holds {len(rows)} images; got {len(labels)}")
    table = audit_table(images, labels, np.arange(rows.start, rows.stop), model, spec, reference)
    data = shards.table_to_parquet_bytes(table).to_pybytes()
    location(spec.output).join(shards.shard_path(shard, spec.num_shards)).write_bytes(data)
    return _shard_info(spec, shard, data, table.column("label").to_numpy())


def committed_shard(spec: AuditSpec, shard: int) -> dict[str, Any] | None:
    """The info of shard ``shard`` if an earlier run committed it whole; a damaged file is deleted."""
    file = location(spec.output).join(shards.shard_path(shard, spec.num_shards))
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
        ok = table.schema.equals(audit_schema(spec.classes), check_metadata=True) and np.array_equal(
            table.column("index").to_numpy(), np.asarray(spec.shard_range(shard))
        )
    except Exception:  # noqa: BLE001 - any decode failure means "write it again"
        ok = False
    if not ok:
        file.delete()
        return None
    return _shard_info(spec, shard, data, table.column("label").to_numpy())


# ----------------------------------------------------------------------------- the Ray job


def _load_model(home: str, ref: str) -> torch.nn.Module:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per task
    return Registry(home).resolve(ref).load(device=device).model


def _nll_task(home: str, spec: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """nll(x | y) of a chunk of reference images."""
    s = AuditSpec.from_dict(spec)
    return score(_load_model(home, s.model), images, labels, s.config).nll


def _shard_task(
    home: str, spec: dict, shard: int, images: torch.Tensor, labels: torch.Tensor, reference: dict
) -> dict[str, Any]:
    s = AuditSpec.from_dict(spec)
    ref = OutlierReference.from_dict(reference)
    return write_audit_shard(_load_model(home, s.model), s, shard, images, labels, ref)


def _remote(fn):
    """``fn`` as a Ray task of one CPU, retried 3 times (a rerun writes the same bytes)."""
    import ray

    return ray.remote(num_cpus=1, max_retries=3)(fn)


def _run_tasks(refs: list[ray.ObjectRef], progress, what: str) -> list[Any]:
    """Wait for ``refs`` in completion order, reporting each; results in submission order."""
    import ray

    results: dict[ray.ObjectRef, Any] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        results[ready[0]] = ray.get(ready[0])
        progress(f"{what} {len(results)}/{len(refs)} done")
    return [results[r] for r in refs]


def reference_images(spec: AuditSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (R, C, H, W) and labels (R,) behind the outlier reference: the first
    ``REFERENCE_PER_CLASS`` training images of each class of ``spec.reference``."""
    ds = load_images(spec.reference, "train", spec.image_shape, spec.classes)
    keep = torch.cat(
        [torch.nonzero(ds.labels == c)[:REFERENCE_PER_CLASS, 0] for c in range(len(spec.classes))]
    )
    return ds.images[keep], ds.labels[keep]


def reference_chunks(spec: AuditSpec, count: int) -> list[range]:
    """The ``count`` reference images in chunks of ``spec.shard_rows``: one scoring call each."""
    return [range(i, min(i + spec.shard_rows, count)) for i in range(0, count, spec.shard_rows)]


def fit_reference(spec: AuditSpec, home: Location, progress=print) -> OutlierReference:
    """The outlier reference: nll of ``reference_images``, scored as the audit scores (same K and seed)
    in Ray tasks."""
    images, labels = reference_images(spec)  # (R, C, H, W), (R,)
    remote = _remote(_nll_task)
    refs = [
        remote.remote(home.uri, spec.to_dict(), images[r.start : r.stop], labels[r.start : r.stop])
        for r in reference_chunks(spec, len(labels))
    ]
    nll = torch.cat(_run_tasks(refs, progress, "reference chunk"))
    return OutlierReference.fit(nll, labels, len(spec.classes), spec.config)


def version_reference(mv: ModelVersion, config: AuditConfig) -> Location:
    """Where a model version keeps the outlier reference of its own training data for ``config``
    (K and seed: percentiles only compare scores estimated the same way)."""
    return mv.location / f"audit_reference_k{config.samples}_seed{config.seed}.json"


def load_version_reference(mv: ModelVersion, config: AuditConfig) -> OutlierReference | None:
    """The version's outlier reference for ``config``, or None when no audit has computed one yet."""
    try:
        return OutlierReference.from_dict(version_reference(mv, config).read_json())
    except FileNotFoundError:
        return None


def save_version_reference(mv: ModelVersion, spec: AuditSpec, reference: OutlierReference) -> bool:
    """Keep ``reference`` beside the version when it was fitted on the model's own training data
    (what ``POST /v1/score`` compares against); True if it was written."""
    if spec.reference != (mv.info.get("data") or {}).get("spec"):
        return False
    write_json_atomic(version_reference(mv, spec.config), reference.to_dict())
    return True


def open_output(spec: AuditSpec) -> OutlierReference | None:
    """Claim (or resume) the output folder: its request recorded, temporary files removed; returns the
    reference an earlier run saved there, if any."""
    out = location(spec.output)
    _claim_output(spec, out)
    cleanup_temp(spec.output)
    try:
        return OutlierReference.from_dict(out.join(REFERENCE_FILE).read_json())
    except FileNotFoundError:
        return None


def shard_inputs(spec: AuditSpec, ds: ImageDataset, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of shard ``shard``: its rows of the split."""
    rows = spec.shard_range(shard)
    return ds.images[rows.start : rows.stop], ds.labels[rows.start : rows.stop]


def _claim_output(spec: AuditSpec, out: Location) -> None:
    """Record the request in ``audit.json``; a resumed output must have been started with the same one."""
    want = {k: v for k, v in spec.to_dict().items() if k != "top"}  # top only shapes the report
    try:
        had = {k: v for k, v in out.join(SPEC_FILE).read_json().items() if k != "top"}
    except FileNotFoundError:
        out.join(SPEC_FILE).write_json(spec.to_dict())
        return
    differ = sorted(k for k in want.keys() | had.keys() if want.get(k) != had.get(k))
    if differ:
        shown = ", ".join(f"{k}={had.get(k)!r}" for k in differ)
        raise ValueError(f"output {spec.output} was started with {shown}; valid: resume with the same flags")


def run_audit(
    spec: AuditSpec, job_id: str, ds: ImageDataset, home: str | None = None, progress=print
) -> dict[str, Any]:
    """Write every missing shard of the audit with Ray tasks, then the report and the commit; the manifest."""
    root = resolve_home(home)
    mv = Registry(root).resolve(spec.model)
    out = location(spec.output)
    started = time.perf_counter()
    reference = open_output(spec)
    if reference is None:
        reference = fit_reference(spec, root, progress)
        out.join(REFERENCE_FILE).write_json(reference.to_dict())
    done = {k: info for k in range(spec.num_shards) if (info := committed_shard(spec, k))}
    if done:
        progress(f"resuming: {len(done)}/{spec.num_shards} shards already committed")
    remote = _remote(_shard_task)
    todo = [k for k in range(spec.num_shards) if k not in done]
    refs = [
        remote.remote(root.uri, spec.to_dict(), k, *shard_inputs(spec, ds, k), reference.to_dict())
        for k in todo
    ]
    for info in _run_tasks(refs, progress, "shard"):
        done[int(info["shard"])] = info
    cleanup_temp(spec.output)  # left by a task whose worker died mid-write (its retry wrote the shard)
    return finalize_audit(spec, job_id, mv, [done[k] for k in sorted(done)], reference, started)


# ----------------------------------------------------------------------------- report and commit


def _grid_png(cells: list[list[tuple[np.ndarray, str]]], row_names: list[str], title: str) -> bytes:
    """A PNG of uint8 images (H, W, C) in rows, each captioned, each row named on its left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max([len(r) for r in cells] + [1])
    fig = Figure(figsize=(1.15 * cols + 1.0, 1.3 * max(len(cells), 1) + 0.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(cells), 1), cols, squeeze=False)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i < len(cells) and j < len(cells[i]):
                img, caption = cells[i][j]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(caption, fontsize=7)
            else:
                ax.axis("off")
        if i < len(row_names):
            row[0].set_ylabel(row_names[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _captioned(df: pd.DataFrame, captions: list[str]) -> list[tuple[np.ndarray, str]]:
    """(uint8 image (H, W, C), caption) for each row of ``df``."""
    return [(png.decode_png(v["bytes"]), c) for v, c in zip(df["image"], captions, strict=True)]


def _table(df: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in df[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def write_report(spec: AuditSpec, rows: pd.DataFrame) -> dict[str, Any]:
    """``outliers.png``, ``label_errors.png`` and ``audit.md`` from every row; returns the summary figures."""
    out = location(spec.output)
    by_outlier = rows.sort_values(["outlier_percentile", "nll"], ascending=False, kind="stable")
    by_error = rows.sort_values(["label_error", "margin"], ascending=False, kind="stable")
    outlier_cells = [
        _captioned(
            g, [f"#{i} p{p:.0f}" for i, p in g[["index", "outlier_percentile"]].itertuples(index=False)]
        )
        for g in (by_outlier[by_outlier.label == c].head(GRID_PER_CLASS) for c in range(len(spec.classes)))
    ]
    suspects = by_error.head(GRID_LABEL_ERRORS)
    cols = ["index", "label_name", "suggested_name", "label_error"]
    error_cells = _captioned(
        suspects, [f"#{i} {a}->{b} {e:.2f}" for i, a, b, e in suspects[cols].itertuples(index=False)]
    )
    error_rows = [error_cells[i : i + 8] for i in range(0, len(error_cells), 8)]
    out.join(OUTLIER_GRID).write_bytes(
        _grid_png(outlier_cells, list(spec.classes), "Top outliers per class (#index, percentile)")
    )
    out.join(LABEL_ERROR_GRID).write_bytes(
        _grid_png(error_rows, [], "Top suspected label errors (#index given->suggested, label-error score)")
    )
    disagree = rows.suggested_label != rows.label
    summary = {
        "images": len(rows),
        "importance_samples_K": spec.samples,
        "seed": spec.seed,
        "mean_nll_nats": float(rows.nll.mean()),
        "suggested_differs": int(disagree.sum()),
        "label_error_above_0.5": int((rows.label_error > 0.5).sum()),
        "outlier_percentile_above_99": int((rows.outlier_percentile > 99).sum()),
    }
    per_class = rows.groupby("label_name", sort=False).agg(
        images=("nll", "size"), median_nll=("nll", "median"), mean_label_error=("label_error", "mean")
    )
    lines = [
        f"# Audit of {spec.dataset} ({spec.split}) with {spec.model}",
        "",
        f"{len(rows)} images; nll in nats per image, the importance-weighted bound with K = {spec.samples} "
        f"samples (seed {spec.seed}); outlier percentiles against the first {REFERENCE_PER_CLASS} training "
        f"images per class of {spec.reference}; p(c | x) with a uniform class prior.",
        "",
        *[f"- **{k}**: {v:.4g}" if isinstance(v, float) else f"- **{k}**: {v}" for k, v in summary.items()],
        "",
        "## Per class",
        "",
        *_table(per_class.reset_index(), ["label_name", "images", "median_nll", "mean_label_error"]),
        "",
        f"## Top {spec.top} outliers",
        "",
        f"![outliers]({OUTLIER_GRID})",
        "",
        *_table(by_outlier.head(spec.top), ["index", "label_name", "nll", "outlier_percentile"]),
        "",
        f"## Top {spec.top} suspected label errors",
        "",
        f"![label errors]({LABEL_ERROR_GRID})",
        "",
        *_table(by_error.head(spec.top), ["index", "label_name", "suggested_name", "label_error", "margin"]),
        "",
    ]
    out.join(REPORT_FILE).write_text("\n".join(lines))
    return summary


def render_audit_card(manifest: Mapping[str, Any]) -> str:
    """The ``audit`` card: a YAML header for Hugging Face ``load_dataset(folder)``, then what it holds."""
    schema = audit_schema(manifest["classes"])
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [
                {"name": n, "dtype": "image" if f["_type"] == "Image" else f.get("dtype", "int64")}
                for n, f in features.items()
            ],
            "splits": [{"name": "train", "num_examples": int(manifest["totals"]["rows"])}],
        },
        "tags": ["genaug", "audit"],
    }
    req = manifest["request"]
    return "\n".join(
        [
            "---",
            yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
            "---",
            "",
            f"# Audit of {req['dataset']} ({req['split']}) by {req['model']}",
            "",
            f"One row per image ({manifest['totals']['rows']} rows). See `{REPORT_FILE}` for the summary and "
            f"the top rows, `{OUTLIER_GRID}` and `{LABEL_ERROR_GRID}` for the images. Columns: `index` "
            "(position in the split), `label`, `nll` (nats), `outlier_percentile`, `p_<class index>`, "
            "`suggested_label`, `label_error` (1 - p(label | x)), `margin`.",
            "",
        ]
    )


def finalize_audit(
    spec: AuditSpec,
    job_id: str,
    mv: ModelVersion,
    infos: list[dict[str, Any]],
    reference: OutlierReference,
    started: float,
) -> dict[str, Any]:
    """Check one row per image, write the report, ``manifest.json``, the card, then ``_SUCCESS``."""
    if [int(i["shard"]) for i in infos] != list(range(spec.num_shards)):
        raise ValueError(f"audit {spec.output} is missing shards; valid: 0..{spec.num_shards - 1}")
    data = location(spec.output).join(shards.DATA_DIR)
    rows = pq.read_table(data.path, filesystem=data.fs).to_pandas()
    if not np.array_equal(np.sort(rows["index"].to_numpy()), np.arange(spec.num_images)):
        raise ValueError(
            f"audit {spec.output} does not hold exactly one row per image 0..{spec.num_images - 1}"
        )
    summary = write_report(spec, rows)
    per_class = {c: sum(int(i["class_counts"][c]) for i in infos) for c in spec.classes}
    duration = time.perf_counter() - started
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "kind": "audit",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(spec.classes),
        "request": {"job_id": job_id, **spec.to_dict()},
        "lineage": lineage(mv),
        "audit": {**summary, "reference": {"spec": spec.reference, "per_class": list(reference.counts)}},
        "shards": infos,
        "totals": {
            "rows": sum(int(i["rows"]) for i in infos),
            "shards": len(infos),
            "bytes": sum(int(i["bytes"]) for i in infos),
            "per_class": per_class,
        },
        "duration_s": duration,
    }
    digest = write_manifest(spec.output, manifest)
    location(spec.output).join(shards.CARD).write_text(render_audit_card(manifest))
    mark_success(spec.output, digest)
    return manifest


# ----------------------------------------------------------------------------- entry point


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``genaug audit`` and ``python -m jobs.audit``."""
    p.add_argument(
        "--model", required=True, help="NAME[:VERSION] of a registered cVAE (latest if no version)"
    )
    p.add_argument("--dataset", required=True, help="dataset spec of the images to audit, e.g. digits")
    p.add_argument(
        "--split", default="train", choices=["train", "test"], help="split to audit (default train)"
    )
    p.add_argument("--top", type=int, default=100, help="rows per list in audit.md (default 100)")
    p.add_argument(
        "--out", default=None, help="output directory under the storage root (default audits/<job-id>)"
    )
    p.add_argument(
        "--reference",
        default=None,
        help="dataset spec whose train split calibrates the outlier percentiles "
        "(default: the model's training data)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"K importance samples per image and class (default {AuditConfig().samples})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the K noise draws (default 0)")
    p.add_argument(
        "--shard-rows", type=int, default=None, help=f"images per shard (default {DEFAULT_SHARD_ROWS})"
    )
    p.add_argument("--job-id", default=None, help="job id; rerun with the same id to resume (default: new)")


def run(args: argparse.Namespace) -> int:
    """Validate, audit with Ray tasks (resuming ``--job-id``), print where the audit went."""
    job_id = args.job_id or new_job_id()
    req = {
        k: getattr(args, k)
        for k in ("model", "dataset", "split", "top", "out", "reference", "samples", "seed", "shard_rows")
    }
    spec, ds = validate_audit(req, args.home, job_id=job_id, allow_existing=bool(args.job_id))
    print(
        f"audit {job_id}: {spec.num_images:,} images in {spec.num_shards} shards, "
        f"K={spec.samples} -> {spec.output}"
    )
    with ray_session():
        manifest = run_audit(spec, job_id, ds, args.home)
    a = manifest["audit"]
    print(
        f"done: {manifest['totals']['rows']:,} rows; suggested label differs for {a['suggested_differs']:,}; "
        f"{a['outlier_percentile_above_99']:,} above the 99th outlier percentile"
    )
    print(f"output: {spec.output} (report: {REPORT_FILE})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.audit --model NAME[:VER] --dataset SPEC [--split train] [--top 100] [--out DIR]``"""
    return job_main("python -m jobs.audit", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    # Run the importable module, not __main__, so Ray pickles its functions by reference.
    from jobs.audit import main as _main

    sys.exit(_main())
