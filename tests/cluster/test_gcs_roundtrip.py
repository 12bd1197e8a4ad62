"""The whole product on a GCS storage root: train -> register -> generate -> datasets verify -> read back.

gcp-storage-emulator (PyPI) runs on 127.0.0.1 (``gcs_server`` fixture); every step reaches it only
through ``STORAGE_EMULATOR_HOST``, the standard variable, which genaug turns into
``GcsFileSystem(endpoint_override=..., scheme="http", anonymous=True)``. Training and generation run
as the CLI does, in subprocesses with their own local Ray (Ray Train's worker uploads checkpoints to
gs://, Serve replicas write the shards there).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster import cli
from jobs.store.location import location, state_dir
from jobs.store.manifest import read_manifest
from jobs.store.registry import Registry
from tests.cluster.test_s3_roundtrip import _files, _generate_wait, _train

pytestmark = pytest.mark.slow


def test_train_register_generate_verify_read_back_on_gcs(gs_root, tmp_path, capsys):
    timings: dict[str, float] = {}
    (cwd := tmp_path / "cwd").mkdir()  # nothing may land on local disk but the queue database
    out = _train(gs_root, "gcs-cvae", cwd, timings)
    assert "registered gcs-cvae:v1" in out
    files = _files(gs_root)
    ckpts = [
        f for f in files if f.startswith("runs/gcs-cvae/") and "/checkpoint_" in f
    ]  # Ray Train's, on gs://
    assert {f.rsplit("/", 1)[1] for f in ckpts} >= {"weights.pt", "train_state.pt", "config.json"}
    version = Registry(gs_root).resolve("gcs-cvae")
    assert version.uri == f"{gs_root}/models/gcs-cvae/v1" and version.info["epochs"] == 1
    assert {"model.json", "weights.pt", "config.json", "samples.png"} <= {
        f.rsplit("/", 1)[1] for f in files if f.startswith("models/gcs-cvae/v1/")
    }

    out, job_id, output = _generate_wait(gs_root, "gcs-cvae", "0=20,3=7", "10", cwd, timings)
    assert f"output: {output}" in out and "rows: 27 in 3 shards" in out

    t0 = time.perf_counter()
    assert cli.main(["datasets", "--home", gs_root, "verify", job_id]) == 0
    assert "ok (3 shards, 27 rows)" in capsys.readouterr().out
    loc = location(output)
    assert loc.fs.type_name == "gcs"
    table = pq.read_table(loc.join("data").path, filesystem=loc.fs)
    assert table.num_rows == 27 and table.column("key").to_pandas().is_unique
    assert np.bincount(table.column("label").to_numpy(), minlength=10).tolist() == [
        20,
        0,
        0,
        7,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
    assert set(table.column("model").to_pylist()) == {"gcs-cvae:v1"}
    manifest = read_manifest(output)
    assert manifest["lineage"]["checkpoint_sha256"] == version.info["checkpoint_sha256"]
    assert sorted(f for f in _files(output) if "/" not in f) == [
        "README.md", "_SUCCESS", "manifest.json"
    ]  # fmt: skip
    timings["verify + read back"] = time.perf_counter() - t0

    assert list(cwd.iterdir()) == []
    assert (state_dir(gs_root) / "queue.sqlite").is_file()
    print("\nGCS round trip timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
