"""Conditional GAN: class-conditional BatchNorm generator, projection discriminator, hinge loss, EMA.

- Generator: input ``concat(z, embed(y))``; hidden layers use conditional BatchNorm (BN without affine
  + per-class gamma/beta, de Vries et al. 2017, as in BigGAN); ``tanh`` output in [-1, 1].
- Discriminator: spectral norm on every linear/conv/embedding (Miyato et al. 2018), LeakyReLU(0.2), no
  BatchNorm, projection head ``out = linear(h) + sum(embed(y) * h)`` (Miyato & Koyama 2018).
- Losses (module-level, accept DDP-wrapped G and D): hinge loss for D, ``-D(G(z)).mean()`` for G.
- DiffAugment (Zhao et al. 2020), off by default (``diffaug``): when ``augment`` is on, the same kind
  of random, differentiable augmentation is applied to every discriminator input, real and fake, so D
  cannot tell them apart by the augmentation and G still learns the un-augmented distribution.
  conv: translation by up to 1/8 of the side + a cutout square of half the side; mlp: translation by
  up to 1/8 of the side only (one pixel at 8x8), since cutout erases too much of a small digit.
- ``generator_ema``: an exponential moving average of G's weights, always in eval mode, used by
  ``sample`` (Yazici et al. 2019: EMA generators give better samples).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from models.blocks import (
    ConditionalBatchNorm,
    ConditionalSampler,
    base_resolution,
    check_float,
    check_image_config,
    check_int,
    diff_augment,
    leaky,
    resolve_arch,
    stage_widths,
    unwrap,
    upsample,
)


@dataclass(frozen=True)
class CGANConfig:
    """Everything needed to rebuild a CGAN; stored verbatim in a checkpoint's ``config.json``."""

    image_size: int = 8  # square image side, one of SUPPORTED_SIZES
    channels: int = 1  # 1 (grey) or 3 (RGB)
    num_classes: int = 10  # labels are 0..num_classes-1
    z_dim: int = 64  # generator noise size
    g_hidden: int = 256  # generator MLP width (conv: its input dense layer is replaced by the base map)
    d_hidden: int = 256  # discriminator MLP width / size of the projected feature h
    arch: str = "auto"  # "mlp" | "conv" | "auto" (mlp for sides <= 16, conv above)
    ema_decay: float = 0.999  # EMA of generator weights (warmed up: min(decay, (1+n)/(10+n)))
    # Default of the losses' `augment` (DiffAugment on real and fake D inputs). Off: on 8x8 digits
    # (mlp) it lowered the CAS ratio from 0.98 to 0.91 (898 images) and 0.87 to 0.73 (10 per class).
    diffaug: bool = False
    depth: int = 3  # hidden layers of the MLP G and D (8x8 digits: 3 beat 2, CAS ratio 0.99 vs 0.98)
    embed_dim: int = 32  # class embedding size concatenated to z
    conv_width: int = 64  # conv channels at the base resolution (halved per x2 stage, min 16)
    translation: float = 0.125  # DiffAugment max shift as a fraction of the side
    cutout: float = 0.5  # DiffAugment cutout side as a fraction of the side (conv arch only)
    # ``sample`` draws z = noise_scale * temperature * eps: the model's own truncation (BigGAN's trick,
    # trading a little diversity for fidelity); 1 = the training distribution of z.
    noise_scale: float = 1.0
    # Weight of MSGAN's mode-seeking term (Mao et al. 2019) in the G loss: the G step pairs each noise with
    # another of the same label and G minimises mode_seeking / (|G(z1) - G(z2)| / |z1 - z2|), so that the
    # noise changes the image (a class drawn in one colour only is a collapse the D cannot see). 0 = off.
    mode_seeking: float = 0.0

    def __post_init__(self) -> None:
        check_image_config(self.image_size, self.channels, self.arch)
        check_int("num_classes", self.num_classes, 2)
        for name in ("z_dim", "g_hidden", "d_hidden", "depth", "embed_dim", "conv_width"):
            check_int(name, getattr(self, name), 1)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0)
        if not isinstance(self.diffaug, bool):
            raise ValueError(f"invalid diffaug={self.diffaug!r}; valid: true, false")
        check_float("translation", self.translation, 0.0, 0.5)
        check_float("cutout", self.cutout, 0.0, 1.0)
        check_float("noise_scale", self.noise_scale, 0.0, 10.0, open_low=True)
        check_float("mode_seeking", self.mode_seeking, 0.0, 100.0)

    @property
    def resolved_arch(self) -> str:
        """``"mlp"`` or ``"conv"`` (``"auto"`` resolved from the image size)."""
        return resolve_arch(self.arch, self.image_size)


class GANDOutput(NamedTuple):
    """Discriminator step: hinge loss and mean raw scores (for logging)."""

    loss: Tensor  # mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))
    real_score: Tensor  # mean D(real), detached
    fake_score: Tensor  # mean D(fake), detached


class GANGOutput(NamedTuple):
    """Generator step: hinge generator loss and the generated batch."""

    loss: Tensor  # -mean(D(G(z))) (+ the mode-seeking term when configured)
    fake: Tensor  # (B, C, H, W) in [-1, 1], attached to G's graph


class Generator(nn.Module):
    """(z (B, z_dim), labels (B,)) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: CGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        self.arch = cfg.resolved_arch
        in_features = cfg.z_dim + cfg.embed_dim
        if self.arch == "mlp":
            sizes = [in_features] + [cfg.g_hidden] * cfg.depth
            self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
            self.norms = nn.ModuleList(ConditionalBatchNorm(b, cfg.num_classes, 1) for b in sizes[1:])
            self.out = nn.Linear(sizes[-1], cfg.channels * cfg.image_size * cfg.image_size)
        else:
            self.base, stages = base_resolution(cfg.image_size)
            widths = stage_widths(cfg.conv_width, stages)  # base resolution first
            self.width = widths[0]
            self.fc = nn.Linear(in_features, widths[0] * self.base * self.base)
            self.fc_norm = ConditionalBatchNorm(widths[0], cfg.num_classes, 2)
            self.up = upsample()
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in pairwise(widths))
            self.norms = nn.ModuleList(ConditionalBatchNorm(b, cfg.num_classes, 2) for b in widths[1:])
            self.out = nn.Conv2d(widths[-1], cfg.channels, 3, padding=1)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        cfg = self.config
        h = torch.cat([z, self.embed(labels)], dim=1)  # (B, z_dim + E)
        if self.arch == "mlp":
            for linear, norm in zip(self.linears, self.norms, strict=True):
                h = F.relu(norm(linear(h), labels))
            h = self.out(h).view(-1, cfg.channels, cfg.image_size, cfg.image_size)  # (B, C, H, W)
        else:
            h = self.fc(h).view(-1, self.width, self.base, self.base)  # (B, W, base, base)
            h = F.relu(self.fc_norm(h, labels))
            for conv, norm in zip(self.convs, self.norms, strict=True):
                h = F.relu(norm(conv(self.up(h)), labels))
            h = self.out(h)  # (B, C, H, W)
        return torch.tanh(h)


class Discriminator(nn.Module):
    """(images (B, C, H, W), labels (B,)) -> scores (B,); spectral norm everywhere, projection head."""

    def __init__(self, cfg: CGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.arch = cfg.resolved_arch
        if self.arch == "mlp":
            sizes = [cfg.channels * cfg.image_size * cfg.image_size] + [cfg.d_hidden] * cfg.depth
            layers: list[nn.Module] = [nn.Flatten(1)]
            for a, b in pairwise(sizes):
                layers += [spectral_norm(nn.Linear(a, b)), leaky()]
        else:
            base, stages = base_resolution(cfg.image_size)
            widths = stage_widths(cfg.conv_width, stages)[::-1]  # full resolution first
            layers = [spectral_norm(nn.Conv2d(cfg.channels, widths[0], 3, padding=1)), leaky()]
            for a, b in pairwise(widths):
                layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), leaky()]
            layers += [
                nn.Flatten(1),
                spectral_norm(nn.Linear(widths[-1] * base * base, cfg.d_hidden)),
                leaky(),
            ]
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(cfg.d_hidden, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, cfg.d_hidden))

    def augment(self, x: Tensor) -> Tensor:
        """DiffAugment as configured: translation (+ cutout for the conv arch)."""
        cfg = self.config
        return diff_augment(x, cfg.translation, cfg.cutout if self.arch == "conv" else 0.0)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x)  # (B, d_hidden)
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)  # (B,)


def _augment_flag(D: nn.Module, augment: bool | None) -> bool:
    return unwrap(D).config.diffaug if augment is None else bool(augment)


def d_loss(
    G: nn.Module, D: nn.Module, real: Tensor, labels: Tensor, z: Tensor, augment: bool | None = None
) -> GANDOutput:
    """Hinge discriminator loss on ``real`` (B, C, H, W) and G(z, labels) (generated without grad).

    Real and fake go through D in one concatenated batch (one DDP forward, one spectral-norm power
    iteration; D has no batch-dependent layers, so this equals two calls). ``augment=None`` uses
    ``D``'s ``config.diffaug``.
    """
    with torch.no_grad():
        fake = G(z, labels)
    x = torch.cat([real, fake], dim=0)  # (2B, C, H, W)
    if _augment_flag(D, augment):
        x = unwrap(D).augment(x)
    scores = D(x, torch.cat([labels, labels], dim=0))  # (2B,)
    real_scores, fake_scores = scores.split(real.shape[0])
    loss = F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    return GANDOutput(loss, real_scores.detach().mean(), fake_scores.detach().mean())


def g_loss(G: nn.Module, D: nn.Module, labels: Tensor, z: Tensor, augment: bool | None = None) -> GANGOutput:
    """Hinge generator loss ``-D(G(z)).mean()``, plus the mode-seeking term when the config has one.

    D is called unwrapped (no DDP): the G step must not produce D gradients (the trainer freezes D's
    parameters), and a DDP forward whose backward never reaches its parameters would leave DDP's
    reducer waiting. G may be DDP-wrapped; its gradients are averaged as usual.

    Mode seeking (``config.mode_seeking`` > 0): the second half of the batch takes the first half's labels,
    so that images i and i + B/2 share a label and differ by their noise only; the term is
    ``mode_seeking / (mean|G(z_i) - G(z_i+B/2)| / mean|z_i - z_i+B/2| + 1e-5)``.
    """
    weight = unwrap(D).config.mode_seeking
    h = labels.shape[0] // 2 if weight > 0 else 0
    if h:
        labels = torch.cat([labels[:h], labels[:h], labels[2 * h :]])  # pairs (i, i + h) share a label
    fake = G(z, labels)  # (B, C, H, W)
    x = unwrap(D).augment(fake) if _augment_flag(D, augment) else fake
    loss = -unwrap(D)(x, labels).mean()
    if h:
        ratio = (fake[:h] - fake[h : 2 * h]).abs().mean() / (z[:h] - z[h : 2 * h]).abs().mean()
        loss = loss + weight / (ratio + 1e-5)
    return GANGOutput(loss, fake)


class CGAN(ConditionalSampler):
    """Holds G, D and the EMA generator. The training job owns optimisers and the loop:

    D step with ``d_loss``; ``D.requires_grad_(False)``; G step with ``g_loss``; re-enable; ``update_ema``.
    """

    def __init__(self, config: CGANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @property
    def noise_dim(self) -> int:
        """Size of the noise vector ``sample`` draws per image."""
        return self.config.z_dim

    def train(self, mode: bool = True) -> CGAN:
        """Like ``nn.Module.train`` but ``generator_ema`` stays in eval mode."""
        super().train(mode)
        self.generator_ema.eval()
        return self

    @torch.no_grad()
    def update_ema(self, generator: nn.Module | None = None) -> None:
        """ema = d * ema + (1 - d) * G for parameters, with d = min(ema_decay, (1+n)/(10+n)) after n
        updates; buffers (BatchNorm statistics) are copied. ``generator`` may be the trainer's
        (possibly DDP-wrapped) G; default ``self.generator``."""
        source = unwrap(generator if generator is not None else self.generator)
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1.0 + n) / (10.0 + n))
        for ema_p, p in zip(self.generator_ema.parameters(), source.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.device), 1.0 - decay)
        for ema_b, b in zip(self.generator_ema.buffers(), source.buffers(), strict=True):
            ema_b.copy_(b)
        self.ema_updates += 1

    @torch.no_grad()
    def standing_stats(self, batches: int = 16, batch_size: int = 256, seed: int = 0) -> None:
        """Recompute ``generator_ema``'s BatchNorm statistics from its own activations (BigGAN's "standing
        statistics", Brock et al. 2019): the statistics ``update_ema`` copies from G describe G's
        activations, not those of the averaged weights. ``batches`` x ``batch_size`` draws of the training
        noise N(0, I), labels cycling through the classes; deterministic for a seed."""
        check_int("batches", batches, 1)
        check_int("batch_size", batch_size, 1)
        g = self.generator_ema
        norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        device = next(g.parameters()).device
        rng = torch.Generator().manual_seed(seed)
        labels = (torch.arange(batch_size) % self.config.num_classes).to(device)  # (B,) every class alike
        g.train()
        try:
            for _ in range(batches):
                g(torch.randn(batch_size, self.config.z_dim, generator=rng).to(device), labels)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            g.eval()

    def images_from_noise(self, z: Tensor, labels: Tensor) -> Tensor:
        """``generator_ema`` (eval mode) at z * noise_scale (the model's own truncation)."""
        return self.generator_ema.eval()(z * self.config.noise_scale, labels).clamp(-1.0, 1.0)
