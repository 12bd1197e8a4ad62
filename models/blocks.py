"""Pieces shared by the CVAE and the CGAN: config checks, resolution plan, conditional norm, DiffAugment.

Images everywhere are float tensors ``(B, C, H, W)`` in ``[-1, 1]``, square, with a side in
``SUPPORTED_SIZES`` and 1 or 3 channels. A network is either an MLP over flattened pixels (cheap and
strong at 8x8 and 16x16) or a small conv net that works at a *base resolution* (the side halved while
it is even and above 4) and changes resolution by a factor 2 per stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

SUPPORTED_SIZES = (8, 16, 28, 32, 64)
SUPPORTED_CHANNELS = (1, 3)
ARCH_OPTIONS = ("mlp", "conv", "auto")
MLP_MAX_SIZE = 16  # arch="auto" picks the MLP up to this side, conv above


def check_choice(field: str, value: object, options: Sequence[object]) -> None:
    """Raise ValueError naming ``field``, the bad ``value`` and the valid ``options``."""
    # `True in (1, 3)` is true in Python: refuse bools where numbers are expected.
    if isinstance(value, bool) or value not in options:
        valid = ", ".join(str(o) for o in options)
        raise ValueError(f"unsupported {field}={value!r}; valid: {valid}")


def check_int(field: str, value: object, minimum: int) -> None:
    """Require an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {field}={value!r}; valid: an integer >= {minimum}")


def check_float(field: str, value: object, low: float, high: float = math.inf, *, open_low=False) -> None:
    """Require a real number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"invalid {field}={value!r}; valid: a number in {bracket}{low}, {high}]")


def check_image_config(image_size: object, channels: object, arch: object) -> None:
    """Validate the fields every model config shares."""
    check_choice("image_size", image_size, SUPPORTED_SIZES)
    check_choice("channels", channels, SUPPORTED_CHANNELS)
    check_choice("arch", arch, ARCH_OPTIONS)


def resolve_arch(arch: str, image_size: int) -> str:
    """``"auto"`` -> ``"mlp"`` for sides <= 16, ``"conv"`` above; explicit choices pass through."""
    if arch != "auto":
        return arch
    return "mlp" if image_size <= MLP_MAX_SIZE else "conv"


def base_resolution(image_size: int) -> tuple[int, int]:
    """(base side, number of x2 stages): 8->(4,1), 16->(4,2), 28->(7,2), 32->(4,3), 64->(4,4)."""
    side, stages = image_size, 0
    while side % 2 == 0 and side > 4:
        side //= 2
        stages += 1
    return side, stages


def stage_widths(width: int, stages: int, minimum: int = 16) -> list[int]:
    """Conv channel counts from the base resolution outwards: halve per x2 stage, never below ``minimum``."""
    floor = min(width, minimum)
    return [max(width >> i, floor) for i in range(stages + 1)]


def group_count(channels: int, max_groups: int = 8) -> int:
    """Groups for GroupNorm that divide ``channels``."""
    return math.gcd(channels, max_groups)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine parameters followed by a per-class scale and shift (de Vries et al. 2017).

    Works on ``(B, F)`` (``dims=1``) or ``(B, F, H, W)`` (``dims=2``); gamma starts at 1, beta at 0.
    """

    def __init__(self, num_features: int, num_classes: int, dims: int = 1) -> None:
        super().__init__()
        self.bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.bn(x)
        gamma, beta = self.gamma(labels), self.beta(labels)  # (B, F)
        if h.dim() == 4:
            gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]  # (B, F, 1, 1)
        return gamma * h + beta


def diff_augment(x: Tensor, translation: float = 0.125, cutout: float = 0.0) -> Tensor:
    """Differentiable augmentation (DiffAugment, Zhao et al. 2020) with a fresh draw per sample.

    ``translation``: shift by up to ``round(side * translation)`` pixels in each direction; pixels moved
    in from outside repeat the edge. ``cutout``: set one square of side ``round(side * cutout)`` at a
    random place to 0. Both are index operations, so gradients flow to ``x``. Uses the global torch RNG.
    """
    B, _, H, W = x.shape
    device = x.device
    shift = round(H * translation)
    if shift > 0:
        dy = torch.randint(-shift, shift + 1, (B, 1, 1), device=device)
        dx = torch.randint(-shift, shift + 1, (B, 1, 1), device=device)
        rows = (torch.arange(H, device=device)[None, :, None] + dy).clamp(0, H - 1)  # (B, H, 1)
        cols = (torch.arange(W, device=device)[None, None, :] + dx).clamp(0, W - 1)  # (B, 1, W)
        flat = rows * W + cols  # (B, H, W) source index of each output pixel
        idx = flat.reshape(B, 1, H * W).expand(-1, x.shape[1], -1)  # (B, C, H*W)
        x = x.reshape(B, x.shape[1], H * W).gather(2, idx).reshape(x.shape)  # (B, C, H, W)
    size = round(H * cutout)
    if size > 0:
        cy = torch.randint(0, H - size + 1, (B, 1, 1), device=device)
        cx = torch.randint(0, W - size + 1, (B, 1, 1), device=device)
        ys = torch.arange(H, device=device)[None, :, None]  # (1, H, 1)
        xs = torch.arange(W, device=device)[None, None, :]  # (1, 1, W)
        hole = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size)  # (B, H, W)
        x = x * (~hole).unsqueeze(1).to(x.dtype)
    return x


def check_labels(labels: Tensor, num_classes: int) -> None:
    """User-facing label check for ``sample``: a 1-D integer tensor with values in 0..num_classes-1."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {type(labels).__name__} "
            f"{tuple(getattr(labels, 'shape', ()))}; valid: torch.long of shape (B,)"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"unknown class {bad}; valid: 0..{num_classes - 1}")


def sample_noise(
    batch: int,
    dim: int,
    device: torch.device,
    generator: torch.Generator | None,
    temperature: float,
    noise: Tensor | None,
) -> Tensor:
    """``temperature * eps`` with eps ~ N(0, I) drawn on the CPU (so it does not depend on the device RNG)."""
    check_float("temperature", temperature, 0.0)
    if noise is None:
        noise = torch.randn((batch, dim), generator=generator)  # (B, D) on CPU
    elif tuple(noise.shape) != (batch, dim):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; valid: ({batch}, {dim})")
    return noise.to(device=device, dtype=torch.float32) * temperature


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def leaky() -> nn.Module:
    """The discriminator / encoder activation."""
    return nn.LeakyReLU(0.2)


def upsample() -> nn.Module:
    """x2 nearest-neighbour upsampling (followed by a 3x3 conv in every decoder stage)."""
    return nn.Upsample(scale_factor=2, mode="nearest")


class ConditionalSampler(nn.Module):
    """Base of the class-conditional generators: ``sample`` is their one seeded way to draw images.

    A subclass has ``config.num_classes``, a ``noise_dim`` and says how noise becomes images in
    ``images_from_noise``.
    """

    noise_dim: int

    def images_from_noise(self, z: Tensor, labels: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] for noise ``z`` (B, noise_dim) and ``labels`` (B,) on its device."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] for ``labels`` (B,) at noise ``temperature * eps``.

        eps ~ N(0, I) is drawn on the CPU with ``generator`` (a CPU ``torch.Generator``), or taken from
        ``noise`` (B, noise_dim), so the same seed gives the same images on any device; temperature < 1
        trades diversity for fidelity (like truncation).
        """
        check_labels(labels, self.config.num_classes)
        device = module_device(self)
        z = sample_noise(labels.shape[0], self.noise_dim, device, generator, temperature, noise)
        return self.images_from_noise(z, labels.to(device))
