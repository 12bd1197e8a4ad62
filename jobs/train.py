"""Train a class-conditional generator with Ray Train and register it as a model version.

Launch::

    genaug train --model cgan --dataset digits --name digits-cgan --workers 2
    ray job submit --working-dir . -- python -m jobs.train --model cvae --dataset digits --name digits-cvae

Ray Train runs ``train_loop_per_worker`` on ``--workers`` processes (DDP: gloo on CPU, NCCL with
``--gpu``). Rank 0 checkpoints through ``ray.train.report``; a crashed worker restarts from the last
checkpoint (``FailureConfig``) and ``--resume`` continues an interrupted run of the same name. On
success the driver registers ``<home>/models/<name>/v<k>/`` (see ``jobs.store.registry``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.data.spec import DATASET_FORMS, load_dataset, parse_spec
from jobs.entry import job_main
from jobs.rayinit import ray_session
from jobs.store.location import (
    Location,
    location,
    read_json,
    resolve_home,
    validate_name,
    write_json_atomic,
)
from jobs.store.registry import Registry
from models.cgan import d_loss, g_loss
from models.checkpoint import MODEL_TYPES, build_model, checkpoint_hash, load_checkpoint, save_checkpoint

TRAIN_STATE = "train_state.pt"
RUN_JSON = "genaug_run.json"

# Per-model defaults: the settings that reach the quality targets on digits (benchmarks/QUALITY.md).
# Global batch 128 (64 per worker on 2 workers): under DDP a step costs mostly communication, so twice
# the batch halves the steps, and the wall time, for the same number of epochs.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "cvae": {"epochs": 150, "batch_size": 128, "lr": 2e-3, "checkpoint_every": 50},
    "cgan": {"epochs": 300, "batch_size": 128, "lr": 4.2e-4, "checkpoint_every": 50},
}
# Model-config defaults of a training run (``--model-config`` overrides them); the model classes keep
# their own defaults so that older checkpoints load unchanged.
# cVAE on digits, single-process, seed 1, 3 CAS seeds (benchmarks/QUALITY.md): the MLP decoder plateaus
# at FID ~15-16 (2.1x the floor); a small conv decoder reaches 14.1 with CAS ratio 0.991; the per-class
# Gaussian prior lifts the CAS ratio (0.984 -> 0.991) by sampling where training images' codes lie.
# Sampling scales (truncation), measured on the quickstart's models with genaug eval's protocol: cVAE
# prior_scale 1.0 / 0.9 / 0.8: FID 15.4 / 14.5 / 14.3 (floor 7.5), label fidelity 0.994 / 0.9975 / 0.9975,
# CAS ratio 0.994 / 0.991 / 0.989, gain at k=10 +3.5 / +3.1 / +2.9 pp: 0.9 is the one that meets all four
# targets. cGAN noise_scale 1.0 -> 0.9: label fidelity 0.994 -> 0.9975, FID 10.2 -> 10.7, CAS 0.997 -> 0.994.
MODEL_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "cvae": {"arch": "conv", "conv_width": 32, "prior": "class_gaussian", "prior_scale": 0.9},
    "cgan": {"noise_scale": 0.9},
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs; JSON-serialisable so a run can be resumed as it was."""

    model: str  # "cvae" | "cgan"
    dataset: str  # dataset spec, see jobs.data.DATASET_FORMS
    name: str  # registry name for the result
    epochs: int = 0  # 0: the model's default
    batch_size: int = 0  # global batch (split over workers); 0: the model's default
    lr: float = 0.0  # 0: the model's default
    workers: int = 2  # Ray Train workers (DDP world size)
    gpu: bool = False  # one GPU per worker, NCCL, bf16 autocast, channels_last, pinned memory
    compile: bool = False  # torch.compile the (DDP-wrapped) networks
    seed: int = 0  # weights init, data order and noise all derive from it
    image_size: int | None = None  # resize the dataset to this size
    checkpoint_every: int = 0  # epochs between checkpoints; 0: the model's default
    shuffle: bool = True  # shuffle training data each epoch (tests turn it off)
    limit_batches: int | None = None  # stop each epoch after this many batches (tests)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    inject_failure_at_epoch: int | None = None  # fault-injection hook for tests: one worker raises once
    inject_failure_kill: bool = False  # ... and then SIGKILLs its own process instead of raising

    def __post_init__(self) -> None:
        if self.model not in MODEL_TYPES:
            raise ValueError(f"unknown model type {self.model!r}; valid: {', '.join(MODEL_TYPES)}")
        parse_spec(self.dataset)
        validate_name(self.name, "model name")
        defaults = MODEL_DEFAULTS[self.model]
        for key in ("epochs", "batch_size", "lr", "checkpoint_every"):
            if not getattr(self, key):
                object.__setattr__(self, key, defaults[key])
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        world = self.workers
        if self.batch_size < world or self.batch_size % world:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a positive multiple of --workers {world} "
                "(the global batch is split evenly over workers)"
            )
        if not (0 < self.lr < 1):
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- per-worker loop


def global_noise(
    seed: int, epoch: int, step: int, batch: int, dim: int, rank: int, world: int
) -> torch.Tensor:
    """This rank's rows of the noise for one global batch.

    The noise is drawn for the whole global batch from a generator seeded by (seed, epoch, step) and
    sliced ``[rank::world]``, matching how ``DistributedSampler`` deals rows to ranks; so W workers with
    batch B/W see exactly the noise one worker with batch B sees.
    """
    g = torch.Generator().manual_seed(hash((seed, epoch, step)) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(batch, dim, generator=g)[rank::world]  # (B/W, dim)


def average_buffers(*modules: torch.nn.Module) -> None:
    """All-reduce the floating buffers (BatchNorm running stats) of ``modules`` to their mean, so ranks
    agree exactly; one collective for all of them (flattened into a single tensor)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1) for b in bufs])  # (sum of sizes,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for b in bufs:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's full state (parameters and buffers), to compare ranks."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _kl_weight(epoch: int, epochs: int) -> float:
    """KL warm-up for the VAE: linear from 0 to 1 over the first 30% of epochs."""
    warm = max(1, (3 * epochs) // 10)
    return min(1.0, (epoch + 1) / warm)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker body: data, model, optimizers, epochs, checkpoints through ``ray.train.report``."""
    import ray
    import ray.train
    import ray.train.torch as rt
    from torch.utils.data import DataLoader

    s = TrainSettings(**config["settings"])
    progress = config.get("progress")  # a ray.util.queue.Queue or None
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rt.get_device()
    torch.manual_seed(s.seed)
    if not s.gpu:  # one intra-op thread per CPU the worker holds: workers must not fight over cores
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))

    ds = load_dataset(s.dataset, "train", s.image_size)
    model = build_model(s.model, _model_config(s, ds))
    loader = DataLoader(
        ds,
        batch_size=s.batch_size // world,
        shuffle=s.shuffle,
        drop_last=True,
        generator=torch.Generator().manual_seed(s.seed),
        pin_memory=s.gpu,  # page-locked batches: prepare_data_loader copies them non-blocking
    )
    loader = rt.prepare_data_loader(loader)
    memory_format = torch.channels_last if s.gpu else torch.contiguous_format
    if s.gpu:
        model.to(memory_format=memory_format)  # only 4-D (conv) weights change layout
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.gpu)

    if s.model == "cvae":
        ddp = {"gradient_as_bucket_view": True}
        net = _maybe_compile(rt.prepare_model(model, parallel_strategy_kwargs=ddp), s)
        optimizers = {"model": torch.optim.Adam(model.parameters(), lr=s.lr, fused=True)}
    else:
        # No buffer broadcast on every forward: spectral-norm vectors evolve identically on every rank
        # (they depend only on the synchronised weights) and BatchNorm statistics are averaged across
        # ranks at each epoch end (average_buffers), which saves several collectives per step.
        no_sync = {"forward_sync_buffers": False, "gradient_as_bucket_view": True}
        G = _maybe_compile(rt.prepare_model(model.generator, parallel_strategy_kwargs=no_sync), s)
        D = _maybe_compile(rt.prepare_model(model.discriminator, parallel_strategy_kwargs=no_sync), s)
        model.generator_ema.to(device)
        optimizers = {
            "generator": torch.optim.Adam(
                model.generator.parameters(), lr=s.lr, betas=(0.0, 0.9), fused=True
            ),
            "discriminator": torch.optim.Adam(
                model.discriminator.parameters(), lr=s.lr, betas=(0.0, 0.9), fused=True
            ),
        }

    start_epoch, history, starts = 0, [], []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / TRAIN_STATE, map_location=device, weights_only=True)
            model.load_state_dict(load_checkpoint(d).model.state_dict())
            for k, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][k])
            start_epoch, history, starts = state["epoch"] + 1, state["history"], state["starts"]
    starts.append(start_epoch)  # where each (re)start of this run began; > 1 entry means it resumed

    noise_dim = model.noise_dim
    for epoch in range(start_epoch, s.epochs):
        if world > 1 and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if s.inject_failure_at_epoch == epoch and rank == world - 1:
            marker = location(config["failure_marker"])
            if not marker.exists():
                marker.write_text("failed once")
                if s.inject_failure_kill:  # a hard crash: no exception, no cleanup, the process is gone
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure at epoch {epoch} (test hook)")
        t0, seen, parts_seen = time.perf_counter(), 0, {}
        model.train()
        for step, (x, y) in enumerate(loader):
            if s.limit_batches is not None and step >= s.limit_batches:
                break
            x = x.contiguous(memory_format=memory_format) if x.dim() == 4 else x
            noise = global_noise(s.seed, epoch, step, s.batch_size, noise_dim, rank, world).to(device)
            if s.model == "cvae":
                with autocast:
                    out = net(x, y, noise=noise, kl_weight=_kl_weight(epoch, s.epochs))
                optimizers["model"].zero_grad(set_to_none=True)
                out.loss.backward()
                optimizers["model"].step()
                parts = {"loss": out.loss, "recon": out.recon, "kl": out.kl}
            else:
                parts = _gan_step(model, G, D, optimizers, x, y, noise, s, epoch, step, rank, world, autocast)
            for k, v in parts.items():  # kept on the device: float() here would stall the GPU every step
                parts_seen.setdefault(k, []).append(v.detach())
            seen += x.shape[0]
        if s.model == "cgan":
            average_buffers(model.generator, model.generator_ema)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's kernels have run: dt is their time, not launches'
        dt = time.perf_counter() - t0
        steps = max(1, math.ceil(seen / max(1, s.batch_size // world)))
        metrics = {k: torch.stack(v).double().sum().item() / steps for k, v in parts_seen.items()}
        metrics.update(epoch=epoch + 1, images_per_s=seen * world / max(dt, 1e-9))
        history.append(metrics)
        if rank == 0 and progress is not None:
            progress.actor.put_nowait.remote(metrics)  # fire and forget: no round trip per epoch
        # Ray Train hears of the run only at checkpoints: a report is a barrier across workers and a
        # round trip to the controller, which cost more than a whole digits epoch. Progress goes through
        # the queue above, every epoch.
        if (epoch + 1) % s.checkpoint_every == 0 or epoch + 1 == s.epochs:
            if getattr(model.config, "prior", "standard") != "standard":  # every rank: states stay equal
                model.fit_prior(ds.images, ds.labels)
            _report_with_checkpoint(model, optimizers, epoch, history, starts, ds, s, rank)
    digests = [state_digest(model)]
    if world > 1:
        import torch.distributed as dist

        digests = [None] * world
        dist.all_gather_object(digests, state_digest(model))
    return {"rank_state_digests": digests, "history": history, "starts": starts}


def _maybe_compile(net: torch.nn.Module, s: TrainSettings) -> torch.nn.Module:
    """``torch.compile`` the DDP-wrapped network when ``--compile`` is set (the wrapper, as DDP advises)."""
    return torch.compile(net) if s.compile else net


def _gan_step(model, G, D, optimizers, x, y, noise, s, epoch, step, rank, world, autocast) -> dict:
    """One hinge-loss GAN step: D on (real, fake.detach()); then G through a frozen D; then the EMA."""

    noise_g = global_noise(s.seed + 1, epoch, step, s.batch_size, model.noise_dim, rank, world).to(x.device)
    with autocast:
        d_out = d_loss(G, D, x, y, noise, augment=model.config.diffaug)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_out.loss.backward()
    optimizers["discriminator"].step()

    model.discriminator.requires_grad_(False)
    with autocast:
        g_out = g_loss(G, D, y, noise_g, augment=model.config.diffaug)
    optimizers["generator"].zero_grad(set_to_none=True)
    g_out.loss.backward()
    optimizers["generator"].step()
    model.discriminator.requires_grad_(True)
    model.update_ema(model.generator)
    return {"d_loss": d_out.loss, "g_loss": g_out.loss}


def _model_config(s: TrainSettings, ds) -> dict[str, Any]:
    cfg = {"image_size": ds.image_size, "channels": ds.channels, "num_classes": ds.num_classes}
    cfg.update(MODEL_CONFIG_DEFAULTS[s.model])
    cfg.update(s.model_config)
    return cfg


def _report_with_checkpoint(
    model, optimizers, epoch, history, starts, ds, s: TrainSettings, rank: int
) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches a checkpoint directory."""
    import ray.train

    if rank != 0:
        ray.train.report(history[-1])
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, d, classes=list(ds.classes), data=_data_facts(ds))
        torch.save(
            {
                "epoch": epoch,
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "history": history,
                "starts": starts,
            },
            Path(d) / TRAIN_STATE,
        )
        ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(d))


def _data_facts(ds) -> dict[str, Any]:
    return {
        "spec": ds.spec,
        "split": ds.split,
        "fingerprint": ds.fingerprint,
        "num_images": len(ds),
        "image_shape": [ds.channels, ds.image_size, ds.image_size],
    }


# ----------------------------------------------------------------------------- driver


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
) -> dict[str, Any]:
    """Run training on Ray (which must be initialised) and register the result; return ``model.json``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    home = resolve_home(home)
    runs = run_dir_for(home, settings.name)
    if resume:
        settings, run_id = _resume_settings(runs, settings)
    else:
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
    started = time.perf_counter()
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
    latest = runs / "latest.json"
    if not latest.is_file():
        raise FileNotFoundError(
            f"--resume: no earlier run named {given.name!r} under {runs.parent}; start it without --resume"
        )
    run_id = read_json(latest)["run_id"]
    saved = read_json(runs.join(validate_name(run_id, "run id"), RUN_JSON))
    saved["epochs"] = max(saved["epochs"], given.epochs) if given.epochs else saved["epochs"]
    return TrainSettings(**saved), run_id


class _Progress:
    """A one-line progress display: epoch, losses, images/s (a line every ~5% when not a terminal)."""

    def __init__(self, s: TrainSettings, quiet: bool):
        self.s, self.quiet = s, quiet
        self.tty = sys.stdout.isatty()
        self.every = max(1, s.epochs // 20)
        self.last = ""

    def update(self, m: dict) -> None:
        if self.quiet:
            return
        losses = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("epoch", "images_per_s"))
        width = len(str(self.s.epochs))
        line = (
            f"[{self.s.name}] epoch {m['epoch']:>{width}}/{self.s.epochs}  {losses}  "
            f"{m['images_per_s']:,.0f} img/s"
        )
        if self.tty:
            print("\r" + line.ljust(len(self.last)), end="", flush=True)
        elif m["epoch"] % self.every == 0 or m["epoch"] == self.s.epochs or m["epoch"] == 1:
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
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: per model, see README)")
    p.add_argument("--batch-size", type=int, default=0, help="global batch size, split over workers")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: per model)")
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


# TrainSettings fields set one-to-one from the flags of the same name (``--batch-size`` -> batch_size).
FLAG_FIELDS = (
    "model", "dataset", "name", "epochs", "batch_size", "lr", "workers", "gpu", "compile", "seed",
    "image_size", "checkpoint_every",
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
    return TrainSettings(**{f: getattr(args, f) for f in FLAG_FIELDS}, model_config=overrides)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the flags, start or join Ray, train, register and print a summary."""

    settings = settings_from_args(args)
    if not args.resume:  # fail fast on bad data or model settings, before Ray starts
        ds = load_dataset(settings.dataset, "train", settings.image_size)
        build_model(settings.model, _model_config(settings, ds))
    with ray_session():
        info = train(
            settings, getattr(args, "home", None), resume=args.resume, max_failures=args.max_failures
        )
    print(
        f"registered {info['ref']}  ({info['type']}, {info['epochs']} epochs, {info['train_time_s']:.0f} s, "
        f"{info['images_per_s']:,.0f} img/s)"
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
