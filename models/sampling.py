"""From a model to uint8 pixels: the one deterministic sampling path, and the [-1, 1] <-> uint8 conversion.

A request's noise comes only from its seed (drawn on the CPU, ``GEN_CHUNK`` rows at a time), so the same
(labels, seed) give the same pixels whatever they were batched with and on any device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

GEN_CHUNK = 2048  # rows per forward pass; fixed so that results never depend on the caller


def draw_noise(n: int, dim: int, seed: int, chunk: int = GEN_CHUNK) -> torch.Tensor:
    """(n, dim) standard normal noise from a CPU generator seeded with ``seed``, ``chunk`` rows at a time."""
    g = torch.Generator().manual_seed(int(seed))
    parts = [torch.randn(min(chunk, n - i), dim, generator=g) for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dim)  # (n, dim)


@torch.no_grad()
def generate_many_uint8(
    model: torch.nn.Module,
    labels: Sequence[np.ndarray],
    seeds: Sequence[int],
    temperature: float = 1.0,
    chunk: int = GEN_CHUNK,
) -> list[np.ndarray]:
    """Samples for several requests at once, as uint8 (N_i, H, W, C) each.

    Request i's noise comes only from ``seeds[i]``, so its pixels do not depend on what it was batched
    with; the forward passes run over the concatenation, ``chunk`` rows at a time.
    """
    device = next(model.parameters()).device
    y = torch.as_tensor(np.concatenate([np.asarray(lb, np.int64) for lb in labels]))  # (N,)
    noise = torch.cat(
        [draw_noise(len(lb), model.noise_dim, s, chunk) for lb, s in zip(labels, seeds, strict=False)]
    )
    if device.type == "cuda":  # page-locked so the host-to-device copies below overlap
        y, noise = y.pin_memory(), noise.pin_memory()
    # Sampling stays fp32 on GPUs too: bf16 would cost about one grey level of 256, and the
    # forward pass is not the bottleneck (PNG encoding is; see benchmarks/RESULTS.md).
    out = []
    for start in range(0, len(y), chunk):
        imgs = model.sample(
            y[start : start + chunk].to(device, non_blocking=True),
            temperature=temperature,
            noise=noise[start : start + chunk].to(device, non_blocking=True),
        )  # (n, C, H, W)
        out.append(denormalize_uint8(imgs))
    images = np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.uint8)  # (N, H, W, C)
    return np.split(images, np.cumsum([len(lb) for lb in labels])[:-1])


def generate_uint8(
    model: torch.nn.Module, labels: np.ndarray, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """Samples for ``labels`` as uint8 (N, H, W, C); the same (labels, seed) always give the same pixels."""
    return generate_many_uint8(model, [labels], [seed], temperature)[0]


def denormalize_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, C)`` (rounded, clipped)."""
    x = ((images.detach().cpu().float() + 1.0) * 127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)


def normalize_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [-1, 1]: the inverse of ``denormalize_uint8``."""
    return uint8_to_float(images).permute(0, 3, 1, 2).contiguous()


def uint8_to_float(arr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (same layout)."""
    return torch.as_tensor(np.asarray(arr)).float().div_(127.5).sub_(1.0)
