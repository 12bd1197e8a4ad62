"""benchmarks/training.py: the plain loop that genaug's training speed is compared with."""

from __future__ import annotations

import math

import pytest

from benchmarks.training import plain_images_per_s


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cvae", "cgan"])
def test_the_plain_loop_trains_the_default_recipe_above_16_px(kind):
    # shapes:32 takes the colour recipes (the cVAE's mixture prior samples wider noise than a step draws)
    rate = plain_images_per_s(kind, epochs=1, dataset="shapes:32")
    assert math.isfinite(rate) and rate > 0
