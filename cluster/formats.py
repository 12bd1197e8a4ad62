"""Response bodies of ``POST /v1/samples``: npz, json (base64 PNGs) and png (a grid, one row per class).

The generator replica encodes the bodies right after the forward pass, so the ingress forwards finished
bytes: the arrays never travel between processes and the ingress's event loop (one per ingress
replica, which serves every HTTP request) does no per-image work.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

import numpy as np

from jobs.store.png import encode_pngs

MEDIA_TYPES = {"npz": "application/octet-stream", "json": "application/json", "png": "image/png"}
FORMATS = tuple(MEDIA_TYPES)


def encode_samples(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str], fmt: str, model: str
) -> bytes:
    """The body for ``fmt``: images (N, H, W, C) uint8 with their labels (N,) of model ``model``."""
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(
            buf, images=images, labels=labels.astype(np.int64), label_names=np.array(list(classes))[labels]
        )
        return buf.getvalue()
    if fmt == "png":
        return grid_png(images, labels, len(classes))
    if fmt == "json":
        samples = [
            {"label": y, "label_name": classes[y], "png": base64.b64encode(p).decode()}
            for y, p in zip(labels.tolist(), encode_pngs(images), strict=True)
        ]
        body = {"model": model, "count": len(samples), "samples": samples}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    raise ValueError(f"format {fmt!r} is not valid; valid: {', '.join(FORMATS)}")


def grid_png(images: np.ndarray, labels: np.ndarray, num_classes: int) -> bytes:
    """A grid with one row per class present (images upscaled to at least 32 px)."""
    from PIL import Image

    n, h, w, c = images.shape
    scale = max(1, 32 // h)
    rows = [images[labels == k] for k in range(num_classes) if (labels == k).any()]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h * scale + 2), cols * (w * scale + 2), c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = img.repeat(scale, 0).repeat(scale, 1)
            y, x = i * (h * scale + 2) + 1, j * (w * scale + 2) + 1
            grid[y : y + h * scale, x : x + w * scale] = big
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
