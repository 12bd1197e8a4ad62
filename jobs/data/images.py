"""The in-memory image dataset every source returns, and its pixel conventions.

Images are float32 ``(N, C, H, W)`` in ``[-1, 1]`` (``C`` 1 or 3, ``H == W``), labels int64, plus class
names; ``resize_images`` and ``pil_batch`` are the transforms the sources share."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from jobs.store.png import GREY_MODES
from models.blocks import SUPPORTED_SIZES  # one list of image sides for models and data
from models.sampling import uint8_to_float

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ImageDataset(torch.utils.data.Dataset):
    """An in-memory labelled image dataset; ``ds[i] -> (image (C, H, W) in [-1, 1], int label)``."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1], C in {1, 3}, H == W
    labels: torch.Tensor  # (N,) int64, each in [0, num_classes)
    classes: tuple[str, ...]  # class names, index = label
    spec: str  # the spec string it was loaded from
    split: str  # "train" | "test"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))  # lists accepted
        im, lb = self.images, self.labels
        if (
            im.dtype != torch.float32
            or im.ndim != 4
            or im.shape[1] not in (1, 3)
            or im.shape[2] != im.shape[3]
        ):
            raise ValueError(
                f"images must be float32 (N, C, H, W) with C in (1, 3) and H == W; "
                f"got {im.dtype} {tuple(im.shape)}"
            )
        if lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({im.shape[0]},); got {lb.dtype} {tuple(lb.shape)}"
            )
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if len(lb) and (int(lb.min()) < 0 or int(lb.max()) >= len(self.classes)):
            raise ValueError(
                f"labels span {int(lb.min())}..{int(lb.max())}; valid: 0..{len(self.classes) - 1} "
                f"for {len(self.classes)} classes"
            )
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_size(self) -> int:
        """Side length H (== W)."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (RGB)."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content (shape, image bytes, labels, class names); independent of spec/split."""
        h = hashlib.sha256()
        h.update(json.dumps({"shape": list(self.images.shape), "classes": list(self.classes)}).encode())
        h.update(self.images.contiguous().numpy().astype("<f4", copy=False).tobytes())
        h.update(self.labels.contiguous().numpy().astype("<i8", copy=False).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"ImageDataset(spec={self.spec!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={self.num_classes})"
        )


def class_balanced_sampler(
    labels: torch.Tensor, num_samples: int, generator: torch.Generator
) -> torch.utils.data.WeightedRandomSampler:
    """Draws ``num_samples`` indices into ``labels`` (N,) per pass, each image with weight 1 / its class's
    count (with replacement): every present class fills about the same share of each batch, however
    long-tailed the data (``genaug train --class-balance``, and the evaluation's long-tail generators)."""
    weights = 1.0 / torch.bincount(labels)[labels].double()  # (N,)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)``, antialiased bilinear; no-op if already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(-1.0, 1.0).contiguous()


# --- PIL images (imagefolder, parquet) --------------------------------------------------------------


def pil_batch(images: Sequence, image_size: int | None, where: str) -> torch.Tensor:
    """PIL images -> float (N, C, H, W) in [-1, 1]; C = 1 if every image is grey, else 3.

    Without ``image_size`` all images must share one square supported size. With it, non-square images
    are centre-cropped to a square; the caller resizes to ``image_size``.
    """
    if not images:
        raise ValueError(f"no images in {where}")
    arrays, grey = [], True
    for img in images:
        if img.mode in GREY_MODES:
            a = np.asarray(img.convert("L"))  # (H, W)
        else:
            a = np.asarray(img.convert("RGB"))  # (H, W, 3)
            if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
                a = a[..., 0]
        grey = grey and a.ndim == 2
        arrays.append(a)
    sizes = sorted({a.shape[:2] for a in arrays})
    if image_size is None:
        if len(sizes) != 1 or sizes[0][0] != sizes[0][1] or sizes[0][0] not in SUPPORTED_SIZES:
            shown = ", ".join(f"{w}x{h}" for h, w in sizes[:5]) + (", ..." if len(sizes) > 5 else "")
            raise ValueError(
                f"images in {where} are {shown}; without --image-size they must all be one square size "
                f"from {SUPPORTED_SIZES}: pass --image-size (image_size=) with one of those to resize"
            )
    c = 1 if grey else 3
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(arrays):
        by_size.setdefault(a.shape[:2], []).append(i)
    side = image_size if image_size is not None else sizes[0][0]
    out = torch.empty((len(arrays), c, side, side), dtype=torch.float32)
    for (h, w), idx in by_size.items():
        if grey:
            stack = np.stack([arrays[i] for i in idx])[:, None]  # (n, 1, h, w)
        else:
            rgb = [arrays[i] if arrays[i].ndim == 3 else np.repeat(arrays[i][..., None], 3, -1) for i in idx]
            stack = np.stack(rgb).transpose(0, 3, 1, 2)  # (n, h, w, 3) -> (n, 3, h, w)
        t = uint8_to_float(stack)
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        t = t[:, :, top : top + s, left : left + s]  # centre square
        out[idx] = resize_images(t.contiguous(), side)
    return out


def open_image(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return img
