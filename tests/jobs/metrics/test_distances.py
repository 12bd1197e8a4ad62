"""jobs.metrics.distances.kth_nearest_distance and the helpers built on it."""

from __future__ import annotations

import pytest
import torch

from jobs.metrics import distances
from jobs.metrics.distances import kth_nearest_distance, kth_nn_distance, nearest_distance


def test_kth_nearest_distance_on_a_line():
    train = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    query = torch.tensor([[0.0], [10.0]])
    assert kth_nearest_distance(query, train, 1).tolist() == [0.0, 3.0]
    assert kth_nearest_distance(query, train, 3).tolist() == [3.0, 9.0]  # 10 -> 3, 7, 9, 10
    assert nearest_distance(query, train).tolist() == [0.0, 3.0]
    # within one set the point itself is not counted: 1 -> 0 (1), 3 -> 1 (2), ...
    assert kth_nn_distance(train, 1).tolist() == [1.0, 1.0, 2.0, 4.0]


def test_kth_nearest_distance_is_the_same_in_chunks(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 3, generator=gen), torch.randn(40, 3, generator=gen)
    whole = kth_nearest_distance(a, b, 5)
    monkeypatch.setattr(distances, "CHUNK_ELEMENTS", 100)  # 2 rows per chunk
    assert torch.equal(kth_nearest_distance(a, b, 5), whole)
    expected = torch.cdist(a.double(), b.double()).sort(1).values[:, 4]
    assert torch.allclose(whole, expected)


@pytest.mark.parametrize("k", [0, 5, True])
def test_kth_nearest_distance_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match="valid: 1 <= k <= 4"):
        kth_nearest_distance(torch.zeros(2, 1), torch.zeros(4, 1), k)
