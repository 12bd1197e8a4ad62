"""benchmarks/real_protocols.py: recipe and model config changes from the command line."""

from __future__ import annotations

import pytest

from benchmarks.real_protocols import main, recipe_with
from jobs.metrics.longtail import LONG_TAIL_RECIPES


def test_recipe_changes_parse_each_field_type():
    base = LONG_TAIL_RECIPES["cgan"]
    r = recipe_with(base, ["steps=20", "lr=1e-3", "class_balanced=false", "diffaug=none"])
    assert (r.steps, r.lr, r.class_balanced, r.diffaug) == (20, 1e-3, False, None)
    assert r.batch_size == base.batch_size and recipe_with(base, []) == base


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("bogus=1", "FIELD one of steps, lr"),
        ("steps", "valid: FIELD=VALUE"),
        ("steps=x", "'x' is not a number"),
    ],
)
def test_a_bad_change_is_named(item, message, capsys):
    with pytest.raises(ValueError, match=message):
        recipe_with(LONG_TAIL_RECIPES["cvae"], [item])
    assert main(["longtail", "cvae", "--dataset", "digits", "--set", item]) == 2
    assert message.split("'")[0] in capsys.readouterr().err


def test_a_bad_model_config_change_is_named_before_any_training(capsys):
    assert main(["gain", "cgan", "--dataset", "digits", "--config", "noise_scal=0.7"]) == 2
    err = capsys.readouterr().err
    assert "--config 'noise_scal=0.7': valid: FIELD=VALUE with FIELD one of" in err and "noise_scale" in err
    assert main(["gain", "cgan", "--dataset", "digits", "--config", "noise_scale=high"]) == 2
    assert "'high' is not a number" in capsys.readouterr().err


def test_a_string_field_takes_the_text():
    from benchmarks.real_protocols import parse_settings
    from models.cvae import CVAEConfig

    got = parse_settings("--config", ["prior=class_gaussian", "prior_components=5"], CVAEConfig)
    assert got == {"prior": "class_gaussian", "prior_components": 5}
