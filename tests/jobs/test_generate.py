"""Request validation, deterministic shards, and the standalone Ray-job path (python -m jobs.generate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.generate import JobSpec, ShardTask, lineage, main, parse_counts, validate_request
from jobs.store import shards
from jobs.store.location import write_json_atomic
from jobs.store.manifest import render_card, verify_dataset
from jobs.store.registry import Registry
from models.checkpoint import load_checkpoint
from models.sampling import generate_many_uint8, generate_uint8
from tests.conftest import register_untrained

CLASSES = ("zero", "one", "two")


@pytest.mark.parametrize(
    "per_class, counts, expected",
    [
        (4, None, (4, 4, 4)),
        (None, {"0": 2, "two": 5}, (2, 0, 5)),
        (None, {1: 3}, (0, 3, 0)),
        (None, "one=7,2=1", (0, 7, 1)),
    ],
)
def test_parse_counts(per_class, counts, expected):
    assert parse_counts(per_class, counts, CLASSES) == expected


@pytest.mark.parametrize(
    "per_class, counts, needle",
    [
        (0, None, "per_class must be a positive integer"),
        (-2, None, "per_class must be a positive integer"),
        (None, {"three": 1}, "unknown class 'three'; valid: 0..2 or zero, one, two"),
        (None, {"5": 1}, "unknown class '5'"),
        (None, {"1": 0}, "positive"),
        (None, {"one": 1, "1": 2}, "given twice"),
        (None, "one", "valid form"),
        (None, {}, "non-empty"),
        (3, {"0": 1}, "exactly one"),
        (None, None, "exactly one"),
    ],
)
def test_parse_counts_rejects(per_class, counts, needle):
    with pytest.raises(ValueError, match=needle):
        parse_counts(per_class, counts, CLASSES)


def test_validate_request_writes_nothing_on_bad_input(model_home, tmp_path):
    before = sorted(p.relative_to(model_home) for p in model_home.rglob("*"))
    bad = [
        ({"model": "tiny-cgan", "per_class": 1, "out": "../x"}, "escapes the storage root"),
        ({"model": "tiny-cgan", "per_class": 1, "out": str(tmp_path)}, "escapes the storage root"),
        ({"model": "tiny-cgan", "per_class": 1, "shard_rows": 100_001}, "shard_rows 100001 is out of range"),
        ({"model": "tiny-cgan", "per_class": 1_000_001}, "above the maximum"),
        ({"model": "tiny-cgan", "per_class": 20_000, "shard_rows": 1}, "shards is above the maximum"),
        ({"model": "tiny-cgan:v3", "per_class": 1}, "valid: v1"),
        ({"model": "tiny-cgan", "per_class": 1, "temperature": -1}, "temperature"),
        ({"model": "tiny-cgan", "per_class": 1, "seed": -5}, "seed"),
        ({"model": "tiny-cgan", "per_class": 1, "colour": 1}, "unknown request field"),
    ]
    for req, needle in bad:
        with pytest.raises(ValueError, match=needle):
            validate_request(req, model_home, job_id="j-test")
    assert sorted(p.relative_to(model_home) for p in model_home.rglob("*")) == before


def test_shard_rows_depend_only_on_version_seed_and_index(model_home, tmp_path):
    spec = validate_request(
        {"model": "tiny-cvae", "counts": {"3": 250, "9": 31}, "shard_rows": 100, "seed": 5},
        model_home,
        job_id="j-a",
    )
    model = load_checkpoint(Registry(model_home).resolve(spec.model).path).model
    assert spec.num_shards == 3 and spec.total_rows == 281
    for k in range(3):
        t = ShardTask.of(spec, "j-a", k)
        assert ShardTask.of(JobSpec.from_dict(spec.to_dict()), "j-b", k).seed == t.seed
        labels = shards.shard_labels(np.asarray(t.class_counts), t.seed)
        a = generate_uint8(model, labels, t.seed)
        b = generate_many_uint8(model, [labels[:7], labels], [123, t.seed])[1]  # batched with another request
        assert np.array_equal(a, b)
    other = ShardTask.of(
        validate_request(
            {"model": "tiny-cvae", "counts": {"3": 250, "9": 31}, "shard_rows": 100, "seed": 6},
            model_home,
            job_id="j-c",
        ),
        "j-c",
        0,
    )
    assert other.seed != ShardTask.of(spec, "j-a", 0).seed


@pytest.mark.slow
def test_standalone_ray_job_exact_and_resumable(ray_local, model_home, capsys):
    argv = [
        "--home",
        str(model_home),
        "--model",
        "tiny-cgan",
        "--counts",
        "0=1,3=1001,9=250",
        "--shard-rows",
        "100",
        "--job-id",
        "j-standalone1",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    out = Path(model_home) / "datasets" / "j-standalone1"
    df = pd.read_parquet(out / "data")
    assert df.label.value_counts().to_dict() == {3: 1001, 9: 250, 0: 1}
    assert df.key.is_unique and verify_dataset(out).ok
    first = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    # lose a shard and the success marker, as after a crash; the rerun regenerates exactly that shard
    (out / "data" / "train-00004-of-00013.parquet").unlink()
    (out / "_SUCCESS").unlink()
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == first
    assert verify_dataset(out).ok
    assert "13/13" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_entry_point_runs_on_ray(model_home):
    """`python -m jobs.generate` (what `ray job submit` runs): functions must pickle by reference."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GENAUG_URL")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.generate",
            "--home",
            str(model_home),
            "--model",
            "tiny-cvae",
            "--per-class",
            "3",
            "--job-id",
            "j-dash-m",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = pd.read_parquet(Path(model_home) / "datasets" / "j-dash-m" / "data")
    assert df.label.value_counts().to_dict() == {k: 3 for k in range(10)}


def test_a_dataset_card_says_what_the_evaluated_model_is_worth(tmp_path):
    """lineage() carries the version's eval.json figures; the dataset card shows them with protocols."""
    register_untrained(tmp_path, "carded", "cvae")
    mv = Registry(tmp_path).resolve("carded")
    assert lineage(mv)["evaluation"] is None
    assert "Not evaluated yet" in render_card({**_card_manifest(), "lineage": lineage(mv)})
    report = {
        "dataset": "fashion-mnist:/d",
        "seeds": [0, 1, 2],
        "fast": False,
        "classifier": {"test_accuracy": 0.91},
        "label_fidelity": {"value": 0.93},
        "cas_ratio": {"value": 0.97},
        "fid": {"value": 4.0, "floor": 1.0},
        "memorisation": {"value": 0.001},
        "gain_over_classical": {
            "by_k": {"10": {"mean": 4.5, "std": 1.0}, "50": {"mean": 2.25, "std": 0.5}, "200": None},
            "protocol": "both arms with classical augmentation",
        },
        "augmentation_gain": {"by_k": {"10": {"mean": 9.0, "std": 2.0}}},
        "long_tail_gain": {
            "value": 6.0,
            "std": 1.5,
            "gain_mixed_pp": {"mean": -0.5, "std": 0.25},
            "ceiling_pp": {"mean": 3.25, "std": 0.5},
            "protocol": "balanced accuracy",
        },
    }
    write_json_atomic(mv.location / "eval.json", report)
    ev = lineage(mv)["evaluation"]
    assert ev["gain_over_classical_by_k"] == {"10": "+4.50 ± 1.00 pp", "50": "+2.25 ± 0.50 pp", "200": None}
    assert ev["long_tail_gain"] == "+6.00 ± 1.50 pp" and ev["classifier_test_accuracy"] == 0.91
    assert ev["long_tail_gain_half_real"] == "-0.50 ± 0.25 pp"
    assert ev["long_tail_ceiling"] == "+3.25 ± 0.50 pp"
    card = render_card({**_card_manifest(), "lineage": lineage(mv)})
    assert "## How much the model's samples help a classifier" in card
    assert "fashion-mnist:/d test, seeds [0, 1, 2]" in card
    assert "- **gain_over_classical_by_k**: k=10: +4.50 ± 1.00 pp, k=50: +2.25 ± 0.50 pp, k=200: None" in card
    assert "- *long_tail_gain*: balanced accuracy" in card
    assert "evaluation" not in card.split("## Lineage")[1].split("## How much")[0]  # not a lineage bullet


def _card_manifest() -> dict:
    totals = {"rows": 2, "shards": 1, "bytes": 10, "uncompressed_bytes": 20, "per_class": {"0": 2}}
    return {"classes": ["0"], "totals": totals, "created_at": "now", "duration_s": 1.0, "request": {}}
