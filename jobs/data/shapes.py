"""``shapes[:SIZE]``: procedurally generated RGB shapes, deterministic per split (colour proving ground)."""

from __future__ import annotations

import numpy as np
import torch

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")


_SHAPES_PER_CLASS = {"train": 600, "test": 200}


_SHAPES_SEED = {"train": 20240601, "test": 20240602}  # different seeds: test images are new images


# --- shapes -------------------------------------------------------------------------------------


def make_shapes(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Draw the procedural shapes split: exact class balance, deterministic per split."""
    rng = np.random.default_rng(_SHAPES_SEED[split])
    k = len(SHAPE_CLASSES)
    n = _SHAPES_PER_CLASS[split] * k
    labels = rng.permutation(np.repeat(np.arange(k), n // k))
    r = rng.uniform(0.22, 0.4, n) * size  # shape "radius" in pixels
    cx = rng.uniform(r, size - r)  # centre keeps the shape inside the image
    cy = rng.uniform(r, size - r)
    fg = rng.uniform(0.35, 1.0, (n, 3))
    fg[np.arange(n), rng.integers(0, 3, n)] = 1.0  # one saturated channel: always bright
    bg = rng.uniform(0.0, 0.15, (n, 3))  # dark background

    coords = np.arange(size, dtype=np.float32) + 0.5
    mask = np.empty((n, size, size), dtype=bool)
    for i, cls in enumerate(SHAPE_CLASSES):
        sel = np.flatnonzero(labels == i)
        rr = r[sel, None, None].astype(np.float32)
        dx = (coords[None, None, :] - cx[sel, None, None].astype(np.float32)) / rr  # (n_i, 1, W), units of r
        dy = (coords[None, :, None] - cy[sel, None, None].astype(np.float32)) / rr  # (n_i, H, 1)
        adx, ady = np.abs(dx), np.abs(dy)
        if cls in ("circle", "ring"):
            d2 = dx**2 + dy**2  # (n_i, H, W)
            m = (d2 <= 1.0) & (d2 >= 0.36) if cls == "ring" else d2 <= 1.0
        elif cls == "square":
            m = (adx <= 0.8) & (ady <= 0.8)
        elif cls == "triangle":  # apex up, base at dy = 0.7
            m = (dy >= -1.0) & (dy <= 0.7) & (adx <= (dy + 1.0) * (0.95 / 1.7))
        else:  # cross ("+")
            m = ((adx <= 0.28) & (ady <= 1.0)) | ((ady <= 0.28) & (adx <= 1.0))
        mask[sel] = m
    m = torch.from_numpy(mask).unsqueeze(1).float()  # (N, 1, H, W)
    bg_t = torch.from_numpy(bg.astype(np.float32))[:, :, None, None]  # (N, 3, 1, 1)
    fg_t = torch.from_numpy(fg.astype(np.float32))[:, :, None, None]
    x = ((bg_t * 2.0 - 1.0) + ((fg_t - bg_t) * 2.0) * m).clamp_(-1.0, 1.0)  # (N, 3, H, W)
    return x, torch.from_numpy(labels.astype(np.int64)), list(SHAPE_CLASSES)
