"""How close a restored image is to the original: PSNR."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(estimate: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image (N,) in dB: 10 log10(data_range^2 / MSE over the image's pixels).

    ``estimate`` and ``target`` are (N, ...) on the same pixel scale, whose span is ``data_range`` (1.0
    for [0, 1] pixels). Identical images give +inf. Report the mean over images beside its protocol.
    """
    if estimate.shape != target.shape or estimate.dim() < 2:
        raise ValueError(
            f"psnr needs two batches of the same shape (N, ...); got {tuple(estimate.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not data_range > 0:
        raise ValueError(f"data_range {data_range!r} must be > 0; valid: the span of the pixel scale")
    mse = (estimate.double() - target.double()).pow(2).flatten(1).mean(1)  # (N,)
    return 10.0 * torch.log10(data_range**2 / mse)
