"""Generation jobs: validate a request, generate shard k deterministically, and run a whole job.

A job asks a registered model version for exact counts per class. Rows are planned into shards of
``shard_rows`` (``jobs.store.shards.plan_shards``); the rows of shard k depend only on (model version, job
seed, k), so a shard regenerated after a crash has the same bytes and a retried job never duplicates
or drops a row.

Launch (a standalone batch job on any Ray cluster, without the service)::

    genaug generate --model digits-cgan --per-class 5000 --wait
    ray job submit --working-dir . -- python -m jobs.generate --model digits-cgan --per-class 5000

``python -m jobs.generate`` runs the shards as Ray tasks and skips shards already committed by an
earlier, interrupted run of the same ``--job-id``. ``genaug generate`` goes through the durable queue
and the Serve generator deployment instead (see ``cluster/``); both write the same bytes."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from jobs.entry import JsonRecord, job_main
from jobs.metrics import label_filter
from jobs.metrics.label_filter import FILTERS, check_filter
from jobs.metrics.report import card_summary
from jobs.rayinit import ray_session
from jobs.store import png, shards
from jobs.store.location import confine_output, location, resolve_home, validate_name
from jobs.store.manifest import cleanup_temp, finalize_dataset
from jobs.store.registry import ModelVersion, Registry
from models.sampling import generate_uint8

MAX_TOTAL_ROWS = 10_000_000


MAX_SHARDS = 100_000


SHARD_ROWS_RANGE = (1, 100_000)  # a shard is held in memory while it is written


TEMPERATURE_RANGE = (0.0, 5.0)


REQUEST_FIELDS = frozenset(
    {
        "model",
        "per_class",
        "counts",
        "seed",
        "out",
        "output",
        "shard_rows",
        "temperature",
        "priority",
        "filter",
        "idempotency_key",
    }
)  # what a generation request may contain


@dataclass(frozen=True)
class JobSpec:
    """A validated generation request: everything needed to produce the dataset, JSON-serialisable."""

    model: str  # resolved "name:vK"
    classes: tuple[str, ...]  # the model's class names
    counts: tuple[int, ...]  # rows per class index (0 allowed for classes not asked for)
    seed: int  # job seed; shard k's seed derives from (seed, k)
    shard_rows: int  # rows per shard (the last may be shorter)
    output: str  # output folder: an absolute local path or a URI (s3://..., gs://...) under the root
    temperature: float = 1.0  # noise scale (1 = the trained distribution)
    priority: int = 0  # higher runs first
    filter: str | None = None  # None or "label": only samples the domain classifier reads as asked

    @property
    def total_rows(self) -> int:
        return int(sum(self.counts))

    @property
    def num_shards(self) -> int:
        return shards.plan_shards(self.counts, self.shard_rows)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(classes=list(self.classes), counts=list(self.counts))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        return cls(**{**d, "classes": tuple(d["classes"]), "counts": tuple(d["counts"])})


def parse_counts(
    per_class: int | None, counts: Mapping[str, Any] | str | None, classes: Sequence[str]
) -> tuple[int, ...]:
    """Rows per class index from ``per_class`` (all classes) or a map keyed by class index or name.

    ``counts`` may be a dict (``{"0": 500, "seven": 2000}``) or the CLI form ``"0=500,7=2000"``.
    """
    valid = f"0..{len(classes) - 1} or " + ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    if (per_class is None) == (counts is None):
        raise ValueError(
            "give exactly one of per_class (rows for every class) or counts (a map class -> rows)"
        )
    if per_class is not None:
        n = _positive_int(per_class, "per_class")
        return tuple([n] * len(classes))
    if isinstance(counts, str):
        counts = parse_counts_arg(counts)
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError('counts must be a non-empty map class -> rows, e.g. {"0": 500, "7": 2000}')
    out = [0] * len(classes)
    for key, value in counts.items():
        idx = class_index(key, classes)
        if out[idx]:
            raise ValueError(f"class {key!r} is given twice in counts; valid: each class once ({valid})")
        out[idx] = _positive_int(value, f"count for class {key!r}")
    return tuple(out)


def parse_counts_arg(text: str) -> dict[str, int]:
    """The CLI form ``"0=500,seven=2000"`` -> ``{"0": 500, "seven": 2000}``."""
    pairs: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad counts item {item!r}; valid form: CLASS=N[,CLASS=N...] e.g. 0=500,7=2000")
        pairs[key.strip()] = _positive_int(value.strip(), f"count for class {key.strip()!r}")
    return pairs


def class_index(key: Any, classes: Sequence[str]) -> int:
    """A class given by index (int or digit string) or by name -> its index."""
    valid = f"0..{len(classes) - 1} or " + ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    if isinstance(key, str) and key in classes:
        return list(classes).index(key)
    if isinstance(key, bool):
        raise ValueError(f"unknown class {key!r}; valid: {valid}")
    try:
        idx = int(key)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise ValueError(f"unknown class {key!r}; valid: {valid}") from None
    if str(idx) != str(key).strip() and not isinstance(key, int):
        raise ValueError(f"unknown class {key!r}; valid: {valid}")
    if not 0 <= idx < len(classes):
        raise ValueError(f"unknown class {key!r}; valid: {valid}")
    return idx


def _positive_int(value: Any, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if isinstance(value, bool) or isinstance(value, float) and value != n or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return n


def validate_request(
    req: Mapping[str, Any],
    home: str | os.PathLike | None = None,
    *,
    job_id: str,
    max_total_rows: int = MAX_TOTAL_ROWS,
    allow_existing: bool = False,
    output_roots: Sequence[str] | None = None,
) -> JobSpec:
    """Check a generation request before anything is written; raise ``ValueError`` naming the bad value.

    Keys: ``model`` (``NAME[:VERSION]``), ``per_class`` or ``counts``, ``seed``, ``out``/``output``,
    ``shard_rows``, ``temperature``, ``priority``, ``filter``. ``out`` stays under the storage root or one
    of ``output_roots`` (default ``$GENAUG_OUTPUT_ROOTS``; ``jobs.store.location.confine_output``).
    """
    home = resolve_home(home)
    unknown = sorted(set(req) - REQUEST_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown request field(s) {', '.join(unknown)}; valid: {', '.join(sorted(REQUEST_FIELDS))}"
        )
    mv = Registry(home).resolve(str(req.get("model") or ""))
    classes = tuple(mv.info["classes"])
    counts = parse_counts(req.get("per_class"), req.get("counts"), classes)
    total = sum(counts)
    if total > max_total_rows:
        raise ValueError(f"total rows {total:,} is above the maximum {max_total_rows:,}; split the request")
    shard_rows = req.get("shard_rows")
    shard_rows = shards.DEFAULT_SHARD_ROWS if shard_rows is None else _positive_int(shard_rows, "shard_rows")
    lo, hi = SHARD_ROWS_RANGE
    if not lo <= shard_rows <= hi:
        raise ValueError(f"shard_rows {shard_rows} is out of range; valid: {lo}..{hi}")
    n_shards = shards.plan_shards(counts, shard_rows)
    if n_shards > MAX_SHARDS:
        raise ValueError(f"{n_shards:,} shards is above the maximum {MAX_SHARDS:,}; raise shard_rows")
    seed = req.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    temperature = req.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1])
    ):
        raise ValueError(
            f"temperature must be a number in {TEMPERATURE_RANGE[0]}..{TEMPERATURE_RANGE[1]}, "
            f"got {temperature!r}"
        )
    priority = req.get("priority", 0) or 0
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise ValueError(f"priority must be an integer in -1000..1000, got {priority!r}")
    filt = check_filter(req.get("filter"))
    if filt == "label":
        data = mv.info.get("data") or {}
        if not (data.get("spec") and data.get("fingerprint") and data.get("image_shape")):
            raise ValueError(
                f"filter 'label' needs the training-data facts of {mv.ref} (data.json spec, fingerprint, "
                "image_shape) to find its domain classifier; this version has none: ask without a filter"
            )
    out = req.get("out") or req.get("output") or home.join("datasets", validate_name(job_id, "job id")).uri
    output = confine_output(home, out, output_roots)
    kind = output.info().type
    if kind == pafs.FileType.File or (
        kind == pafs.FileType.Directory and output.list() and not allow_existing
    ):
        raise ValueError(f"output {str(out)!r} already exists and is not empty; choose a new path")
    return JobSpec(
        model=mv.ref,
        classes=classes,
        counts=counts,
        seed=seed,
        shard_rows=shard_rows,
        output=output.uri,
        temperature=float(temperature),
        priority=priority,
        filter=filt,
    )


def new_job_id() -> str:
    """A fresh job id: ``j-`` + 12 hex digits."""
    return "j-" + uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------- one shard


@dataclass(frozen=True)
class ShardTask(JsonRecord):
    """What a generator needs to produce shard ``shard`` of a job (JSON-serialisable)."""

    TUPLE_FIELDS = ("class_counts", "classes")

    job_id: str
    model: str  # "name:vK"
    shard: int
    num_shards: int
    class_counts: tuple[int, ...]
    seed: int  # this shard's seed
    temperature: float
    output: str
    classes: tuple[str, ...]
    filter: str | None = None  # JobSpec.filter

    @classmethod
    def of(cls, spec: JobSpec, job_id: str, shard: int) -> ShardTask:
        return cls(
            job_id=job_id,
            model=spec.model,
            shard=shard,
            num_shards=spec.num_shards,
            class_counts=tuple(
                int(c) for c in shards.shard_class_counts(spec.counts, spec.shard_rows, shard)
            ),
            seed=shards.shard_seed(spec.seed, shard),
            temperature=spec.temperature,
            output=spec.output,
            classes=spec.classes,
            filter=spec.filter,
        )


def shard_images(
    model: torch.nn.Module, task: ShardTask, home: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """Labels (N,), uint8 images (N, H, W, C) and filter statistics (None without a filter) of a shard."""
    labels = shards.shard_labels(np.asarray(task.class_counts), task.seed)
    if task.filter is None:
        return labels, generate_uint8(model, labels, task.seed, task.temperature), None

    classifier = label_filter.model_classifier(home, task.model)
    images, stats = label_filter.filtered_uint8(model, classifier, labels, task.seed, task.temperature)
    return labels, images, stats


def run_shard(
    model: torch.nn.Module, task: ShardTask, *, filesystem=None, home: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Generate and commit one shard (temp name, then rename); return its manifest entry.

    ``home`` is the storage root whose registry and classifier cache a ``filter`` task uses.
    """
    labels, images, stats = shard_images(model, task, home)
    pngs = png.encode_pngs(images)
    info = shards.write_shard(
        task.output,
        task.shard,
        task.num_shards,
        pngs,
        labels,
        task.classes,
        task.model,
        task.seed,
        filesystem=filesystem,
    )
    if stats is not None:
        info["filter"] = stats
    return info


def lineage(mv: ModelVersion) -> dict[str, Any]:
    """What made a dataset: the model version, its checkpoint hash, its training data and, when the
    version was evaluated (``genaug eval``), what its samples are worth to a classifier."""
    info = mv.info
    try:
        evaluation = card_summary((mv.location / "eval.json").read_json())
    except FileNotFoundError:
        evaluation = None
    return {
        "model": mv.ref,
        "name": mv.name,
        "version": mv.version,
        "type": info.get("type"),
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "training_data": info.get("data"),
        "model_path": mv.uri,
        "evaluation": evaluation,
    }


# ----------------------------------------------------------------------------- standalone Ray job


def finalize_job(
    spec: JobSpec, job_id: str, mv: ModelVersion, infos: Sequence[Mapping[str, Any]], duration_s: float
) -> dict[str, Any]:
    """Commit a generation job's dataset (``finalize_dataset``): the request, the model's lineage and,
    with a filter, its acceptance summed over the shards. Returns the manifest."""
    summary = (
        label_filter.summarize([i.get("filter") or {} for i in infos], spec.classes) if spec.filter else None
    )
    return finalize_dataset(
        spec.output,
        {"job_id": job_id, **spec.to_dict()},
        lineage(mv),
        list(infos),
        spec.classes,
        duration_s,
        filter_summary=summary,
    )


def run_job_with_ray_tasks(
    spec: JobSpec,
    job_id: str,
    home: str | os.PathLike | None = None,
    max_in_flight: int | None = None,
    progress=print,
    gpu_per_task: float = 0.0,
) -> dict[str, Any]:
    """Generate every missing shard of ``spec`` with Ray tasks, then finalise; return the manifest.

    ``gpu_per_task`` > 0 gives each task that fraction of a GPU (several tasks share one card).
    """
    import ray

    home = resolve_home(home)
    mv = Registry(home).resolve(spec.model)
    cleanup_temp(spec.output)
    done = {int(e["shard"]): e for e in _existing_shards(spec)}
    todo = [k for k in range(spec.num_shards) if k not in done]
    if not 0.0 <= gpu_per_task <= 1.0:
        raise ValueError(f"gpu_per_task {gpu_per_task!r} must be in [0, 1] (a fraction of one GPU)")
    if spec.filter and done:  # shards of an earlier run: their filter statistics are recomputed
        stats_task = ray.remote(num_cpus=1, max_retries=3)(_filter_stats_task)
        refs = {k: stats_task.remote(home.uri, ShardTask.of(spec, job_id, k).to_dict()) for k in done}
        for k, ref in refs.items():
            done[k]["filter"] = ray.get(ref)
    remote = ray.remote(num_cpus=1, num_gpus=gpu_per_task, max_retries=3)(_shard_task)
    max_in_flight = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    started, pending = time.perf_counter(), {}
    while todo or pending:
        while todo and len(pending) < max_in_flight:
            k = todo.pop(0)
            pending[remote.remote(home.uri, ShardTask.of(spec, job_id, k).to_dict())] = k
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            info = ray.get(ref)
            done[int(info["shard"])] = info
            progress(f"shard {info['shard'] + 1}/{spec.num_shards} committed ({len(done)}/{spec.num_shards})")
    cleanup_temp(spec.output)  # left by a task whose worker died mid-write (its retry wrote the shard)
    return finalize_job(spec, job_id, mv, [done[k] for k in sorted(done)], time.perf_counter() - started)


def _existing_shards(spec: JobSpec) -> list[dict[str, Any]]:
    """Committed shard files of an interrupted run (final names only), re-described from storage.

    A damaged file is deleted so that the shard is generated again.
    """
    out = location(spec.output)
    present = {info.base_name for info in (out / shards.DATA_DIR).list()}
    found = []
    for k in range(spec.num_shards):
        rel = shards.shard_path(k, spec.num_shards)
        if rel.rsplit("/", 1)[-1] in present:
            try:
                found.append(shards.describe_shard(out, k, spec.num_shards))
            except ValueError:
                out.join(rel).delete()
    return found


def _task_model(home: str, t: ShardTask) -> torch.nn.Module:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per task
    return Registry(home).resolve(t.model).load(device=device).model


def _shard_task(home: str, task: dict) -> dict[str, Any]:
    t = ShardTask.from_dict(task)
    return run_shard(_task_model(home, t), t, home=home)


def _filter_stats_task(home: str, task: dict) -> dict[str, Any]:
    """The filter statistics of a shard committed by an earlier run (recomputed: they are deterministic)."""
    t = ShardTask.from_dict(task)
    return shard_images(_task_model(home, t), t, home)[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``python -m jobs.generate``: a request (as ``genaug generate``), a job id, GPU share."""
    p.add_argument("--job-id", default=None, help="job id; rerun with the same id to resume (default: new)")
    add_request_arguments(p)
    p.add_argument(
        "--gpu-per-task", type=float, default=0.0, help="GPU fraction per shard task, e.g. 0.25 (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    """Validate the request, run it as Ray tasks (resuming ``--job-id``), print what was written."""
    job_id = args.job_id or new_job_id()
    req = request_from_args(args)
    spec = validate_request(req, args.home, job_id=job_id, allow_existing=bool(args.job_id))
    print(f"job {job_id}: {spec.total_rows:,} rows in {spec.num_shards} shards -> {spec.output}")
    with ray_session():
        manifest = run_job_with_ray_tasks(spec, job_id, args.home, gpu_per_task=args.gpu_per_task)
    print(f"done: {manifest['totals']['rows']:,} rows, per class {manifest['totals']['per_class']}")
    print(f"output: {spec.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.generate --model NAME[:VER] (--per-class N | --counts 0=500,7=2000) ...``"""
    return job_main("python -m jobs.generate", __doc__, add_arguments, run, argv)


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``genaug generate`` and ``python -m jobs.generate``."""
    p.add_argument(
        "--model", required=True, help="NAME[:VERSION] of a registered model (latest if no version)"
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--per-class", type=int, help="rows for every class")
    g.add_argument(
        "--counts", help="rows per class: CLASS=N[,CLASS=N...] by index or name, e.g. 0=500,7=2000"
    )
    p.add_argument(
        "--out", default=None, help="output directory under the storage root (default datasets/<job-id>)"
    )
    p.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help=f"rows per shard, {SHARD_ROWS_RANGE[0]}..{SHARD_ROWS_RANGE[1]} "
        f"(default {shards.DEFAULT_SHARD_ROWS})",
    )
    p.add_argument("--seed", type=int, default=0, help="job seed (default 0); same seed, same bytes")
    p.add_argument("--temperature", type=float, default=None, help="noise scale, default 1.0")
    p.add_argument("--priority", type=int, default=None, help="higher runs first (default 0)")
    p.add_argument(
        "--filter",
        choices=list(FILTERS),
        default=None,
        help="label: keep only samples the domain classifier assigns to the requested class "
        "(rejection sampling; counts stay exact; acceptance per class in manifest.json)",
    )


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The request dict (as the HTTP API takes it) from parsed flags."""
    req: dict[str, Any] = {"model": args.model, "seed": args.seed}
    if args.per_class is not None:
        req["per_class"] = args.per_class
    else:
        req["counts"] = parse_counts_arg(args.counts)
    for flag, key in (
        ("out", "out"),
        ("shard_rows", "shard_rows"),
        ("temperature", "temperature"),
        ("priority", "priority"),
        ("filter", "filter"),
    ):
        if getattr(args, flag) is not None:
            req[key] = getattr(args, flag)
    return req


if __name__ == "__main__":
    # Run the importable module, not __main__, so Ray pickles its functions by reference.
    from jobs.generate import main as _main

    sys.exit(_main())
