"""The per-worker training loop Ray Train runs (``train_loop_per_worker``) and what it needs: shared
noise, buffer averaging, the epoch plan of a time budget, the GAN step and checkpoint reports.

Every rank runs the same loop; rank 0 writes checkpoints (``ray.train.report`` is a barrier all ranks
call) and sends each epoch's line to the driver's progress queue.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from jobs.data.images import class_balanced_sampler
from jobs.data.spec import load_dataset
from jobs.store.location import location
from jobs.trainer.settings import TrainSettings, model_config
from models.cgan import CGAN, d_loss, g_loss
from models.checkpoint import build_model, load_checkpoint, save_checkpoint

TRAIN_STATE = "train_state.pt"  # optimizers, epoch, history: beside the model files in a checkpoint


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


def memory_format_for(model: torch.nn.Module, gpu: bool) -> torch.memory_format:
    """channels_last (NHWC) for conv networks and on GPUs, else contiguous: oneDNN's and the tensor cores'
    fast path (the 28 px conv cGAN ran 1.5-3x faster per process on this CPU, benchmarks/NOTES.md); only 4-D
    (conv) weights and batches change layout. The trainer and the plain benchmark loop both use it."""
    conv = gpu or model.config.resolved_arch == "conv"
    return torch.channels_last if conv else torch.contiguous_format


def step_noise_dim(model: torch.nn.Module) -> int:
    """Noise per image that a training step draws: the cGAN's generator input (``noise_dim``), the cVAE's
    reparameterisation epsilon (``latent_dim``; its ``noise_dim`` is the sampling noise, two wider for a
    mixture prior). The trainer and the plain benchmark loop both use it."""
    return model.noise_dim if isinstance(model, CGAN) else model.config.latent_dim


def _kl_weight(epoch: int, epochs: int) -> float:
    """KL warm-up for the VAE: linear from 0 to 1 over the first 30% of epochs."""
    warm = max(1, (3 * epochs) // 10)
    return min(1.0, (epoch + 1) / warm)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker body: data, model, optimizers, epochs, checkpoints through ``ray.train.report``."""
    import ray
    import ray.train
    import ray.train.torch as rt

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
    model = build_model(s.model, model_config(s, ds))
    # class-balanced: each rank draws its own share of an epoch (seeded per rank) instead of a
    # DistributedSampler's slice of one permutation
    balanced = None
    if s.class_balance:
        rank_gen = torch.Generator().manual_seed(s.seed * 1009 + rank)
        balanced = class_balanced_sampler(ds.labels, len(ds) // world, rank_gen)
    loader = DataLoader(
        ds,
        batch_size=s.batch_size // world,
        shuffle=s.shuffle and balanced is None,
        sampler=balanced,
        drop_last=True,
        generator=torch.Generator().manual_seed(s.seed),
        pin_memory=s.gpu,  # page-locked batches: prepare_data_loader copies them non-blocking
    )
    loader = rt.prepare_data_loader(loader, add_dist_sampler=balanced is None)
    memory_format = memory_format_for(model, s.gpu)
    model.to(memory_format=memory_format)
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

    noise_dim = step_noise_dim(model)
    steps_per_epoch = min(len(loader), s.limit_batches or len(loader))
    plan = EpochPlan(s.epochs, config.get("deadline"), device, steps_per_epoch)
    epoch = start_epoch
    while epoch < plan.epochs:
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
        tail = plan.steps_in(epoch)  # a time budget's partial last epoch, or None
        limit = min((n for n in (s.limit_batches, tail) if n is not None), default=None)  # tests limit too
        for step, (x, y) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            x = x.contiguous(memory_format=memory_format) if x.dim() == 4 else x
            noise = global_noise(s.seed, epoch, step, s.batch_size, noise_dim, rank, world).to(device)
            if s.model == "cvae":
                with autocast:
                    out = net(x, y, noise=noise, kl_weight=_kl_weight(epoch, plan.epochs))
                optimizers["model"].zero_grad(set_to_none=True)
                out.loss.backward()
                optimizers["model"].step()
                parts = {"loss": out.loss, "recon": out.recon, "kl": out.kl}
            else:
                parts = gan_step(model, G, D, optimizers, x, y, noise, s, epoch, step, rank, world, autocast)
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
        # a partial last epoch counts as its share of an epoch (4.45: four epochs and 45 % of a fifth)
        done = epoch + 1 if tail is None else epoch + round(tail / plan.steps_per_epoch, 3)
        metrics.update(epoch=done, images_per_s=seen * world / max(dt, 1e-9))
        history.append(metrics)
        plan.after_epoch(epoch, dt)  # with a time budget: how many epochs fit, decided by rank 0
        if rank == 0 and progress is not None:  # fire and forget: no round trip per epoch
            progress.actor.put_nowait.remote({**metrics, "epochs": plan.epochs, "eta_s": plan.eta_s(epoch)})
        # Ray Train hears of the run only at checkpoints: a report is a barrier across workers and a
        # round trip to the controller, which cost more than a whole digits epoch. Progress goes through
        # the queue above, every epoch.
        if (epoch + 1) % s.checkpoint_every == 0 or epoch + 1 == plan.epochs:
            if getattr(model.config, "prior", "standard") != "standard":  # every rank: states stay equal
                model.fit_prior(ds.images, ds.labels)
            if isinstance(model, CGAN):  # the EMA G's own BatchNorm statistics, every rank alike
                model.standing_stats(seed=s.seed)
            _report_with_checkpoint(model, optimizers, epoch, history, starts, ds, s, rank)
        epoch += 1
    digests = [state_digest(model)]
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, state_digest(model))
    return {"rank_state_digests": digests, "history": history, "starts": starts}


class EpochPlan:
    """How many epochs a run takes: ``epochs``, or with a deadline as many of them as fit before it.

    ``deadline`` is wall-clock time (``time.time()``) by which the last epoch must end. After every epoch
    rank 0 estimates an epoch's time (the median of this start's epochs) and plans the last epoch that
    still ends in time; it broadcasts the plan so that every rank stops after the same epoch (one small
    collective per epoch). The plan only ever shrinks below ``epochs``, never below the epoch just done.

    With ``steps_per_epoch`` known, the time left after the last whole epoch is not wasted: when at least
    ``MIN_TAIL`` of an epoch fits, the plan adds a last, partial epoch of ``last_steps`` steps (a 10-minute
    budget on Fashion-MNIST with ~110 s epochs used to end 50-130 s early).
    """

    MIN_TAIL = 0.1  # shortest partial last epoch worth its checkpoint, as a share of an epoch

    def __init__(
        self, epochs: int, deadline: float | None, device: torch.device, steps_per_epoch: int = 0
    ) -> None:
        self.epochs, self.deadline, self.device = epochs, deadline, device
        self.cap, self.steps_per_epoch = epochs, steps_per_epoch
        self.last_steps = 0  # > 0: the planned last epoch stops after this many steps
        self.times: list[float] = []

    def after_epoch(self, epoch: int, seconds: float) -> None:
        """Record epoch ``epoch`` (0-based) took ``seconds``; replan when there is a deadline."""
        if self.steps_in(epoch) is not None:  # the partial epoch ends the run (every rank knows it)
            self.epochs, self.last_steps = epoch + 1, 0
            return
        self.times.append(seconds)
        if not self.deadline:
            return
        left = max(0.0, self.deadline - time.time()) / self.epoch_s  # in epochs
        fit, tail = epoch + 1 + int(left), int((left - int(left)) * self.steps_per_epoch)
        if fit < self.cap and tail >= 1 and left - int(left) >= self.MIN_TAIL:
            fit += 1
        else:
            tail = 0
        plan = torch.tensor([min(self.cap, fit), tail], dtype=torch.long, device=self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(plan, src=0)
        self.epochs, self.last_steps = int(plan[0].item()), int(plan[1].item())

    def steps_in(self, epoch: int) -> int | None:
        """Steps epoch ``epoch`` (0-based) stops after: ``last_steps`` for a partial last one, else None."""
        return self.last_steps if self.last_steps and epoch == self.epochs - 1 else None

    @property
    def epoch_s(self) -> float:
        """Estimated seconds per epoch: the median of this start's epochs."""
        return float(np.median(self.times)) if self.times else math.nan

    def eta_s(self, epoch: int) -> float:
        """Seconds until the planned last epoch ends, after epoch ``epoch`` (0-based)."""
        left = self.epochs - epoch - 1
        if left > 0 and self.last_steps:
            left -= 1 - self.last_steps / self.steps_per_epoch
        return left * self.epoch_s


def _maybe_compile(net: torch.nn.Module, s: TrainSettings) -> torch.nn.Module:
    """``torch.compile`` the DDP-wrapped network when ``--compile`` is set (the wrapper, as DDP advises)."""
    return torch.compile(net) if s.compile else net


def gan_step(model, G, D, optimizers, x, y, noise, s, epoch, step, rank, world, autocast) -> dict:
    """One hinge-loss GAN step: D on (real, fake.detach()); then G through a frozen D; then the EMA.
    The trainer and the plain benchmark loop both use it."""

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
