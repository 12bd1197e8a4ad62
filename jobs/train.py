"""Train a class-conditional generator with Ray Train and register it as a model version.

Launch::

    genaug train --model cgan --dataset digits --name digits-cgan --workers 2
    ray job submit --working-dir . -- python -m jobs.train --model cvae --dataset digits --name digits-cvae

The default recipe for the data (``models.recipes``) fills every setting not given and is printed at the
start; ``--time-budget`` ends the run, checkpointed, when the budget is spent (whole epochs while they fit,
then a partial one: ``jobs.trainer.loop.EpochPlan``). Ray Train runs
``jobs.trainer.loop.train_loop_per_worker`` on ``--workers`` processes (DDP: gloo on CPU, NCCL with
``--gpu``). Rank 0 checkpoints through ``ray.train.report``; a crashed worker restarts from the last
checkpoint (``FailureConfig``) and ``--resume`` continues an interrupted run of the same name. On
success the driver registers ``<home>/models/<name>/v<k>/`` (see ``jobs.store.registry``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.data.spec import DATASET_FORMS, load_dataset
from jobs.entry import job_main
from jobs.rayinit import ray_session
from jobs.store.location import Location, read_json, resolve_home, validate_name, write_json_atomic
from jobs.store.registry import Registry
from jobs.trainer.loop import TRAIN_STATE, train_loop_per_worker
from jobs.trainer.settings import (
    TrainSettings,
    budget_reserve_s,
    format_duration,
    model_config,
    parse_duration,
    resolve_settings,
)
from models.checkpoint import MODEL_TYPES, build_model, checkpoint_hash, load_checkpoint

RUN_JSON = "genaug_run.json"


def run_dir_for(home: Location, name: str) -> Location:
    """``<home>/runs/<name>``: Ray Train run storage (checkpoints) and the run settings for --resume."""
    return resolve_home(home) / "runs" / validate_name(name, "model name")


def train(
    settings: TrainSettings,
    home: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    max_failures: int = 2,
    quiet: bool = False,
    ds=None,
) -> dict[str, Any]:
    """Run training on Ray (which must be initialised) and register the result; return ``model.json``.

    Unset fields of ``settings`` come from the default recipe for the data (``models.recipes``), printed
    unless ``quiet``; ``ds`` is the training split when the caller loaded it already. With
    ``settings.time_budget_s`` the run ends (checkpointed) when the budget, counted from this call, is spent:
    whole epochs while they fit, then a partial last one; a small reserve is kept for the registration.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    started_wall, started = time.time(), time.perf_counter()
    home = resolve_home(home)
    runs = run_dir_for(home, settings.name)
    if resume:
        settings, run_id = _resume_settings(runs, settings)
    else:
        settings, recipe, num_images = resolve_settings(settings, ds)
        if not quiet:
            print(f"[{settings.name}] {recipe.describe(num_images)}", flush=True)
            print(f"[{settings.name}] settings: {_settings_line(settings)}", flush=True)
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        write_json_atomic(runs.join(run_id, RUN_JSON), settings.to_dict())
        write_json_atomic(runs / "latest.json", {"run_id": run_id})

    progress = Queue(maxsize=10_000)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "settings": settings.to_dict(),
            "progress": progress,
            "failure_marker": runs.join(run_id, "injected_failure").uri,
            "deadline": started_wall + settings.time_budget_s - budget_reserve_s(settings.time_budget_s)
            if settings.time_budget_s
            else None,
        },
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpu),
        run_config=RunConfig(
            name=run_id,
            # Checkpoints go straight to the storage root: a local folder, or S3/GCS through the
            # pyarrow filesystem (Ray Train then wants the path without its scheme).
            storage_path=runs.path,
            storage_filesystem=None if runs.is_local else runs.fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # surfaced in the main thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    display = _Progress(settings, quiet)
    while thread.is_alive():
        thread.join(timeout=0.25)
        while not progress.empty():
            display.update(progress.get_nowait())
    while not progress.empty():
        display.update(progress.get_nowait())
    display.close()
    ray.kill(progress.actor)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if result.error:
        raise result.error
    train_time = time.perf_counter() - started
    return_value = getattr(result, "return_value", None) or {}
    with result.checkpoint.as_directory() as ckpt_dir:
        info = register_checkpoint(home, settings, Path(ckpt_dir), run_id, train_time, return_value)
    return info


def _settings_line(s: TrainSettings) -> str:
    budget = f", time budget {format_duration(s.time_budget_s)}" if s.time_budget_s else ""
    return (
        f"{s.model} on {s.dataset}: {s.epochs} epochs{' at most' if budget else ''}, batch {s.batch_size} "
        f"over {s.workers} worker(s), lr {s.lr:g}{budget}; model config {json.dumps(s.model_config)}"
    )


def register_checkpoint(
    home: Location | str | os.PathLike,
    s: TrainSettings,
    ckpt_dir: Path,
    run_id: str,
    train_time: float,
    return_value: dict,
) -> dict[str, Any]:
    """Publish the final checkpoint as the next version of ``s.name`` with model.json and samples.png."""
    loaded = load_checkpoint(ckpt_dir)
    state = torch.load(ckpt_dir / TRAIN_STATE, map_location="cpu", weights_only=True)
    history = state["history"]
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "images_per_s")}
    ips = [h["images_per_s"] for h in history[1:]] or [history[-1]["images_per_s"]]

    def fill(tmp: Path) -> dict[str, Any]:
        import shutil

        for name in ("config.json", "weights.pt", "classes.json", "data.json"):
            shutil.copy2(ckpt_dir / name, tmp / name)
        write_json_atomic(tmp / "history.json", history)
        render_class_grid(loaded.model, len(loaded.classes), tmp / "samples.png", seed=s.seed)
        return {
            "type": loaded.model_type,
            "config": dataclasses.asdict(loaded.config),
            "dataset": loaded.data.get("spec"),
            "data": loaded.data,
            "classes": list(loaded.classes),
            "image_shape": loaded.data.get("image_shape"),
            "epochs": history[-1]["epoch"],
            "final_losses": final,
            "images_per_s": float(np.median(ips)),
            "train_time_s": round(train_time, 2),
            "time_budget_s": s.time_budget_s or None,
            # why the run ended: its epochs, or the time budget (fewer epochs, the last maybe partial)
            "stopped_by": "time budget" if history[-1]["epoch"] < s.epochs else "epochs",
            "train_settings": s.to_dict(),
            "run_id": run_id,
            "workers": s.workers,
            "gpu": s.gpu,
            "rank_state_digests": return_value.get("rank_state_digests"),
            "starts": state.get("starts"),
            "checkpoint_sha256": checkpoint_hash(tmp),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    return Registry(home).register(s.name, fill).info


def render_class_grid(
    model: torch.nn.Module, num_classes: int, path: Path, per_class: int = 10, seed: int = 0
) -> None:
    """Write a PNG grid with one row per class (``per_class`` samples each) to ``path``."""
    from torchvision.utils import save_image

    labels = torch.arange(num_classes).repeat_interleave(per_class)  # (K*n,)
    images = model.sample(labels, generator=torch.Generator().manual_seed(seed))  # (K*n, C, H, W)
    scale = max(1, 32 // images.shape[-1])
    images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image((images + 1) / 2, str(path), nrow=per_class, padding=1, pad_value=1.0)


def _resume_settings(runs: Location, given: TrainSettings) -> tuple[TrainSettings, str]:
    """The saved settings of the latest run of ``given.name``, with ``given``'s larger --epochs and its
    --time-budget (a budget belongs to the command that gives it)."""
    latest = runs / "latest.json"
    if not latest.is_file():
        raise FileNotFoundError(
            f"--resume: no earlier run named {given.name!r} under {runs.parent}; start it without --resume"
        )
    run_id = read_json(latest)["run_id"]
    saved = read_json(runs.join(validate_name(run_id, "run id"), RUN_JSON))
    saved["epochs"] = max(saved["epochs"], given.epochs) if given.epochs else saved["epochs"]
    saved["time_budget_s"] = given.time_budget_s  # a budget counts from this command: this one's, or none
    return TrainSettings(**saved), run_id


class _Progress:
    """A one-line progress display: epoch of the planned epochs, losses, images/s and the ETA (a line every
    ~5% when not a terminal). The planned epochs shrink below --epochs when a time budget ends the run."""

    HIDDEN = ("epoch", "epochs", "images_per_s", "eta_s")

    def __init__(self, s: TrainSettings, quiet: bool):
        self.s, self.quiet = s, quiet
        self.tty = sys.stdout.isatty()
        self.every = max(1, s.epochs // 20)
        self.last = ""

    def update(self, m: dict) -> None:
        if self.quiet:
            return
        losses = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in self.HIDDEN)
        epochs = m.get("epochs", self.s.epochs)
        eta = m.get("eta_s", math.nan)
        width = len(str(self.s.epochs))
        line = (
            f"[{self.s.name}] epoch {m['epoch']:>{width}}/{epochs}  {losses}  "
            f"{m['images_per_s']:,.0f} img/s  ETA {format_duration(eta) if math.isfinite(eta) else '?'}"
        )
        if self.tty:
            print("\r" + line.ljust(len(self.last)), end="", flush=True)
        elif m["epoch"] % self.every == 0 or math.ceil(m["epoch"]) == epochs or m["epoch"] == 1:
            print(line, flush=True)
        self.last = line

    def close(self) -> None:
        if self.tty and self.last and not self.quiet:
            print()


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``genaug train`` flags (shared by ``python -m jobs.train``)."""
    p.add_argument("--model", required=True, help=f"model type: {', '.join(MODEL_TYPES)}")
    p.add_argument("--dataset", required=True, help="dataset spec: " + ", ".join(DATASET_FORMS))
    p.add_argument("--name", required=True, help="registry name of the trained model, e.g. digits-cgan")
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: the recipe's; printed at start)")
    p.add_argument("--batch-size", type=int, default=0, help="global batch size, split over workers")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the recipe's)")
    p.add_argument(
        "--time-budget",
        default=None,
        help="train until this wall time is spent (e.g. 10m, 1h, 600), then checkpoint and register",
    )
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP), default 2")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="one GPU per worker: NCCL, bf16 autocast, channels_last, pinned memory",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (slow first epoch)")
    p.add_argument("--resume", action="store_true", help="continue the latest interrupted run of --name")
    p.add_argument("--seed", type=int, default=0, help="seed for init, data order and noise (default 0)")
    p.add_argument("--image-size", type=int, default=None, help="resize the dataset to this square size")
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="epochs between checkpoints (default: per model)"
    )
    p.add_argument(
        "--model-config", default=None, help="JSON overrides of the model config, e.g. '{\"hidden\": 512}'"
    )
    p.add_argument(
        "--max-failures", type=int, default=2, help="worker failures tolerated per run (default 2)"
    )
    p.add_argument(
        "--class-balance",
        action="store_true",
        help="draw every batch class-balanced (long-tailed data: rare classes get trained too)",
    )


# TrainSettings fields set one-to-one from the flags of the same name (``--batch-size`` -> batch_size).
FLAG_FIELDS = (
    "model", "dataset", "name", "epochs", "batch_size", "lr", "workers", "gpu", "compile", "seed",
    "image_size", "checkpoint_every", "class_balance",
)  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    overrides = {}
    if args.model_config:
        try:
            overrides = json.loads(args.model_config)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"--model-config is not valid JSON ({e}); example: '{{\"hidden\": 512}}'"
            ) from None
        if not isinstance(overrides, dict):
            raise ValueError("--model-config must be a JSON object, e.g. '{\"hidden\": 512}'")
    budget = parse_duration(args.time_budget) if args.time_budget is not None else 0.0
    return TrainSettings(
        **{f: getattr(args, f) for f in FLAG_FIELDS}, time_budget_s=budget, model_config=overrides
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the flags, start or join Ray, train, register and print a summary."""

    settings, ds = settings_from_args(args), None
    if not args.resume:  # fail fast on bad data or model settings, before Ray starts
        ds = load_dataset(settings.dataset, "train", settings.image_size)
        build_model(settings.model, model_config(resolve_settings(settings, ds)[0], ds))
    with ray_session():
        info = train(
            settings, getattr(args, "home", None), resume=args.resume, max_failures=args.max_failures, ds=ds
        )
    print(
        f"registered {info['ref']}  ({info['type']}, {info['epochs']} epochs, {info['train_time_s']:.0f} s, "
        f"{info['images_per_s']:,.0f} img/s; stopped by {info['stopped_by']})"
    )
    version = Registry(getattr(args, "home", None)).resolve(info["ref"])
    print(f"  samples: {version.location / 'samples.png'}")
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.train ...`` (the same flags as ``genaug train``)."""
    return job_main("python -m jobs.train", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    # Run the importable module, not __main__, so Ray pickles its functions by reference.
    from jobs.train import main as _main

    sys.exit(_main())
