"""jobs.metrics.restoration.psnr: known values, per image."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.metrics.restoration import psnr


def test_psnr_of_a_constant_error_is_known():
    clean = torch.zeros(3, 1, 4, 4)
    values = psnr(clean + torch.tensor([0.1, 0.01, 0.5])[:, None, None, None], clean)
    assert values.shape == (3,)
    assert values.tolist() == pytest.approx([20.0, 40.0, 10 * math.log10(4)])


def test_psnr_depends_on_the_data_range_and_is_infinite_for_equal_images():
    a = torch.full((1, 2, 2), 0.2)
    assert float(psnr(a, a * 0, data_range=2.0)) == pytest.approx(20.0)  # 10 log10(4 / 0.04)
    assert math.isinf(float(psnr(a, a)))


def test_psnr_matches_gaussian_noise_of_known_std():
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(64, 1, 28, 28, generator=gen)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    assert float(psnr(noisy, clean).mean()) == pytest.approx(20.0, abs=0.1)


def test_psnr_rejects_mismatched_shapes_and_a_bad_range():
    with pytest.raises(ValueError, match=r"same shape .*\(2, 3\) and \(2, 4\)"):
        psnr(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="data_range 0"):
        psnr(torch.zeros(2, 3), torch.zeros(2, 3), data_range=0)
