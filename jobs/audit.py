"""Audit jobs: score every image of a labelled dataset with a registered cVAE, as sharded Parquet.

For each image (in the split's order) a row holds its ``index``, given ``label``, ``nll`` (nats per
image, the IWAE bound of ``models.audit`` with K samples), ``outlier_percentile`` (that nll among the
same class's training scores), ``code_nll`` and ``code_percentile`` (the posterior mean's nll under the
class prior, and where it falls among the class's training codes), ``outlier_score`` (the larger of the two
percentiles: what the report ranks outliers by), ``p_0``..``p_{C-1}`` (p(c | x) with a uniform class prior),
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
import sys
import time
from typing import Any

import torch

from jobs.auditor.report import finalize_audit
from jobs.auditor.shards import committed_shard, write_audit_shard
from jobs.auditor.spec import (
    DEFAULT_SHARD_ROWS,
    REFERENCE_FILE,
    REFERENCE_PER_CLASS,
    REPORT_FILE,
    SPEC_FILE,
    AuditSpec,
    load_images,
    validate_audit,
)
from jobs.data.images import ImageDataset
from jobs.entry import job_main
from jobs.generate import new_job_id
from jobs.rayinit import ray_session
from jobs.store.location import Location, location, resolve_home, write_json_atomic
from jobs.store.manifest import cleanup_temp
from jobs.store.registry import ModelVersion, Registry
from jobs.tasks import remote_cpu, wait_in_order
from models.audit import AuditConfig, OutlierReference, reference_scores

# ----------------------------------------------------------------------------- the Ray job


def _load_model(home: str, ref: str) -> torch.nn.Module:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per task
    return Registry(home).resolve(ref).load(device=device).model


def _reference_task(home: str, spec: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``reference_scores`` (R, 2) of a chunk of reference images."""
    s = AuditSpec.from_dict(spec)
    return reference_scores(_load_model(home, s.model), images, labels, s.config)


def _shard_task(
    home: str, spec: dict, shard: int, images: torch.Tensor, labels: torch.Tensor, reference: dict
) -> dict[str, Any]:
    s = AuditSpec.from_dict(spec)
    ref = OutlierReference.from_dict(reference)
    return write_audit_shard(_load_model(home, s.model), s, shard, images, labels, ref)


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
    """The outlier reference: nll and code nll of ``reference_images``, scored as the audit scores (same K
    and seed) in Ray tasks."""
    images, labels = reference_images(spec)  # (R, C, H, W), (R,)
    remote = remote_cpu(_reference_task)
    refs = [
        remote.remote(home.uri, spec.to_dict(), images[r.start : r.stop], labels[r.start : r.stop])
        for r in reference_chunks(spec, len(labels))
    ]
    scores = torch.cat(wait_in_order(refs, progress, "reference chunk"))  # (R, 2)
    return OutlierReference.from_scores(scores, labels, len(spec.classes), spec.config)


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
    remote = remote_cpu(_shard_task)
    todo = [k for k in range(spec.num_shards) if k not in done]
    refs = [
        remote.remote(root.uri, spec.to_dict(), k, *shard_inputs(spec, ds, k), reference.to_dict())
        for k in todo
    ]
    for info in wait_in_order(refs, progress, "shard"):
        done[int(info["shard"])] = info
    cleanup_temp(spec.output)  # left by a task whose worker died mid-write (its retry wrote the shard)
    return finalize_audit(spec, job_id, mv, [done[k] for k in sorted(done)], reference, started)


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
        f"{a['outlier_score_above_99']:,} with an outlier score above 99"
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
