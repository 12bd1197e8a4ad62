"""How well a score ranks the flagged items (outliers, mislabelled images) above the rest.

- ``auroc``: area under the ROC curve, computed exactly as the Mann-Whitney U statistic with average
  ranks: the probability that a random positive scores above a random negative, ties counting one half.
  0.5 = no better than chance, 1.0 = every positive above every negative.
- ``precision_at``: the share of positives among the ``count`` highest scores; items tied at the cut-off
  count with the share of positives among the tied items (the expected precision under a random order
  of ties), so a saturated score (for example percentiles clipped at 100) is not credited with a lucky
  tie-break.
Higher score = more suspect, for both."""

from __future__ import annotations

import numpy as np
import torch


def _scores_and_flags(scores: object, positives: object) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores (N,) and bool flags (N,); ValueError naming what is wrong."""
    s = torch.as_tensor(scores).detach().cpu().double().reshape(-1).numpy()
    p = torch.as_tensor(positives).detach().cpu().reshape(-1).numpy()
    if s.shape != p.shape:
        raise ValueError(f"{s.size} scores for {p.size} flags; valid: one flag per score")
    if p.dtype != np.bool_ and not np.isin(p, (0, 1)).all():
        raise ValueError(f"flags hold {sorted(set(p.tolist()) - {0, 1})[:3]}; valid: booleans or 0/1")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite; valid: finite scores")
    return s, p.astype(bool)


def auroc(scores: object, positives: object) -> float:
    """Area under the ROC curve of ``scores`` (N,) for the items flagged in ``positives`` (N,).

    Needs at least one positive and one negative; ties count one half (average ranks).
    """
    s, p = _scores_and_flags(scores, positives)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs positives and negatives; got {n_pos} and {n_neg}")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last item of each distinct value (1-based)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]  # average rank of each item
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_at(scores: object, positives: object, count: int) -> float:
    """Share of positives among the ``count`` highest ``scores`` (ties at the cut-off: their mean)."""
    s, p = _scores_and_flags(scores, positives)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= s.size:
        raise ValueError(f"count {count!r} is out of range; valid: an integer in 1..{s.size}")
    cut = np.sort(s)[::-1][count - 1]  # the count-th highest score
    above, tied = s > cut, s == cut
    from_tied = count - int(above.sum())  # how many of the tied items fall inside the top count
    return float((p[above].sum() + from_tied * p[tied].mean()) / count)
