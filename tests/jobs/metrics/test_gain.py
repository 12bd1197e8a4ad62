"""jobs.metrics.gain: how the in-process generator trainer draws its batches."""

from __future__ import annotations

import itertools

import torch

from jobs.metrics.gain import batch_indices


def test_plain_batches_are_passes_over_a_permutation():
    labels = torch.tensor([0] * 9 + [1] * 3)
    draws = list(itertools.islice(batch_indices(labels, 4, False, torch.Generator().manual_seed(0)), 6))
    for first in (0, 3):  # each pass of 3 batches shows every image once
        assert sorted(torch.cat(draws[first : first + 3]).tolist()) == list(range(12))
    assert not torch.equal(torch.cat(draws[:3]), torch.cat(draws[3:]))  # a fresh order per pass


def test_class_balanced_batches_fill_every_class_alike_on_a_long_tail():
    labels = torch.tensor([0] * 990 + [1] * 10)  # 1 % rare class
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat(list(itertools.islice(batch_indices(labels, 64, True, gen), 100)))  # 6,400 draws
    share = float((labels[idx] == 1).double().mean())
    assert 0.45 < share < 0.55  # plain drawing gives 1 %
    assert set(idx[labels[idx] == 1].tolist()) == set(range(990, 1000))  # every rare image is drawn
    again = torch.cat(
        list(itertools.islice(batch_indices(labels, 64, True, torch.Generator().manual_seed(0)), 100))
    )
    assert torch.equal(idx, again)  # seeded
