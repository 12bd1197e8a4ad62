"""jobs.metrics.ranking: AUROC and precision at k, against scikit-learn and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from jobs.metrics.ranking import auroc, precision_at


def test_auroc_extremes_and_chance():
    flags = [0, 0, 0, 1, 1]
    assert auroc([0.1, 0.2, 0.3, 0.8, 0.9], flags) == 1.0
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], flags) == 0.0
    assert auroc([1.0] * 5, flags) == 0.5  # all tied: each pair counts one half


def test_auroc_hand_worked_with_a_tie():
    # positives 0.5 and 0.9; negatives 0.1, 0.5, 0.7: pairs won 1 + 0.5 + 0 + 1 + 1 + 1 = 4.5 of 6
    assert auroc([0.1, 0.5, 0.7, 0.5, 0.9], [False, False, False, True, True]) == pytest.approx(4.5 / 6)


def test_auroc_matches_scikit_learn_with_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 3000).astype(float)  # heavy ties, like clipped percentiles
    flags = rng.random(3000) < 0.1 + scores / 40
    assert auroc(torch.tensor(scores), torch.tensor(flags)) == pytest.approx(
        roc_auc_score(flags, scores), abs=1e-12
    )


def test_precision_at_counts_ties_at_the_cut_off_at_their_mean():
    scores = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 1.0]
    flags = [1, 0, 1, 1, 0, 0, 1]
    assert precision_at(scores, flags, 2) == 0.5
    # top 4: 5.0 and 4.0 (one positive) plus 2 of the four tied 3.0s (half of them positive)
    assert precision_at(scores, flags, 4) == pytest.approx((1 + 2 * 0.5) / 4)
    assert precision_at(scores, flags, 7) == pytest.approx(4 / 7)


def test_precision_at_one_clear_ranking():
    scores = torch.arange(100.0)
    flags = scores >= 95
    assert precision_at(scores, flags, 5) == 1.0
    assert precision_at(scores, flags, 10) == 0.5


@pytest.mark.parametrize(
    ("scores", "flags", "match"),
    [
        ([0.1, 0.2], [1], "2 scores for 1 flags"),
        ([0.1, 0.2], [1, 1], "positives and negatives; got 2 and 0"),
        ([0.1, float("nan")], [0, 1], "NaN or infinite"),
        ([0.1, 0.2], [0, 2], "valid: booleans or 0/1"),
    ],
)
def test_auroc_rejects_bad_input_naming_it(scores, flags, match):
    with pytest.raises(ValueError, match=match):
        auroc(scores, flags)


@pytest.mark.parametrize("count", [0, 4, 1.5, True])
def test_precision_at_rejects_a_count_out_of_range(count):
    with pytest.raises(ValueError, match="valid: an integer in 1..3"):
        precision_at([0.1, 0.2, 0.3], [0, 1, 0], count)
