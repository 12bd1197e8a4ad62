"""Run settings: the recipe fills what was not given, flags win, durations parse, bad values are named."""

from __future__ import annotations

import pytest

from jobs.store.location import location, write_json_atomic
from jobs.train import RUN_JSON, _resume_settings, run_dir_for
from jobs.trainer.settings import TrainSettings, format_duration, parse_duration, resolve_settings


@pytest.mark.parametrize(
    "text, seconds",
    [("600", 600), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "abc", "10x", "-5", "m", "10m5h"])
def test_bad_durations_name_the_value_and_the_forms(text):
    with pytest.raises(ValueError, match=rf"--time-budget '{text}' .*600, 90s, 10m, 1h30m"):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_recipe_fills_only_what_was_not_given():
    given = TrainSettings(model="cvae", dataset="digits", name="x", epochs=7, model_config={"latent_dim": 4})
    s, recipe, n = resolve_settings(given)
    assert n == 898 and recipe.name == "small"
    assert (s.epochs, s.batch_size, s.lr, s.checkpoint_every) == (7, 128, 2e-3, 3)
    assert s.model_config == {**recipe.model_config, "latent_dim": 4}
    assert resolve_settings(s)[0] == s  # resolving twice changes nothing
    assert s.resolved and not given.resolved


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"epochs": -1}, "--epochs must be >= 1"),
        ({"batch_size": 3}, "multiple of --workers 2"),
        ({"lr": 2.0}, "--lr must be in"),
        ({"time_budget_s": -1.0}, "--time-budget must be > 0"),
        ({"model": "vq"}, "unknown model type 'vq'"),
    ],
)
def test_bad_settings_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TrainSettings(**{"model": "cgan", "dataset": "digits", "name": "x", **kwargs})


def test_resume_takes_the_saved_run_with_this_commands_epochs_and_budget(tmp_path):
    runs = run_dir_for(location(str(tmp_path)), "r")
    saved = TrainSettings(model="cvae", dataset="digits", name="r", epochs=5, time_budget_s=60.0)
    write_json_atomic(runs.join("run1", RUN_JSON), resolve_settings(saved)[0].to_dict())
    write_json_atomic(runs / "latest.json", {"run_id": "run1"})
    again = TrainSettings(model="cvae", dataset="digits", name="r", epochs=8, time_budget_s=30.0)
    s, run_id = _resume_settings(runs, again)
    assert run_id == "run1" and s.epochs == 8 and s.time_budget_s == 30.0 and s.batch_size == 128
    s, _ = _resume_settings(runs, TrainSettings(model="cvae", dataset="digits", name="r"))
    assert s.epochs == 5 and s.time_budget_s == 0.0
