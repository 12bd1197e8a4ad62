"""Default recipes: digits keeps its tuned settings, larger images get the conv recipe, epochs follow size."""

from __future__ import annotations

import pytest

from models.recipes import RECIPES, default_recipe


def test_digits_keeps_the_settings_its_quality_targets_were_measured_with():
    cvae, cgan = default_recipe("cvae", 8), default_recipe("cgan", 8)
    assert (cvae.epochs_for(898), cvae.checkpoint_every(150), cvae.batch_size, cvae.lr) == (
        150,
        50,
        128,
        2e-3,
    )
    assert (cgan.epochs_for(898), cgan.checkpoint_every(300), cgan.batch_size, cgan.lr) == (
        300,
        50,
        128,
        4.2e-4,
    )
    assert cvae.model_config["prior"] == "class_gaussian" and cgan.model_config == {"noise_scale": 0.95}


@pytest.mark.parametrize("size", [28, 32, 64])
def test_images_above_16_px_get_the_conv_recipe(size):
    for kind in ("cvae", "cgan"):
        r = default_recipe(kind, size)
        assert r.name == "large" and r.model_config["arch"] == "conv"
    assert default_recipe("cgan", 16).name == "small"
    # the large cVAE samples with label guidance; digits keep the plain decoder mean they were measured with
    assert default_recipe("cvae", size).model_config["guidance"] == 1.0
    assert "guidance" not in default_recipe("cvae", 8).model_config
    # a per-class mixture prior; colour images: more components, milder guidance (shapes:32)
    grey, colour = default_recipe("cvae", size), default_recipe("cvae", size, channels=3)
    assert grey.model_config["prior"] == "class_mixture" and grey.model_config["prior_components"] == 20
    assert colour.name == "colour" and colour.model_config["guidance"] == 0.5
    assert colour.model_config["prior_components"] == 50
    changed = ("guidance", "prior_components")
    assert {k: v for k, v in colour.model_config.items() if k not in changed} == {
        k: v for k, v in grey.model_config.items() if k not in changed
    }


def test_colour_images_above_16_px_get_the_colour_cgan_recipe_and_grey_ones_do_not():
    colour = default_recipe("cgan", 32, channels=3)
    assert colour.name == "colour" and colour.model_config["mode_seeking"] > 0
    assert {k: v for k, v in colour.model_config.items() if k not in ("mode_seeking", "noise_scale")} == {
        k: v for k, v in default_recipe("cgan", 32).model_config.items() if k != "noise_scale"
    }  # otherwise the large recipe's networks
    assert "mode_seeking" not in default_recipe("cgan", 28, channels=1).model_config  # grey: large
    # grey images train at 4x the lr colour ones were measured with (Fashion-MNIST FID 15.5 -> 5.8)
    assert (default_recipe("cgan", 28).lr, colour.lr) == (8e-4, 2e-4)
    assert default_recipe("cvae", 32, channels=3).name == "colour"  # the cVAE: its own, too
    assert default_recipe("cgan", 16, channels=3).name == "small"
    with pytest.raises(ValueError, match="channels"):
        default_recipe("cgan", 32, channels=0)


def test_epochs_follow_the_dataset_size_and_are_capped():
    r = default_recipe("cgan", 28)
    assert r.epochs_for(60_000) == 20  # 1.2M images shown
    assert r.epochs_for(6_000) == 200
    assert r.epochs_for(10) == r.max_epochs
    assert r.epochs_for(10**9) == 1
    assert r.checkpoint_every(20) == 4 and r.checkpoint_every(1) == 1
    assert "20 epochs" in r.describe(60_000) and "batch 128" in r.describe(60_000)


def test_bad_input_names_the_options():
    with pytest.raises(ValueError, match="diffusion.*cvae, cgan"):
        default_recipe("diffusion", 28)
    with pytest.raises(ValueError, match="num_images"):
        RECIPES[("cvae", "large")].epochs_for(0)
