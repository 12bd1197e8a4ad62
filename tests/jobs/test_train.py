"""Training on a real local Ray: DDP correctness, fault tolerance, registration, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from cluster.cli import main as cli
from jobs.store.registry import Registry
from jobs.train import TrainSettings, train
from models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

SMALL = {"hidden": 32, "latent_dim": 4}


def weights(home: Path, ref: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(Registry(home).resolve(ref).path).model.state_dict()


@pytest.mark.parametrize("prior", ["standard", "class_mixture"])
def test_two_workers_average_gradients_like_one_big_batch(ray_local, home, prior):
    """W=2 with batch B/2 each ends where W=1 with batch B ends: DDP averages the gradients (and a fitted
    prior, fitted on every rank, ends the same too)."""
    common = dict(
        model="cvae",
        dataset="digits",
        epochs=2,
        batch_size=16,
        lr=1e-2,
        shuffle=False,
        limit_batches=3,
        model_config={**SMALL, "prior": prior, "prior_components": 3},
        checkpoint_every=2,
    )
    train(TrainSettings(name="one", workers=1, **common), home, quiet=True)
    train(TrainSettings(name="two", workers=2, **common), home, quiet=True)
    a, b = weights(home, "one"), weights(home, "two")
    start = load_checkpoint(Registry(home).resolve("one").path).model  # same seed -> same init
    torch.manual_seed(0)
    assert a.keys() == b.keys()
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved < 1e-4, f"1-worker and 2-worker weights differ by {moved}"
    fresh = type(start)(start.config).state_dict()
    assert any((a[k] - fresh[k]).abs().max() > 1e-3 for k in a), "training did not change the weights"


def test_two_worker_gan_ranks_end_identical(ray_local, home):
    info = train(
        TrainSettings(
            model="cgan",
            dataset="digits",
            name="gan2",
            workers=2,
            epochs=2,
            batch_size=32,
            limit_batches=5,
            model_config={"g_hidden": 32, "d_hidden": 32},
        ),
        home,
        quiet=True,
    )
    digests = info["rank_state_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # the checkpoint's EMA generator carries its own (standing) BatchNorm statistics, not G's
    model = load_checkpoint(Registry(home).resolve("gan2").path).model
    ema = {k: v.clone() for k, v in model.generator_ema.named_buffers()}
    assert any(not torch.equal(v, dict(model.generator.named_buffers())[k]) for k, v in ema.items())
    model.standing_stats(seed=0)  # what the trainer computed at the checkpoint (the settings' seed)
    for k, v in model.generator_ema.named_buffers():  # up to float rounding (1 torch thread per worker)
        torch.testing.assert_close(v, ema[k], rtol=1e-4, atol=1e-6, msg=k)


def test_worker_failure_resumes_from_last_checkpoint(ray_local, home):
    info = train(
        TrainSettings(
            model="cvae",
            dataset="digits",
            name="flaky",
            workers=2,
            epochs=3,
            batch_size=32,
            limit_batches=2,
            checkpoint_every=1,
            model_config=SMALL,
            inject_failure_at_epoch=2,
        ),
        home,
        quiet=True,
    )
    assert info["epochs"] == 3
    assert info["starts"] == [0, 2], info["starts"]  # restarted once, at the epoch after the last checkpoint
    assert (home / "runs" / "flaky" / info["run_id"] / "injected_failure").exists()


def centroid_fidelity(model) -> float:
    """Share of samples a nearest-class-mean classifier (fit on real digits train) puts in the asked class."""
    from jobs.data.spec import load_dataset

    ds = load_dataset("digits")
    x = ds.images.flatten(1)  # (N, 64)
    centroids = torch.stack([x[ds.labels == c].mean(0) for c in range(10)])  # (10, 64)
    labels = torch.arange(10).repeat_interleave(50)
    fake = model.sample(labels, generator=torch.Generator().manual_seed(0)).flatten(1)  # (500, 64)
    pred = torch.cdist(fake, centroids).argmin(1)
    return (pred == labels).float().mean().item()


@pytest.mark.parametrize("kind", ["cvae", "cgan"])
def test_loss_goes_down_and_version_registered(ray_local, home, kind):
    info = train(
        TrainSettings(  # batch 32: 28 steps per epoch (the default 128 gives 7)
            model=kind,
            dataset="digits",
            name=f"d-{kind}",
            workers=2,
            epochs=8,
            batch_size=32,
            checkpoint_every=4,
        ),
        home,
        quiet=True,
    )
    hist = json.loads((home / "models" / f"d-{kind}" / "v1" / "history.json").read_text())
    if kind == "cvae":
        assert hist[-1]["loss"] < 0.8 * hist[0]["loss"], hist
    else:  # hinge losses do not fall monotonically: D must beat its untrained value (2.0) ...
        assert max(h["d_loss"] for h in hist[-3:]) < 1.95, hist
    # ... and both must already draw digits of the asked class far above chance (0.1)
    fidelity = centroid_fidelity(load_checkpoint(Registry(home).resolve(f"d-{kind}").path).model)
    assert fidelity > 0.5, fidelity
    assert info["ref"] == f"d-{kind}:v1" and info["type"] == kind
    assert info["classes"] == [str(i) for i in range(10)] and info["image_shape"] == [1, 8, 8]
    assert info["data"]["fingerprint"] and info["images_per_s"] > 0
    version = home / "models" / f"d-{kind}" / "v1"
    assert (version / "samples.png").stat().st_size > 100
    for name in ("config.json", "weights.pt", "classes.json", "data.json", "model.json"):
        assert (version / name).is_file()
    # a second run (class-balanced batches for the cGAN) registers v2, leaving v1 untouched
    before = (version / "weights.pt").read_bytes()
    balance = kind == "cgan"
    s2 = TrainSettings(model=kind, dataset="digits", name=f"d-{kind}", workers=2, epochs=1, limit_batches=1)
    info2 = train(dataclasses.replace(s2, class_balance=balance), home, quiet=True)
    assert info2["train_settings"]["class_balance"] is balance
    assert Registry(home).versions(f"d-{kind}") == [1, 2]
    assert (version / "weights.pt").read_bytes() == before


def test_resume_continues_interrupted_run(ray_local, home):
    s = TrainSettings(
        model="cvae",
        dataset="digits",
        name="res",
        workers=1,
        epochs=2,
        limit_batches=2,
        model_config=SMALL,
        checkpoint_every=1,
    )
    train(s, home, quiet=True)
    info = train(
        TrainSettings(model="cvae", dataset="digits", name="res", epochs=4), home, resume=True, quiet=True
    )
    assert info["epochs"] == 4 and info["starts"] == [0, 2]


def test_time_budget_ends_the_run_checkpointed_and_registered(ray_local, home, capsys):
    """--time-budget: the run stops when the budget is spent (the last epoch maybe partial), registers, and
    says so."""
    argv = ["train", "--home", str(home), "--model", "cvae", "--dataset", "digits", "--name", "tb"]
    argv += [
        "--workers",
        "1",
        "--epochs",
        "100000",
        "--time-budget",
        "20s",
        "--model-config",
        json.dumps(SMALL),
    ]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    info = json.loads((home / "models" / "tb" / "v1" / "model.json").read_text())
    assert info["stopped_by"] == "time budget" and info["time_budget_s"] == 20.0
    planned = math.ceil(info["epochs"])  # the last epoch may be a partial one (e.g. 12.375)
    assert 1 <= planned < 100_000 and planned - 1 < info["epochs"] <= planned
    assert info["train_settings"]["time_budget_s"] == 20.0
    assert "recipe small" in out and "time budget 20s" in out and "ETA" in out
    assert f"epoch {info['epochs']:>6}/{planned}" in out  # the last line shows the planned end
    hist = json.loads((home / "models" / "tb" / "v1" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [*range(1, planned), info["epochs"]]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "diffusion", "--dataset", "digits", "--name", "x"], "unknown model type 'diffusion'"),
        (["--model", "cgan", "--dataset", "imagenet", "--name", "x"], "imagenet"),
        (["--model", "cgan", "--dataset", "mnist:{tmp}/nothing", "--name", "x"], "train-images-idx3-ubyte"),
        (["--model", "cgan", "--dataset", "digits", "--image-size", "12", "--name", "x"], "12"),
        (["--model", "cgan", "--dataset", "digits", "--name", "a/b"], "invalid model name 'a/b'"),
        (["--model", "cgan", "--dataset", "digits", "--name", ".."], "invalid model name '..'"),
        (
            ["--model", "cgan", "--dataset", "digits", "--name", "x", "--batch-size", "3"],
            "multiple of --workers",
        ),
        (
            ["--model", "cvae", "--dataset", "digits", "--name", "x", "--model-config", '{"hiden": 3}'],
            "hiden",
        ),
        (["--model", "cvae", "--dataset", "digits", "--name", "x", "--time-budget", "soon"], "'soon'"),
    ],
)
def test_bad_input_is_a_clear_error_and_registers_nothing(home, tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli(["train", "--home", str(home), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err
    assert Registry(home).list() == []
