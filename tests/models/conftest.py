"""Shared by the model tests: one torch thread, and the seeded-sampling contract every model keeps."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a loaded 2-core box crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_seeded_sampling(model: torch.nn.Module, channels: int, size: int) -> None:
    """Samples have the right shape and range; the same seed repeats them, another seed changes them."""
    labels = torch.tensor([0, 3, 9, 3])
    a = model.sample(labels, generator=torch.Generator().manual_seed(7))
    b = model.sample(labels, generator=torch.Generator().manual_seed(7))
    c = model.sample(labels, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, channels, size, size)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
