"""The audit job (python -m jobs.audit / genaug audit): one row per image, its scores, grids, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from cluster.cli import main as cli_main
from jobs.audit import main
from jobs.auditor.shards import write_audit_shard
from jobs.auditor.spec import REFERENCE_FILE, validate_audit
from jobs.data.spec import load_dataset
from jobs.store import shards
from jobs.store.registry import Registry, register_model
from models import CVAE, CVAEConfig
from models.audit import OutlierReference
from tests.conftest import register_untrained

N_TRAIN = 898  # digits' train split


@pytest.fixture(scope="module")
def audit_home(tmp_path_factory) -> Path:
    """A root with digits-cvae:v1 (an MLP cVAE trained for 300 steps on digits, ~2 s) and tiny-cgan:v1."""
    root = tmp_path_factory.mktemp("audit_home")
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(image_size=8, num_classes=10, latent_dim=8, hidden=128, embed_dim=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(300):
        idx = torch.randint(0, len(ds), (64,), generator=g)
        loss = model(ds.images[idx], ds.labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    data = {"spec": "digits", "fingerprint": ds.fingerprint, "image_shape": [1, 8, 8]}
    register_model(root, "digits-cvae", model.eval(), list(ds.classes), data, epochs=1)
    register_untrained(root, "tiny-cgan", "cgan")
    return root


def _argv(home: Path, *extra: str) -> list[str]:
    return ["--home", str(home), "--model", "digits-cvae", "--dataset", "digits", "--samples", "4", *extra]


@pytest.mark.slow
def test_audit_writes_one_scored_row_per_image_and_the_report(ray_local, audit_home):
    argv = _argv(audit_home, "--shard-rows", "400", "--top", "5", "--out", "audits/full")
    assert main(argv) == 0
    out = audit_home / "audits" / "full"
    df = pd.read_parquet(out / "data")
    ds = load_dataset("digits")
    assert len(df) == N_TRAIN and sorted(df["index"]) == list(range(N_TRAIN))
    df = df.sort_values("index")
    assert np.array_equal(df["label"], ds.labels.numpy())
    probs = df[[f"p_{c}" for c in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(df["label_error"], 1 - probs[np.arange(N_TRAIN), df["label"]], atol=1e-9)
    assert np.array_equal(df["suggested_label"], probs.argmax(1))
    assert np.isfinite(df["nll"]).all() and df["outlier_percentile"].between(0, 100).all()
    # a cVAE trained for a moment already reads most digits as their own class
    assert (df["suggested_label"] == df["label"]).mean() > 0.8
    # the training split calibrates the percentiles: they spread over 0..100 (median near 50)
    assert 35 < df["outlier_percentile"].median() < 65
    assert 35 < df["code_percentile"].median() < 65 and np.isfinite(df["code_nll"]).all()
    np.testing.assert_array_equal(
        df["outlier_score"], np.maximum(df["outlier_percentile"], df["code_percentile"])
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "audit" and manifest["totals"]["rows"] == N_TRAIN
    assert manifest["totals"]["shards"] == 3 and manifest["audit"]["importance_samples_K"] == 4
    assert (out / "_SUCCESS").read_text().strip() == hashlib.sha256(
        (out / "manifest.json").read_bytes()
    ).hexdigest()
    for grid in ("outliers.png", "label_errors.png"):
        assert (out / grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / grid).stat().st_size > 5000
    report = (out / "audit.md").read_text()
    assert "K = 4" in report and "## Top 5 suspected label errors" in report
    worst = df.sort_values(["label_error", "margin"], ascending=False).iloc[0]
    assert f"| {worst['index']} | {worst['label_name']} | {worst['suggested_name']} |" in report
    assert "tags:\n- genaug\n- audit" in (out / "README.md").read_text()
    counts = duckdb.sql(
        "SELECT count(*), count(DISTINCT index), max(abs(p_0 + p_1 + p_2 + p_3 + p_4 + p_5 + p_6 + p_7 "
        f"+ p_8 + p_9 - 1)) FROM '{out}/data/*.parquet'"
    ).fetchall()[0]
    assert counts[0] == counts[1] == N_TRAIN and counts[2] < 1e-9


@pytest.mark.slow
def test_audit_resumes_a_partial_run_with_exactly_one_row_per_image(ray_local, audit_home, capsys):
    """A run killed after shard 1 was committed (and mid-write of another) resumes without redoing it."""
    req = {"model": "digits-cvae", "dataset": "digits", "samples": 4, "shard_rows": 300, "out": "audits/part"}
    spec, ds = validate_audit(req, str(audit_home), job_id="j-part")
    model = Registry(audit_home).resolve(spec.model).load().model
    rows = spec.shard_range(1)
    ref = OutlierReference.fit(
        torch.zeros(10), torch.arange(10), 10, spec.config
    )  # stands in for the real one
    out = audit_home / "audits" / "part"
    (out / "data").mkdir(parents=True)
    (out / REFERENCE_FILE).write_text(json.dumps(ref.to_dict()))
    write_audit_shard(
        model, spec, 1, ds.images[rows.start : rows.stop], ds.labels[rows.start : rows.stop], ref
    )
    (out / "data" / ".tmp-train-00002-of-00003.parquet.x").write_bytes(b"half a shard")
    kept = (out / shards.shard_path(1, 3)).read_bytes()

    argv = _argv(audit_home, "--shard-rows", "300", "--out", "audits/part", "--job-id", "j-part")
    assert main(argv) == 0
    assert (out / shards.shard_path(1, 3)).read_bytes() == kept  # not redone
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        Path(shards.shard_path(k, 3)).name for k in range(3)
    ]
    df = pd.read_parquet(out / "data")
    assert len(df) == N_TRAIN and df["index"].is_unique and set(df["index"]) == set(range(N_TRAIN))
    assert (out / "_SUCCESS").is_file()
    # resuming with other scoring flags would mix two audits in one folder: refused
    assert main([*argv, "--samples", "8"]) == 2
    assert "was started with samples=4; valid: resume with the same flags" in capsys.readouterr().err
    # a completed audit is refused as an output without --job-id, and nothing changes
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(_argv(audit_home, "--out", "audits/part")) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_cgan_is_refused_and_nothing_is_written(audit_home, capsys):
    before = _tree(audit_home / "audits")
    assert main(["--home", str(audit_home), "--model", "tiny-cgan", "--dataset", "digits"]) == 2
    assert "audit needs a cvae model; tiny-cgan:v1 is a cgan" in capsys.readouterr().err
    assert cli_main(["audit", "--home", str(audit_home), "--model", "tiny-cgan", "--dataset", "digits"]) == 2
    assert "audit needs a cvae model" in capsys.readouterr().err
    assert _tree(audit_home / "audits") == before


def _tree(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "shapes:8"], "has 3 channel"),
        (["--top", "0"], "top 0 is out of range; valid: an integer in 1..10000"),
        (["--samples", "0"], "samples"),
        (["--out", "../elsewhere"], "escapes the storage root"),
        (["--model", "digits-cvae:v9"], "v9"),
    ],
)
def test_bad_requests_are_named_and_write_nothing(audit_home, capsys, extra, message):
    before = _tree(audit_home / "audits")
    argv = ["--home", str(audit_home), "--model", "digits-cvae", "--dataset", "digits", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _tree(audit_home / "audits") == before
