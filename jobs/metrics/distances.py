"""Distances in the classifier's feature space: FID and the k-NN manifold metrics (REFERENCE.md).

- ``fid``: Fréchet distance of two Gaussian fits (report the real-train vs real-test floor beside it);
- ``precision_recall`` (Kynkäänniemi et al. 2019, k = 3) and ``density_coverage`` (Naeem et al. 2020,
  k = 5): radius of a point = distance to its k-th nearest neighbour in its own set.
All in float64, chunked so that at most ``CHUNK_ELEMENTS`` distances are held at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22  # distances held at once by the kNN helpers (4M float64 = 32 MB)


# ----------------------------------------------------------------------------- metrics (pure functions)


def _as_f64(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.detach().reshape(len(t), -1).to(torch.float64)  # (N, D)


def _chunks(a: Tensor, b: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(start, cdist(a[start:start+c], b))`` over row chunks of ``a``, c x len(b) <= CHUNK_ELEMENTS."""
    rows = max(1, CHUNK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), rows):
        yield start, torch.cdist(a[start : start + rows], b).clamp_min_(0)  # (c, len(b))


def kth_nn_distance(x: Tensor | np.ndarray, k: int) -> Tensor:
    """Distance (N,) from each row of ``x`` to its k-th nearest other row (the point itself not counted)."""
    x = _as_f64(x)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs at least k+1 points; got {len(x)}; valid: 1 <= k < {len(x)}")
    return kth_nearest_distance(x, x, k + 1)  # k+1: the 0 distance to itself


def kth_nearest_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray, k: int) -> Tensor:
    """Distance (len(a),) from each row of ``a`` to its k-th nearest row of ``b`` (k = 1: the nearest).

    A kNN novelty score when ``b`` is the training set: large for rows far from every training row.
    """
    a, b = _as_f64(a), _as_f64(b)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(b):
        raise ValueError(f"k={k!r} is out of range for {len(b)} reference rows; valid: 1 <= k <= {len(b)}")
    out = torch.empty(len(a), dtype=torch.float64)
    for start, d in _chunks(a, b):
        out[start : start + len(d)] = d.kthvalue(k, dim=1).values
    return out


def nearest_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Distance (len(a),) from each row of ``a`` to its nearest row of ``b``."""
    return kth_nearest_distance(a, b, 1)


def fid(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)`` with unbiased covariances, in float64.
    ``tr((S_a S_b)^1/2)`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S_a^1/2 S_b S_a^1/2`` (same spectrum as ``S_a S_b``), so only ``eigh`` is needed; tiny negative
    eigenvalues from rounding are clipped to 0. Identical sets give 0 (up to ~1e-9).
    """
    a, b = _as_f64(feats_a).numpy(), _as_f64(feats_b).numpy()
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"fid needs two sets of >= 2 rows with equal width; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = (
        np.cov(a, rowvar=False).reshape(a.shape[1], -1),
        np.cov(b, rowvar=False).reshape(b.shape[1], -1),
    )
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^1/2
    inner = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_cross = float(np.sqrt(np.clip(eig, 0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross)
    return max(value, 0.0)


def precision_recall(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) in a feature space.

    Each point's radius is the distance to its k-th nearest neighbour in its own set (itself not
    counted). Precision = share of ``fake`` rows within (<=) the radius of at least one ``real`` row;
    recall = share of ``real`` rows within the radius of at least one ``fake`` row. Both are in [0, 1];
    identical sets give 1, 1. Distances: Euclidean, float64, computed in memory-bounded chunks.
    """
    real, fake = _as_f64(real), _as_f64(fake)
    r_real, r_fake = kth_nn_distance(real, k), kth_nn_distance(fake, k)
    return {"precision": _share_inside(fake, real, r_real), "recall": _share_inside(real, fake, r_fake)}


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    inside = 0
    for _, d in _chunks(points, centres):
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(points)


def density_coverage(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) in a feature space, real radii only.

    With r_i the distance from real point i to its k-th nearest other real point: density =
    (1 / (k M)) * sum over the M fakes of the number of real balls B(x_i, r_i) containing it (about 1
    for identical distributions, can exceed 1); coverage = share of real points whose ball contains at
    least one fake (about 0.97 for two draws of one distribution at k = 5). "Contains" is ``<=``.
    """
    real, fake = _as_f64(real), _as_f64(fake)
    radii = kth_nn_distance(real, k)
    hits = 0
    for _, d in _chunks(fake, real):
        hits += int((d <= radii[None, :]).sum())
    covered = nearest_distance(real, fake) <= radii
    return {"density": hits / (k * len(fake)), "coverage": float(covered.double().mean())}
