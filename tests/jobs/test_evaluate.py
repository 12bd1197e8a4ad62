"""Evaluation metrics on cases with known answers, the cached domain classifier, and the eval report."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from jobs import evaluate as ev
from jobs.data.spec import load_dataset
from jobs.metrics import classifier, distances, fidelity, gain
from jobs.metrics import report as report_module
from jobs.store.registry import Registry
from models.cgan import CGAN
from models.checkpoint import build_model, checkpoint_hash, save_checkpoint
from tests.conftest import ReplayGenerator

# A cheap classifier for tests that only need "a classifier" (not the >= 0.97 one).
CHEAP = classifier.ClassifierConfig(width=8, feature_dim=32, min_steps=100, max_steps=100)


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def eval_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval_home")


# ----------------------------------------------------------------------------- FID


def test_fid_identical_sets_is_zero_and_a_mean_shift_adds_its_square():
    a = gaussian(500, 6, 0)
    assert distances.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([3.0, 0, 0, 0, 0, 4.0])  # |shift|^2 = 25; covariances unchanged
    assert distances.fid(a, a + shift) == pytest.approx(25.0, rel=1e-6)
    # Scaling by 2: S_b = 4 S_a, so tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)) = tr(S_a) (+ the mean shift).
    expected = float(np.trace(np.cov(a.numpy(), rowvar=False))) + float((a.mean(0) ** 2).sum())
    assert distances.fid(a, 2 * a) == pytest.approx(expected, rel=1e-6)


def test_fid_matches_scipy_sqrtm_on_correlated_features():
    a = gaussian(400, 5, 1) @ torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    b = gaussian(300, 5, 3) @ torch.randn(5, 5, generator=torch.Generator().manual_seed(4)) + 0.5
    x, y = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert distances.fid(a, b) == pytest.approx(float(ref), rel=1e-6)


def test_fid_of_two_draws_is_small_and_rejects_mismatched_widths():
    assert distances.fid(gaussian(4000, 4, 0), gaussian(4000, 4, 1)) < 0.02
    with pytest.raises(ValueError, match="equal width"):
        distances.fid(gaussian(10, 3, 0), gaussian(10, 4, 0))


# ----------------------------------------------------------------------------- kNN metrics


def test_precision_recall_identical_sets_are_one_and_disjoint_sets_zero():
    a = gaussian(600, 8, 0)
    assert distances.precision_recall(a, a) == {"precision": 1.0, "recall": 1.0}
    far = gaussian(600, 8, 1, shift=20.0)
    assert distances.precision_recall(a, far) == {"precision": 0.0, "recall": 0.0}
    assert distances.density_coverage(a, far) == {"density": 0.0, "coverage": 0.0}


def test_density_and_coverage_of_two_draws_of_one_distribution():
    """Naeem et al.: density ~ 1 and coverage ~ 1 - 2^-k = 0.969 at k = 5 for identical distributions."""
    dc = distances.density_coverage(gaussian(2000, 8, 0), gaussian(2000, 8, 1), k=5)
    assert 0.93 < dc["density"] < 1.07
    assert 0.95 < dc["coverage"] < 0.985
    pr = distances.precision_recall(gaussian(2000, 8, 0), gaussian(2000, 8, 1), k=3)
    assert 0.85 < pr["precision"] < 0.95 and 0.85 < pr["recall"] < 0.95  # finite-sample PR is below 1


def test_constant_generator_has_precision_but_no_recall_or_coverage():
    real = gaussian(1000, 8, 0)
    fake = real[:1].repeat(1000, 1)  # every sample the same (a typical real point)
    pr, dc = distances.precision_recall(real, fake), distances.density_coverage(real, fake)
    assert pr["precision"] == 1.0
    assert pr["recall"] <= 0.002  # only the copied real point itself
    assert dc["coverage"] <= 0.01


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float, float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(d, axis=1)[:, k]

    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=2)  # (M, N)
    r_real, r_fake = radii(real), radii(fake)
    precision = (d_fr <= r_real[None]).any(1).mean()
    recall = (d_fr.T <= r_fake[None]).any(1).mean()
    density = (d_fr <= r_real[None]).sum() / (k * len(fake))
    coverage = (d_fr.min(0) <= r_real).mean()
    return precision, recall, density, coverage


def test_chunked_knn_matches_brute_force(monkeypatch):
    real, fake = gaussian(150, 5, 0).numpy(), gaussian(120, 5, 1, shift=0.3).numpy()
    monkeypatch.setattr(distances, "CHUNK_ELEMENTS", 37)  # many chunks, ragged last one
    pr, dc = distances.precision_recall(real, fake, k=3), distances.density_coverage(real, fake, k=3)
    p, r, d, c = brute_force(real.astype(np.float64), fake.astype(np.float64), 3)
    assert (pr["precision"], pr["recall"], dc["density"], dc["coverage"]) == pytest.approx((p, r, d, c))
    with pytest.raises(ValueError, match="k=3 needs at least k\\+1 points"):
        distances.precision_recall(real[:3], fake, k=3)


# ----------------------------------------------------------------------------- memorisation


def test_memorisation_copies_are_near_copies_and_new_images_are_not(digits):
    train, test = digits
    tr, te = train.images.flatten(1), test.images.flatten(1)
    copies = fidelity.memorisation(tr[:200] + 0.01, tr, te)  # training images, slightly perturbed
    assert copies["near_copy_rate"] == 1.0
    assert copies["median_ratio"] < 0.05
    fresh = fidelity.memorisation(te[:300], tr, te)  # real unseen images: none is closer than the closest
    assert fresh["near_copy_rate"] == 0.0
    assert fresh["threshold"] == pytest.approx(copies["threshold"]) and fresh["threshold"] > 0.5
    assert fresh["median_ratio"] == pytest.approx(1.0, abs=0.1)


# ----------------------------------------------------------------------------- classifier-based metrics


class LevelClassifier(nn.Module):
    """Predicts class c for an image whose pixels are all c / 10 (a stand-in with known outputs)."""

    def forward(self, x):
        levels = torch.arange(10.0) / 10
        return -(x.flatten(1).mean(1, keepdim=True) - levels).abs()  # (B, 10)


def test_label_fidelity_per_class_and_mean():
    labels = torch.arange(4).repeat_interleave(10)  # 4 classes x 10
    images = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
    images[30:35] = 0.0  # half of class 3 looks like class 0
    lf = fidelity.label_fidelity(LevelClassifier(), images, labels, ["a", "b", "c", "d"])
    assert lf["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}
    assert lf["mean"] == pytest.approx(0.875) and lf["accuracy"] == pytest.approx(35 / 40)


def test_cas_is_high_on_real_data_and_chance_on_shuffled_labels(digits):
    train, test = digits
    good = fidelity.cas(
        train.images, train.labels, test.images, test.labels, seed=0, num_classes=10, config=CHEAP
    )
    shuffled = train.labels[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    bad = fidelity.cas(train.images, shuffled, test.images, test.labels, seed=0, num_classes=10, config=CHEAP)
    assert good > 0.75
    assert bad < 0.25


def test_classifier_training_is_deterministic_and_fits_any_supported_shape(digits):
    train, _ = digits
    a = classifier.train_classifier(train.images[:200], train.labels[:200], 10, 5, CHEAP)
    b = classifier.train_classifier(train.images[:200], train.labels[:200], 10, 5, CHEAP)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    for channels, size in ((1, 8), (3, 16), (1, 28), (3, 64)):
        net = classifier.FeatureCNN(channels, size, 5, CHEAP).eval()
        x = torch.zeros(2, channels, size, size)
        assert net(x).shape == (2, 5) and classifier.extract_features(net, x).shape == (2, CHEAP.feature_dim)
    with pytest.raises(ValueError, match="channels in \\(1, 3\\)"):
        classifier.FeatureCNN(2, 8, 10, CHEAP)


@pytest.mark.slow
def test_domain_classifier_reaches_097_on_digits_and_is_cached(eval_home, digits):
    train, test = digits
    net, meta = classifier.feature_classifier(eval_home, train, test)
    pt, js = classifier.classifier_cache_paths(eval_home, train)
    assert meta["cached"] is False and pt.is_file() and js.is_file()
    assert pt.name == f"{train.fingerprint}.pt"
    assert meta["test_accuracy"] >= 0.97
    assert json.loads(js.read_text())["test_accuracy"] == meta["test_accuracy"]
    assert classifier.accuracy(net, test.images, test.labels) == meta["test_accuracy"]
    stamp = pt.stat().st_mtime_ns
    again, meta2 = classifier.feature_classifier(eval_home, train, test)
    assert meta2["cached"] is True and pt.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert all(
        torch.equal(x, y) for x, y in zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    )
    # The state dict loads without unpickling objects.
    assert set(torch.load(pt, weights_only=True)) == set(net.state_dict())
    # A different config is a different classifier: retrained, file replaced.
    _, meta3 = classifier.feature_classifier(eval_home, train, test, CHEAP)
    assert meta3["cached"] is False


# ----------------------------------------------------------------------------- augmentation gain


def test_augmentation_gain_positive_for_extra_real_data_negative_for_noise(digits):
    train, test = digits
    seen = []

    def replay(images, labels, classes, seed):  # "generates" the rest of the real train split
        seen.append((len(images), torch.bincount(labels, minlength=10).tolist(), seed))
        return ReplayGenerator(train.images, train.labels)

    def noise(images, labels, classes, seed):
        gen = ReplayGenerator(train.images, train.labels)
        gen.pool = torch.rand(len(train), 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        return gen

    common = dict(
        n_synth_per_class=40, classifier_config=CHEAP, train=train, test=test, classical_reference=False
    )
    good = gain.augmentation_gain("digits", "cgan", 2, [0, 1], train_fn=replay, **common)
    assert seen == [(20, [2] * 10, 0), (20, [2] * 10, 1)]  # k per class, one generator per seed
    assert good["gain"]["mean"] > 0.05 and good["gain_pp"]["mean"] == pytest.approx(
        100 * good["gain"]["mean"]
    )
    assert len(good["per_seed"]) == 2 and good["gain"]["std"] >= 0
    assert good["gain_classical"] is None and good["gain_classical_pp"] is None
    # 20 real images repeated 20 times next to 400 samples: half of the mixed set
    assert good["real_repeats"] == 20 and good["real_share"] == pytest.approx(0.5)
    assert good["classifier_steps"] == CHEAP.steps_for(800)  # both arms: the same number of steps
    bad = gain.augmentation_gain(
        "digits", "cgan", 2, [0], train_fn=noise, **{**common, "classical_reference": True}
    )
    assert bad["gain"]["mean"] < 0
    row = bad["per_seed"][0]
    assert 0.1 < row["real_only_classical"] <= 1 and bad["gain_classical"]["mean"] < 0
    assert row["gain_classical"] == pytest.approx(row["augmented_classical"] - row["real_only_classical"])
    assert bad["classical"] == "random shifts of up to 10% of the side"  # digits: no flips
    with pytest.raises(ValueError, match="fewer than k=500"):
        gain.augmentation_gain("digits", "cgan", 500, [0], train_fn=replay, **common)


def test_real_repeats_reach_the_share():
    assert gain.real_repeats(100, 10_000, 0.2) == 25  # 2,500 real / 12,500
    assert gain.real_repeats(500, 10_000, 0.2) == 5
    assert gain.real_repeats(5000, 1000, 0.2) == 1  # never fewer than one copy
    assert gain.real_repeats(100, 0) == 1
    assert gain.real_repeats(100, 10_000) == 100  # the default: half real, half synthetic


def test_default_generator_training_is_seeded(monkeypatch):
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    y = torch.arange(10).repeat(2)
    small = {"hidden": 16, "latent_dim": 2}
    classes = [str(i) for i in range(10)]
    recipe = gain.LowDataRecipe(steps=3, lr=1e-3, data_translation=0.125)
    a = gain.train_generator("cvae", x, y, classes, 3, model_config=small, recipe=recipe)
    b = gain.train_generator("cvae", x, y, classes, 3, model_config=small, recipe=recipe)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    fresh = build_model("cvae", {**small, "image_size": 8, "channels": 1, "num_classes": 10})
    assert any(
        not torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    standing = []
    monkeypatch.setattr(CGAN, "standing_stats", lambda self, **kw: standing.append(kw))
    g = gain.train_generator(
        "cgan", x, y, classes, 5, model_config={"g_hidden": 16}, recipe=gain.LowDataRecipe(steps=2, lr=3e-4)
    )
    assert int(g.ema_updates) == 2  # counted in steps, not epochs
    assert standing == [{"seed": 5}]  # the EMA G's BatchNorm statistics, as jobs.train computes them
    with pytest.raises(ValueError, match="unknown model type 'gan'"):
        gain.train_generator("gan", x, y, classes, 0)


def test_low_data_recipes_train_for_thousands_of_steps():
    """The first protocol trained k=10 generators for the full-data epoch count: 100 / 300 steps."""
    assert gain.LOW_DATA_RECIPES["cvae"].steps >= 2000 and gain.LOW_DATA_RECIPES["cgan"].steps >= 3000


# ----------------------------------------------------------------------------- the report and the CLI


def register(home: Path, name: str, kind: str) -> str:
    torch.manual_seed(0)
    cfg = {"image_size": 8, "channels": 1, "num_classes": 10}
    model = build_model(kind, cfg)
    classes = [str(i) for i in range(10)]
    data = {"spec": "digits", "fingerprint": "untrained", "image_shape": [1, 8, 8]}

    def fill(tmp: Path) -> dict:
        save_checkpoint(model, tmp, classes=classes, data=data)
        (tmp / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]))
        return {
            "type": kind,
            "dataset": "digits",
            "data": data,
            "classes": classes,
            "checkpoint_sha256": checkpoint_hash(tmp),
        }

    return Registry(home).register(name, fill).ref


def cheap_cli_with_replayed_generators(home: Path, monkeypatch, train) -> list[int]:
    """Register an untrained "tiny-cgan" in ``home``; ``ev.main`` then evaluates with the CHEAP classifier
    and a generator that replays real ``train`` images. Returns the seeds it is trained for, as they come."""
    register(home, "tiny-cgan", "cgan")
    calls: list[int] = []

    def replay(images, labels, classes, seed):
        calls.append(seed)
        return ReplayGenerator(train.images, train.labels)

    monkeypatch.setattr(
        ev, "evaluate", functools.partial(ev.evaluate, classifier_config=CHEAP, train_fn=replay)
    )
    return calls


@pytest.mark.slow
def test_cli_evaluates_an_untrained_model_and_writes_the_report(tmp_path, monkeypatch, capsys, digits):
    calls = cheap_cli_with_replayed_generators(tmp_path, monkeypatch, digits[0])
    argv = ["--home", str(tmp_path), "--model", "tiny-cgan", "--fast", "--seeds", "3,4", "--workers", "1"]
    rc = ev.main(argv)
    out = capsys.readouterr().out
    assert rc == 0
    assert calls == [3]  # fast: first seed only, k=10 only
    vdir = tmp_path / "models" / "tiny-cgan" / "v1"
    report = json.loads((vdir / "eval.json").read_text())
    assert set(ev.METRICS) <= set(report)
    for name in ev.METRICS:
        assert report[name]["protocol"], name
    assert report["model"] == "tiny-cgan:v1" and report["fast"] is True and report["seeds"] == [3]
    # An untrained generator is far from the data on every axis.
    assert report["fid"]["value"] > 5 * report["fid"]["floor"] > 0 and report["fid"]["pass"] is False
    assert report["label_fidelity"]["value"] < 0.5 and report["cas_ratio"]["value"] < 0.5
    assert report["recall"]["value"] < 0.1 and report["recall"]["reference"] > 0.5
    assert report["cas_svc"]["real"] == pytest.approx(0.969, abs=0.002)  # scikit-learn's published number
    assert report["memorisation"]["pixel"]["threshold"] > 0 and "feature" in report["memorisation"]
    assert (
        report["augmentation_gain"]["k"] == 10 and report["augmentation_gain"]["value"] > 0
    )  # replayed real data
    assert set(report["label_fidelity"]["per_class"]) == {str(i) for i in range(10)}
    assert (vdir / "eval_samples.png").is_file() and "eval_curves.png" in report["figures"]
    md = (vdir / "eval.md").read_text()
    assert "Targets: the digits table (issue 5)" in md
    real = report_module.render_markdown({**report, "targets": "real", "dataset": "fashion-mnist:/x"})
    assert "Targets: the real-data table (issue 17)" in real and "digits table" not in real
    assert "| metric | value | target | met | protocol |" in md and "| cas_ratio |" in md
    for name in ("fid", "cas_ratio", "label_fidelity", "memorisation", "augmentation_gain"):
        assert name in out
    assert not list(vdir.glob(".tmp-*"))


@pytest.mark.slow
def test_cas_trains_on_as_many_samples_as_the_real_split_and_gain_none_skips_the_gain(
    tmp_path, monkeypatch, capsys, digits
):
    calls = cheap_cli_with_replayed_generators(tmp_path, monkeypatch, digits[0])
    argv = [
        "--home",
        str(tmp_path),
        "--model",
        "tiny-cgan",
        "--seeds",
        "0",
        "--per-class",
        "20",
        "--workers",
        "1",
    ]
    assert ev.main([*argv, "--gain-k", "none", "--long-tail", "off"]) == 0
    report = json.loads((tmp_path / "models" / "tiny-cgan" / "v1" / "eval.json").read_text())
    assert calls == []  # no gain, no long tail: no generator trained
    assert report["augmentation_gain"]["value"] is None and report["augmentation_gain"]["by_k"] == {}
    # digits train has 898 images: the CAS set is raised from 20 to ceil(898 / 10) = 90 per class
    assert report["cas"]["samples_per_class"] == 90 and "900 samples (90/class" in report["cas"]["protocol"]
    assert report["label_fidelity"]["protocol"].endswith("10 classes of 20 samples each (seed 0)")
    assert ev.main([*argv, "--gain-k", "none", "--long-tail", "off", "--cas-per-class", "300"]) == 0
    report = json.loads((tmp_path / "models" / "tiny-cgan" / "v1" / "eval.json").read_text())
    assert report["cas"]["samples_per_class"] == 300
    capsys.readouterr()
    assert ev.main([*argv, "--cas-per-class", "1"]) == 2
    assert "cas_per_class must be an integer >= 2 or None (auto), got 1" in capsys.readouterr().err


def test_cli_rejects_unknown_models_and_bad_seeds(tmp_path, capsys):
    register(tmp_path, "tiny-cvae", "cvae")
    assert ev.main(["--home", str(tmp_path), "--model", "nope"]) == 2
    assert "unknown model 'nope'; valid: tiny-cvae" in capsys.readouterr().err
    assert ev.main(["--home", str(tmp_path), "--model", "tiny-cvae", "--seeds", "a,b"]) == 2
    assert "--seeds 'a,b' is not a comma-separated list" in capsys.readouterr().err
    assert ev.main(["--home", str(tmp_path), "--model", "tiny-cvae", "--dataset", "shapes:16"]) == 2
    assert "has 3 channel(s) but the model makes 1" in capsys.readouterr().err
    assert ev.main(["--home", str(tmp_path), "--model", "tiny-cvae", "--gain-k", "10,500"]) == 2
    assert "gain k values [10, 500] must lie in 1..86" in capsys.readouterr().err
    assert ev.main(["--home", str(tmp_path), "--model", "tiny-cvae", "--workers", "0"]) == 2
    assert "--workers '0' is not valid; valid: auto or an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "models" / "tiny-cvae" / "v1" / "eval.json").exists()


@pytest.mark.slow
def test_cli_reads_the_version_from_s3_and_writes_the_report_there(s3_root, monkeypatch, capsys, digits):
    """An ``s3://`` root: the checkpoint is read from the store, eval.* are written back into the
    version folder there, and the classifier cache stays on local disk (``GENAUG_STATE_DIR``)."""
    from jobs.store.location import cache_dir, location

    train, _ = digits
    register(s3_root, "tiny-cgan", "cgan")
    monkeypatch.setattr(
        ev,
        "evaluate",
        functools.partial(
            ev.evaluate,
            classifier_config=CHEAP,
            train_fn=lambda images, labels, classes, seed: ReplayGenerator(train.images, train.labels),
        ),
    )
    rc = ev.main(["--home", s3_root, "--model", "tiny-cgan", "--fast", "--gain-k", "10", "--workers", "1"])
    assert rc == 0 and f"report: {s3_root}/models/tiny-cgan/v1/eval.md" in capsys.readouterr().out
    vdir = location(s3_root) / "models/tiny-cgan/v1"
    report = (vdir / "eval.json").read_json()
    assert report["model"] == "tiny-cgan:v1" and set(ev.METRICS) <= set(report)
    assert (vdir / "eval_samples.png").is_file() and (vdir / "eval.md").is_file()
    assert any(p.suffix == ".pt" for p in (cache_dir(s3_root) / "classifiers").iterdir())


@pytest.mark.slow
def test_ray_workers_give_the_in_process_figures_and_finished_protocols_are_reused(tmp_path):
    """The classifier protocols as Ray tasks give the figures of the in-process run, to the last digit;
    a second run reuses every finished call (its cache), and a changed protocol reuses none."""
    register(tmp_path, "tiny-cgan", "cgan")
    common = dict(fast=True, seeds=[0], gain_k=[5], classifier_config=CHEAP, write=False)
    log: list[str] = []
    first = ev.evaluate(tmp_path, "tiny-cgan", workers=1, log=log.append, **common)
    cached = sorted((tmp_path / "cache" / "eval-calls").glob("*.json"))
    # the real baseline of seed 0 is the cached domain classifier's: two calls
    assert sorted(json.loads(p.read_text())["call"] for p in cached) == ["cas seed 0", "gain k=5 seed 0"]
    assert not any("reused" in line for line in log)

    parallel = ev.evaluate(tmp_path, "tiny-cgan", workers=2, resume=False, **common)

    def figures(r: dict) -> tuple:
        return r["cas"]["per_seed"], r["augmentation_gain"]["details"]["5"]["per_seed"]

    assert figures(parallel) == figures(first)
    assert 0.0 < first["cas"]["value"] < 1.0 and "gain_classical" not in figures(first)[1][0]  # fast

    log.clear()
    again = ev.evaluate(tmp_path, "tiny-cgan", workers=1, log=log.append, **common)
    assert figures(again) == figures(first)
    assert sum("reused" in line for line in log) == 2

    log.clear()
    other = dataclasses.replace(CHEAP, seed=1)
    ev.evaluate(tmp_path, "tiny-cgan", workers=1, log=log.append, **{**common, "classifier_config": other})
    assert not any("reused" in line for line in log)


def test_quick_summary_measures_or_reads_eval_json(tmp_path):
    register(tmp_path, "tiny-cvae", "cvae")
    quick = ev.quick_summary(tmp_path, "tiny-cvae", n_per_class=20, classifier_config=CHEAP)
    assert quick["source"] == "quick" and quick["model"] == "tiny-cvae:v1"
    assert quick["label_fidelity"] < 0.5  # an untrained model
    assert quick["fid"] > 3 * quick["fid_floor"] > 0 and 0 <= quick["near_copies"] <= 1
    lines = ev.summary_table([quick])
    assert "tiny-cvae:v1" in lines[1] and "quick" in lines[1] and "targets" in lines[-1]
    vdir = tmp_path / "models" / "tiny-cvae" / "v1"
    report = {
        "fast": False,
        "fid": {"value": 9.0, "floor": 7.5},
        "label_fidelity": {"value": 0.999},
        "memorisation": {"value": 0.001},
        "cas_ratio": {"value": 0.995},
        "augmentation_gain": {"value": 1.5},
    }
    (vdir / "eval.json").write_text(json.dumps(report))
    read = ev.quick_summary(tmp_path, "tiny-cvae")
    assert read["source"] == "eval.json" and read["fid"] == 9.0 and read["gain_pp"] == 1.5
    (vdir / "eval.json").write_text(json.dumps({**report, "fast": True}))  # a smoke run is not used
    assert ev.quick_summary(tmp_path, "tiny-cvae", 20, classifier_config=CHEAP)["source"] == "quick"
