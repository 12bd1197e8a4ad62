"""The service over real HTTP: a real local Ray, Serve on 127.0.0.1, the SQLite queue, Parquet on disk."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.client import ApiClientError, Client
from jobs.store.manifest import verify_dataset
from tests.conftest import running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(ray_local, model_home):
    """The app deployed on a free port with the two tiny models; torn down after the module."""
    with running_service(model_home, max_in_flight=2) as url:
        yield Client(url, token=""), model_home


def post(client: Client, path: str, raw: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """POST raw bytes; return (status, parsed JSON body)."""
    req = urllib.request.Request(
        client.url + path,
        data=raw,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_and_models(service):
    client, _ = service
    assert client.request("GET", "/healthz") == {"status": "ok"}
    ready = client.request("GET", "/readyz")
    assert ready["status"] == "ready" and all(c["ok"] for c in ready["checks"].values())
    models = {m["name"]: m for m in client.request("GET", "/v1/models")["models"]}
    assert set(models) == {"tiny-cgan", "tiny-cvae"}
    assert models["tiny-cgan"]["latest"]["classes"] == [str(i) for i in range(10)]
    detail = client.request("GET", "/v1/models/tiny-cvae")
    assert [v["ref"] for v in detail["versions"]] == ["tiny-cvae:v1"]
    assert detail["versions"][0]["image_shape"] == [1, 8, 8]
    spec = client.request("GET", "/openapi.json")
    assert {"/v1/samples", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/models"} <= set(spec["paths"])


def test_samples_formats_counts_and_determinism(service):
    client, _ = service
    body = client.samples({"model": "tiny-cgan", "counts": {"3": 2, "7": 3}, "seed": 5})
    assert body["model"] == "tiny-cgan:v1" and body["count"] == 5
    assert [s["label"] for s in body["samples"]] == [3, 3, 7, 7, 7]
    assert [s["label_name"] for s in body["samples"]] == ["3", "3", "7", "7", "7"]
    img = Image.open(io.BytesIO(base64.b64decode(body["samples"][0]["png"])))
    assert img.size == (8, 8) and img.mode == "L"

    npz = np.load(
        io.BytesIO(client.samples({"model": "tiny-cvae", "per_class": 4, "seed": 1, "format": "npz"}))
    )
    assert npz["images"].shape == (40, 8, 8, 1) and npz["images"].dtype == np.uint8
    assert np.array_equal(npz["labels"], np.repeat(np.arange(10), 4))
    again = np.load(
        io.BytesIO(client.samples({"model": "tiny-cvae", "per_class": 4, "seed": 1, "format": "npz"}))
    )
    other = np.load(
        io.BytesIO(client.samples({"model": "tiny-cvae", "per_class": 4, "seed": 2, "format": "npz"}))
    )
    assert np.array_equal(npz["images"], again["images"])
    assert not np.array_equal(npz["images"], other["images"])

    grid = Image.open(io.BytesIO(client.samples({"model": "tiny-cgan", "per_class": 3, "format": "png"})))
    assert grid.size == (3 * 34, 10 * 34)  # 8 px upscaled to 32, 1 px border each side; a row per class


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"model": "tiny-cgan", "per_class": 0}, 400, "per_class"),
        ({"model": "tiny-cgan", "per_class": -3}, 400, "per_class"),
        ({"model": "tiny-cgan", "counts": {"eleven": 2}}, 400, "unknown class 'eleven'"),
        ({"model": "tiny-cgan", "counts": {"3": -1}}, 400, "positive"),
        ({"model": "nope", "per_class": 1}, 404, "unknown model 'nope'"),
        ({"model": "tiny-cgan:v9", "per_class": 1}, 404, "valid: v1"),
        ({"model": "tiny-cgan", "per_class": 500}, 413, "/v1/jobs"),
        ({"model": "tiny-cgan", "per_class": "many"}, 422, "per_class"),
        ({"model": "tiny-cgan", "per_class": 1, "format": "gif"}, 422, "format"),
        ({"model": "tiny-cgan", "per_class": 1, "colour": "red"}, 422, "colour"),
        ({"per_class": 1}, 422, "model"),
    ],
)
def test_samples_bad_input(service, body, status, needle):
    client, _ = service
    code, reply = post(client, "/v1/samples", json.dumps(body).encode())
    assert code == status, reply
    assert set(reply) == {"error", "detail"}
    assert needle in json.dumps(reply)


def test_malformed_json_is_400(service):
    client, _ = service
    code, reply = post(client, "/v1/samples", b'{"model": "tiny-cgan", per_class: }')
    assert code == 400 and reply["error"] == "malformed JSON"


def test_concurrent_samples_are_batched(service):
    client, _ = service
    before = client.request("GET", "/v1/stats")["generator"]["batches"]

    def one(k: int) -> list[int]:
        body = client.samples({"model": "tiny-cgan", "counts": {str(k % 10): 2}, "seed": k})
        return [s["label"] for s in body["samples"]]

    with cf.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert results == [[k % 10] * 2 for k in range(32)]
    stats = client.request("GET", "/v1/stats")["generator"]
    assert stats["max_batch_size"] > 1, stats
    assert stats["batches"] - before < 32  # fewer forward passes than requests


def test_lone_request_answered_by_ingress_with_the_generators_bytes(service):
    """A lone small request skips the deployment hop; the same request made by the generator (sent
    among others) gives the same bytes."""
    client, _ = service
    body = {"model": "tiny-cvae", "per_class": 3, "seed": 11, "format": "npz"}

    def answered_by() -> dict[str, int]:
        return client.request("GET", "/v1/stats")["ingress"]["inline_answered_by"]

    before = answered_by()
    alone = client.samples(body)
    after = answered_by()
    assert after == {"ingress": before["ingress"] + 1, "generator": before["generator"]}
    assert np.load(io.BytesIO(alone))["images"].shape == (30, 8, 8, 1)
    for _ in range(5):  # 16 at once: all but the first of them find others in flight
        with cf.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda _: client.samples(body), range(16)))
        assert all(t == alone for t in together)
        if answered_by()["generator"] > after["generator"]:
            break
    else:
        pytest.fail(f"no request went to the generator: {answered_by()}")


def wait_job(client: Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.job(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(job)


def wait_shards(client: Client, job_id: str, n: int, timeout: float = 60) -> None:
    """Wait until the job has committed at least ``n`` shards (mid-job, for fault injection)."""
    deadline = time.time() + timeout
    while client.job(job_id)["shards_done"] < n:
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} committed fewer than {n} shards in {timeout} s")
        time.sleep(0.05)


def read_dataset(output: str):
    return pq.read_table(Path(output) / "data").to_pandas()


def test_job_exact_uneven_counts_and_manifest(service):
    client, home = service
    job = client.submit_job(
        {"model": "tiny-cgan", "counts": {"0": 1, "3": 10001, "9": 250}, "shard_rows": 1000, "seed": 3}
    )
    assert job["status"] == "queued" and job["status_url"].endswith(f"/v1/jobs/{job['id']}")
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["output"] == str(home / "datasets" / job["id"])
    df = read_dataset(done["output"])
    assert df.label.value_counts().to_dict() == {3: 10001, 9: 250, 0: 1}
    assert df.key.is_unique and len(df) == 10252
    out = Path(done["output"])
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"train-{i:05d}-of-00011.parquet" for i in range(11)
    ]
    assert (out / "_SUCCESS").exists() and (out / "README.md").exists()
    manifest = client.manifest(job["id"])
    assert manifest["totals"]["rows"] == 10252 and len(manifest["shards"]) == 11
    assert manifest["lineage"]["model"] == "tiny-cgan:v1"
    assert verify_dataset(done["output"]).ok


def test_same_seed_same_bytes_different_seed_different(service):
    client, _ = service
    jobs = [
        client.submit_job({"model": "tiny-cvae", "per_class": 30, "shard_rows": 100, "seed": s})
        for s in (7, 7, 8)
    ]
    outs = [wait_job(client, j["id"]) for j in jobs]
    assert all(o["status"] == "succeeded" for o in outs)
    a, b, c = (read_dataset(o["output"]) for o in outs)
    assert list(a.sha256) == list(b.sha256)
    assert list(a.sha256) != list(c.sha256)


@pytest.mark.parametrize("out", ["../escape", "/tmp/elsewhere", "datasets/../../x"])
def test_job_output_escaping_root_rejected(service, out):
    client, home = service
    before = len(client.jobs())
    with pytest.raises(ApiClientError) as e:
        client.submit_job({"model": "tiny-cgan", "per_class": 1, "out": out})
    assert e.value.status == 400 and "escapes the storage root" in str(e.value)
    assert len(client.jobs()) == before
    assert not (home.parent / "escape").exists()


def test_job_output_symlink_out_rejected(service, tmp_path):
    client, home = service
    (home / "link-out").symlink_to(tmp_path)
    with pytest.raises(ApiClientError) as e:
        client.submit_job({"model": "tiny-cgan", "per_class": 1, "out": "link-out/ds"})
    assert e.value.status == 400
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"model": "tiny-cgan", "per_class": 0}, "per_class"),
        ({"model": "tiny-cgan", "counts": {"12": 5}}, "unknown class '12'"),
        ({"model": "tiny-cgan", "per_class": 5, "shard_rows": 0}, "shard_rows"),
        ({"model": "tiny-cgan", "per_class": 2_000_000}, "maximum"),
    ],
)
def test_job_bad_requests_write_nothing(service, body, needle):
    client, home = service
    before = sorted(p.name for p in (home / "datasets").iterdir()) if (home / "datasets").exists() else []
    n_jobs = len(client.jobs())
    with pytest.raises(ApiClientError) as e:
        client.submit_job(body)
    assert e.value.status == 400 and needle in str(e.value)
    after = sorted(p.name for p in (home / "datasets").iterdir()) if (home / "datasets").exists() else []
    assert after == before and len(client.jobs()) == n_jobs


def test_unknown_job_404_and_idempotency(service):
    client, _ = service
    with pytest.raises(ApiClientError) as e:
        client.job("j-doesnotexist")
    assert e.value.status == 404
    a = client.submit_job({"model": "tiny-cgan", "per_class": 1}, idempotency_key="k-123")
    b = client.submit_job({"model": "tiny-cgan", "per_class": 1}, idempotency_key="k-123")
    assert a["id"] == b["id"] and b.get("existing") is True
    assert wait_job(client, a["id"])["status"] == "succeeded"
    with pytest.raises(ApiClientError) as e:
        client.cancel(a["id"])
    assert e.value.status == 409


def test_cancel_mid_job_leaves_only_committed_shards(service):
    client, _ = service
    job = client.submit_job({"model": "tiny-cgan", "per_class": 3000, "shard_rows": 500, "seed": 1})
    wait_shards(client, job["id"], 2)
    client.cancel(job["id"])
    time.sleep(3)  # in-flight shards finish and are removed
    final = client.job(job["id"])
    assert final["status"] == "cancelled"
    data = Path(final["output"]) / "data"
    names = sorted(p.name for p in data.iterdir())
    assert not any(n.startswith(".") for n in names)  # no temporary files
    assert len(names) == final["shards_done"] < 60
    assert not (Path(final["output"]) / "_SUCCESS").exists()


def test_killed_generator_replica_job_still_exact(service):
    client, _ = service
    job = client.submit_job({"model": "tiny-cgan", "per_class": 2000, "shard_rows": 500, "seed": 9})
    wait_shards(client, job["id"], 3)
    pid = client.request("GET", "/v1/stats")["generator"]["pid"]
    os.kill(pid, signal.SIGKILL)
    done = wait_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    df = read_dataset(done["output"])
    assert df.label.value_counts().to_dict() == {k: 2000 for k in range(10)}
    assert df.key.is_unique
    assert not [p for p in Path(done["output"]).rglob(".tmp-*")]
    assert verify_dataset(done["output"]).ok


def test_killed_queue_owner_comes_back_and_resumes(service):
    import ray

    from cluster.dispatcher import NAMESPACE, QUEUE_ACTOR

    client, _ = service
    job = client.submit_job({"model": "tiny-cvae", "per_class": 2000, "shard_rows": 500, "seed": 4})
    wait_shards(client, job["id"], 2)
    ray.kill(ray.get_actor(QUEUE_ACTOR, namespace=NAMESPACE), no_restart=False)
    done = wait_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2  # claimed again after the restart
    df = read_dataset(done["output"])
    assert df.label.value_counts().to_dict() == {k: 2000 for k in range(10)}
    assert df.key.is_unique


def test_ray_data_reads_output(service):
    import ray.data

    client, _ = service
    job = client.submit_job({"model": "tiny-cgan", "per_class": 5, "shard_rows": 20})
    done = wait_job(client, job["id"])
    ds = ray.data.read_parquet(str(Path(done["output"]) / "data"))
    rows = ds.take_all()
    assert len(rows) == 50
    assert sorted(r["label"] for r in rows) == sorted(list(range(10)) * 5)
    assert Image.open(io.BytesIO(rows[0]["image"]["bytes"])).size == (8, 8)
