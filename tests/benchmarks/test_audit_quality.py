"""benchmarks/audit_quality.py on digits with a tiny cVAE: the protocol's figures, its scores, its errors."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.audit_quality import OUTLIER_KINDS, main, off_domain
from jobs.data.spec import load_dataset
from tests.jobs.test_audit import audit_home  # noqa: F401 - the fixture: digits-cvae:v1 (~2 s of training)


def test_off_domain_images_are_in_range_and_seeded():
    test = load_dataset("digits", "test")
    for kind in OUTLIER_KINDS:
        a = off_domain(kind, 9, test, torch.Generator().manual_seed(3))
        b = off_domain(kind, 9, test, torch.Generator().manual_seed(3))
        assert a.shape == (9, 1, 8, 8) and torch.equal(a, b)
        assert float(a.min()) >= -1 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="unknown outlier kind 'blur'; valid: digits, noise, inverted"):
        off_domain("blur", 1, test, torch.Generator())


def test_the_run_reports_every_figure_against_its_baseline(audit_home, tmp_path):  # noqa: F811
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--home", str(audit_home), "--model", "digits-cvae", "--cache", str(tmp_path / "cache")]
    argv += ["--samples", "2", "--seeds", "0,1", "--reference-per-class", "40"]
    assert main([*argv, "--json", str(out), "--markdown", str(md)]) == 0
    r = json.loads(out.read_text())
    p, s = r["protocol"], r["summary"]
    assert p["test_images"] == 899 and p["injected_per_kind"] == 18 and p["flipped"] == 45
    assert p["importance_samples_K"] == 2 and p["reference_per_class"] == [40] * 10
    assert [f["seed"] for f in r["per_seed"]] == [0, 1] and r["timing_s"]["total"] > 0
    for kind in OUTLIER_KINDS:
        for score_name in ("audit", "audit_order", "nll_percentile", "code_percentile", "knn", "raw_nll"):
            assert 0 <= s[f"outlier/{kind}/{score_name}"]["mean"] <= 1
    # uniform noise is nothing like an 8x8 digit: every noise image sits at the 100th percentile, tied
    # with the clean images beyond their class's 40 reference scores; audit.md's order breaks the ties
    at_100 = s["outlier/clean_at_100"]["mean"]
    assert 0 < at_100 < 0.5
    assert s["outlier/noise/audit"]["mean"] == pytest.approx(1 - at_100 / 2)
    assert s["outlier/noise/audit_order"]["mean"] > 0.99 and s["outlier/noise/raw_nll"]["mean"] > 0.99
    assert s["outlier/noise/knn"]["mean"] > 0.8
    # a cVAE trained for a moment already tells most flipped labels apart
    assert s["label/auroc/audit"]["mean"] > 0.8 and s["label/precision/audit"]["mean"] > 0.3
    assert s["label/auroc/classifier"]["mean"] > 0.8
    # -log p(y | x) orders as 1 - p(y | x) does, without the ties at 1.0: same argmax, AUROC as good
    assert s["label/recovered/audit_logp"] == s["label/recovered/audit"]
    assert s["label/auroc/audit_logp"]["mean"] >= s["label/auroc/audit"]["mean"] - 0.01
    assert 0 <= s["label/saturated/audit"]["mean"] < 0.5 and "label/saturated/audit_logp" not in s
    # different flips per seed: the spread is not zero
    assert r["per_seed"][0]["label/auroc/audit"] != r["per_seed"][1]["label/auroc/audit"]
    assert s["denoise/0.2/noisy"]["mean"] > s["denoise/0.4/noisy"]["mean"]
    assert s["denoise/0.4/gain"]["mean"] > 0  # the reconstruction is closer to the clean image than the input
    text = md.read_text()
    assert "| noise | " in text and "| AUROC | " in text and "| 0.4 | " in text and "K = 2" in text


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--flip-share", "0.9"], r"--flip-share 0.9; valid: a share in \(0, 0.5\]"),
        (["--sigmas", "0,0.4"], r"--sigmas \[0.0, 0.4\]; valid: noise stds > 0"),
        (["--knn", "0"], "--knn 0; valid: an integer >= 1"),
    ],
)
def test_bad_flags_are_named(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        main(["--home", str(tmp_path), "--model", "m", *extra])
