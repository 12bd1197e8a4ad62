"""The storage layer on a real S3 protocol: moto's standalone server on 127.0.0.1 (``s3_root`` fixture).

Library level, no Ray: the registry, the shard writer and its commit markers, verification, the
datasets CLI, request validation and the loader, all against ``s3://<bucket>/root``. The whole
train -> register -> generate -> read back round trip through the CLI is in
``tests/cluster/test_s3_roundtrip.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import datasets
from jobs.generate import validate_request
from jobs.store import png, shards
from jobs.store.loader import ShardStream
from jobs.store.location import location, state_dir
from jobs.store.manifest import finalize_dataset, verify_dataset
from jobs.store.registry import Registry
from tests.conftest import register_untrained

CLASSES = ["zero", "one", "two"]
MODEL = "digits-cvae:v2"


def _keys(root: str) -> list[str]:
    """Every object key under ``root`` (relative to it)."""
    loc = location(root)
    return sorted(loc.child(i).relative_to(loc) for i in loc.list(recursive=True) if i.type.name == "File")


def _write_dataset(out: str, shard_counts: list[list[int]], *, finalize: bool = True) -> dict | None:
    infos, n = [], len(shard_counts)
    for k, counts in enumerate(shard_counts):
        rng = np.random.default_rng(k)
        labels = rng.permutation(np.repeat(np.arange(3), counts))
        pngs = png.encode_pngs(rng.integers(0, 256, (len(labels), 8, 8), dtype=np.uint8))
        infos.append(shards.write_shard(out, k, n, pngs, labels, CLASSES, MODEL, 10 + k))
    if not finalize:
        return None
    request = {"job_id": location(out).name, "model": "digits-cvae"}
    return finalize_dataset(out, request, {"model": MODEL}, infos, CLASSES, 1.0)


def test_registry_publishes_versions_with_model_json_last(s3_root):
    assert register_untrained(s3_root, "tiny", "cgan") == "tiny:v1"
    assert register_untrained(s3_root, "tiny", "cvae") == "tiny:v2"
    reg = Registry(s3_root)
    assert reg.names() == ["tiny"] and reg.versions("tiny") == [1, 2]
    mv = reg.resolve("tiny")
    assert mv.uri == f"{s3_root}/models/tiny/v2" and mv.info["type"] == "cvae"
    assert type(mv.load().model).__name__ == "CVAE"
    assert _keys(f"{s3_root}/models/tiny/v1") == sorted(
        ["classes.json", "config.json", "data.json", "model.json", "weights.pt"]
    )
    with pytest.raises(ValueError, match="not on a local disk"):
        _ = mv.path
    # An upload that died before its commit marker is not a version, and its number is not reused.
    (location(s3_root) / "models/tiny/v3/weights.pt").write_bytes(b"partial")
    assert reg.versions("tiny") == [1, 2]
    assert register_untrained(s3_root, "tiny", "cgan") == "tiny:v4"
    assert reg.versions("tiny") == [1, 2, 4]


def test_dataset_commit_markers_verify_and_datasets_cli(s3_root, capsys):
    done = f"{s3_root}/datasets/job-done"
    _write_dataset(done, [[5, 4, 3], [2, 2, 1]])
    _write_dataset(f"{s3_root}/datasets/job-running", [[1, 1, 1]], finalize=False)
    assert _keys(done) == [
        "README.md",
        "_SUCCESS",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "manifest.json",
    ]  # no temporary object was ever left: each object is one atomic upload
    assert verify_dataset(done).ok
    entries = {e["job_id"]: e for e in datasets.list_datasets(s3_root)}
    assert entries["job-done"]["complete"] and entries["job-done"]["rows"] == 17
    assert entries["job-done"]["path"] == done and entries["job-done"]["size_bytes"] > 0
    assert not entries["job-running"]["complete"] and entries["job-running"]["rows"] == 3
    # readers treat a folder without _SUCCESS as not committed
    with pytest.raises(ValueError, match="has no _SUCCESS"):
        ShardStream(f"{s3_root}/datasets/job-running")
    assert datasets.main(["--home", s3_root, "verify", "job-done"]) == 0
    assert datasets.main(["--home", s3_root, "list"]) == 0
    out = capsys.readouterr().out
    assert "ok (2 shards, 17 rows)" in out and "job-running" in out and "INCOMPLETE" in out
    assert datasets.main(["--home", s3_root, "show", "--json", "job-done"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"] == {"zero": 7, "one": 6, "two": 4}

    # damage: a flipped byte, then a deleted shard
    shard0 = location(done) / "data/train-00000-of-00002.parquet"
    data = bytearray(shard0.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard0.write_bytes(bytes(data))
    assert "sha256_mismatch" in verify_dataset(done).kinds()
    (location(done) / "data/train-00001-of-00002.parquet").delete()
    assert {"sha256_mismatch", "missing_shard"} <= verify_dataset(done).kinds()
    assert datasets.main(["--home", s3_root, "verify", "job-done"]) == 1


def test_loader_and_pyarrow_read_an_s3_dataset(s3_root):
    out = f"{s3_root}/datasets/j-read"
    manifest = _write_dataset(out, [[5, 4, 3], [2, 2, 1]])
    stream = ShardStream(out, image_dtype="uint8")
    labels = [int(y) for _, y in stream]
    assert np.bincount(labels).tolist() == [7, 6, 4] and stream.classes == CLASSES
    loc = location(out)
    df = pq.read_table(f"{loc.path}/data", filesystem=loc.fs).to_pandas()
    assert isinstance(df, pd.DataFrame) and df.key.is_unique and len(df) == manifest["totals"]["rows"]


def test_validate_request_confines_outputs_to_the_s3_root(s3_root):
    register_untrained(s3_root, "tiny-cgan", "cgan")
    spec = validate_request({"model": "tiny-cgan", "per_class": 1}, s3_root, job_id="j-1")
    assert spec.output == f"{s3_root}/datasets/j-1"
    spec = validate_request({"model": "tiny-cgan", "per_class": 1, "out": "mine/x"}, s3_root, job_id="j-2")
    assert spec.output == f"{s3_root}/mine/x"
    bucket = s3_root.split("/")[2]
    for out in [f"s3://{bucket}/elsewhere", "../x", "/tmp/x", f"s3://{bucket}/rootx"]:
        with pytest.raises(ValueError, match=f"escapes the storage root {s3_root}"):
            validate_request({"model": "tiny-cgan", "per_class": 1, "out": out}, s3_root, job_id="j-3")
    _write_dataset(f"{s3_root}/datasets/taken", [[1, 1, 1]])
    with pytest.raises(ValueError, match="not empty"):
        validate_request({"model": "tiny-cgan", "per_class": 1, "out": "datasets/taken"}, s3_root, job_id="j")
    assert not any(k.startswith(("datasets/j-", "mine/")) for k in _keys(s3_root))  # nothing written
    assert state_dir(s3_root).parent.name == "genaug-state"  # the local side, from GENAUG_STATE_DIR
