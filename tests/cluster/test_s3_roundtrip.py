"""The whole product on an S3 storage root: train -> register -> generate -> read back -> verify.

moto's standalone S3 server runs on 127.0.0.1 (``s3_server`` fixture); every step reaches it only
through the standard AWS variables. Training and generation run as the CLI does, in subprocesses
with their own local Ray (its workers inherit those variables): ``genaug train`` (Ray Train
checkpoints straight to S3 through RunConfig(storage_filesystem=S3FileSystem)), ``genaug generate
--wait`` (the embedded service: queue owner, Serve generator replicas writing shards to S3) and
``python -m jobs.generate`` (standalone Ray tasks, resumed after a lost shard). Reading back and
``genaug datasets`` run in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster import cli
from jobs.store import shards
from jobs.store.loader import ShardStream
from jobs.store.location import location, state_dir
from jobs.store.manifest import read_manifest
from jobs.store.registry import Registry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], cwd: Path, timings: dict, label: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # os.environ holds the s3_root fixture's variables
    for key in ("GENAUG_HOME", "GENAUG_URL", "RAY_ADDRESS"):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )
    timings[label] = time.perf_counter() - t0
    assert proc.returncode == 0, f"{label} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc.stdout


def _train(root: str, name: str, cwd: Path, timings: dict) -> str:
    """``genaug train`` (cVAE on digits, 1 worker, 1 epoch, a checkpoint) into ``root``; its stdout."""
    argv = ["cluster.cli", "train", "--home", root, "--model", "cvae", "--dataset", "digits", "--name", name,
            "--workers", "1", "--epochs", "1", "--checkpoint-every", "1"]  # fmt: skip
    return _run(argv, cwd, timings, "train")


def _generate_wait(root: str, model: str, counts: str, shard_rows: str, cwd: Path, timings: dict):
    """``genaug generate --wait`` through the embedded service; its stdout, the job id and its output URI."""
    argv = ["cluster.cli", "generate", "--home", root, "--model", model, "--counts", counts,
            "--shard-rows", shard_rows, "--seed", "5", "--wait"]  # fmt: skip
    out = _run(argv, cwd, timings, "generate (service)")
    job_id = out.split()[0]
    return out, job_id, f"{root}/datasets/{job_id}"


def _files(root: str) -> list[str]:
    loc = location(root)
    return [loc.child(i).relative_to(loc) for i in loc.list(recursive=True) if i.type.name == "File"]


def test_train_register_generate_read_back_verify_on_s3(s3_root, tmp_path, capsys):
    cwd = tmp_path / "cwd"  # nothing may land on local disk but the queue database
    cwd.mkdir()
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. train (1 worker, 1 epoch) and register
    out = _train(s3_root, "s3-cvae", cwd, timings)
    assert "registered s3-cvae:v1" in out and f"samples: {s3_root}/models/s3-cvae/v1/samples.png" in out
    files = _files(s3_root)
    # Ray Train's checkpoint, written by the worker straight to S3, next to Ray's own run files
    ckpts = [f for f in files if f.startswith("runs/s3-cvae/") and "/checkpoint_" in f]
    assert {f.rsplit("/", 1)[1] for f in ckpts} >= {"weights.pt", "train_state.pt", "config.json"}
    assert "runs/s3-cvae/latest.json" in files
    assert any(f.endswith("/checkpoint_manager_snapshot.json") for f in files)
    version = Registry(s3_root).resolve("s3-cvae")
    assert version.uri == f"{s3_root}/models/s3-cvae/v1" and version.info["epochs"] == 1
    assert {"model.json", "weights.pt", "samples.png", "history.json"} <= {
        f.rsplit("/", 1)[1] for f in files if f.startswith("models/s3-cvae/v1/")
    }
    assert cli.main(["models", "--home", s3_root]) == 0 and "s3-cvae:v1" in capsys.readouterr().out

    # 2. generate through the service (embedded: queue owner + Serve replicas write to S3)
    out, job_id, output = _generate_wait(s3_root, "s3-cvae", "0=120,3=45,9=7", "50", cwd, timings)
    assert f"output: {output}" in out and "rows: 172 in 4 shards" in out

    # 3. generate as a standalone Ray job; lose a shard and the marker, rerun: the same bytes come back
    argv = ["jobs.generate", "--home", s3_root, "--model", "s3-cvae:v1", "--per-class", "3",
            "--shard-rows", "10", "--job-id", "j-s3-tasks"]  # fmt: skip
    _run(argv, cwd, timings, "generate (Ray tasks)")
    tasks = location(f"{s3_root}/datasets/j-s3-tasks")
    first = {f: (tasks / f).read_bytes() for f in _files(tasks.uri) if f.startswith("data/")}
    assert len(first) == 3
    (tasks / "data/train-00001-of-00003.parquet").delete()
    (tasks / shards.SUCCESS).delete()
    _run(argv, cwd, timings, "generate (Ray tasks, resumed)")
    assert {f: (tasks / f).read_bytes() for f in _files(tasks.uri) if f.startswith("data/")} == first

    # 4. read back: the streaming loader, pyarrow/pandas, the manifest
    t0 = time.perf_counter()
    stream = ShardStream(output, image_dtype="uint8")
    rows = list(stream)
    assert len(rows) == 172 and rows[0][0].shape == (1, 8, 8)
    assert np.bincount([int(y) for _, y in rows], minlength=10).tolist() == [120, 0, 0, 45, 0, 0, 0, 0, 0, 7]
    loc = location(output)
    df = pq.read_table(loc.join("data").path, filesystem=loc.fs).to_pandas()
    assert df.key.is_unique and set(df.model) == {"s3-cvae:v1"}
    assert df.label_name.value_counts().to_dict() == {"0": 120, "3": 45, "9": 7}
    manifest = read_manifest(output)
    assert manifest["lineage"]["model_path"] == version.uri
    assert manifest["lineage"]["checkpoint_sha256"] == version.info["checkpoint_sha256"]
    timings["read back"] = time.perf_counter() - t0

    # 5. genaug datasets list / verify on the S3 root
    t0 = time.perf_counter()
    assert cli.main(["datasets", "--home", s3_root, "verify", job_id]) == 0
    assert cli.main(["datasets", "--home", s3_root, "verify", "j-s3-tasks"]) == 0
    assert cli.main(["datasets", "--home", s3_root, "list"]) == 0
    listing = capsys.readouterr().out
    assert "ok (4 shards, 172 rows)" in listing and "ok (3 shards, 30 rows)" in listing
    assert listing.count("complete") == 2 and output in listing
    timings["verify + list"] = time.perf_counter() - t0

    # Only the queue database (and Ray's own session files under /tmp/ray) stayed local.
    assert list(cwd.iterdir()) == []
    assert (state_dir(s3_root) / "queue.sqlite").is_file()
    total = time.perf_counter() - started
    print("\nS3 round trip timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"S3 round trip total: {total:.1f} s")
