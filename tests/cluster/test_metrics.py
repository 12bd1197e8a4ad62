"""genaug's metrics read back from Ray's Prometheus endpoint, and ``genaug status`` against a live service.

One job and a known set of sample requests on a model used nowhere else (every metric is tagged with
the model, so other tests sharing this Ray cannot disturb the figures), then the scraped values must
match what happened: rows, shards, batch sizes, request sizes, model loads, jobs by status.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from pathlib import Path

import pytest

from cluster import metrics
from cluster.client import Client
from tests.conftest import register_untrained

pytestmark = pytest.mark.slow

MODEL = "metrics-cgan:v1"
SEQUENTIAL_SIZES = [10, 2, 5, 30, 1]  # images per request, one request at a time
CONCURRENT = 6  # then this many 1-image requests at once


@pytest.fixture(scope="module")
def metered(ray_local, tmp_path_factory):
    from cluster.service import deploy, free_port, undeploy

    home = tmp_path_factory.mktemp("metrics_home")
    register_untrained(home, "metrics-cgan", "cgan", seed=3)
    url = deploy(str(home), "127.0.0.1", free_port(), {"max_replicas": 1, "max_in_flight": 2})
    yield Client(url, token=""), home
    undeploy()


def _buckets(samples, name: str, **labels) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` by upper bound (summed over series)."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket" and all(lab.get(k) == x for k, x in labels.items()):
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def _exact_sum(cumulative: dict[float, float]) -> float:
    """Sum of observations from integer-wide buckets (bound k holds only the value k)."""
    total, below = 0.0, 0.0
    for le in sorted(cumulative):
        if le == float("inf"):
            assert cumulative[le] == below, "observations above the exact range"
            break
        total += le * (cumulative[le] - below)
        below = cumulative[le]
    return total


def test_metrics_reach_prometheus(metered):
    import ray

    from cluster import NAMESPACE, QUEUE_ACTOR

    client, home = metered
    job = client.submit_job({"model": "metrics-cgan", "per_class": 25, "shard_rows": 100, "seed": 1})
    done = client.wait(job["id"], show=False)
    assert done["status"] == "succeeded", done
    manifest = json.loads((Path(done["output"]) / "manifest.json").read_text())
    assert manifest["totals"]["rows"] == 250 and len(manifest["shards"]) == 3

    for n in SEQUENTIAL_SIZES:
        assert client.samples({"model": "metrics-cgan", "counts": {"4": n}, "seed": n})["count"] == n
    with cf.ThreadPoolExecutor(CONCURRENT) as pool:
        replies = list(
            pool.map(
                lambda s: client.samples({"model": "metrics-cgan", "counts": {"1": 1}, "seed": s}),
                range(CONCURRENT),
            )
        )
    assert all(r["count"] == 1 for r in replies)
    requests = len(SEQUENTIAL_SIZES) + CONCURRENT
    owner = ray.get(ray.get_actor(QUEUE_ACTOR, namespace=NAMESPACE).info.remote())

    def figures() -> dict:
        s = metrics.scrape()
        sizes = _buckets(s, "ray_genaug_sample_request_size", model=MODEL)
        return {
            "rows": metrics.total(s, "ray_genaug_rows_generated_total", model=MODEL),
            "shards": metrics.total(s, "ray_genaug_shard_commit_seconds_count", model=MODEL),
            "rate": metrics.total(s, "ray_genaug_generation_rows_per_second", model=MODEL),
            "jobs": {
                st: metrics.total(s, "ray_genaug_jobs", status=st, WorkerId=owner["worker_id"])
                for st in ("queued", "running", "succeeded", "failed", "cancelled")
            },
            "requests": metrics.total(s, "ray_genaug_sample_request_seconds_count", model=MODEL),
            "request_sizes": {le: sizes.get(le) for le in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)},
            "batches": metrics.total(s, "ray_genaug_sample_batch_size_count", model=MODEL),
            "batch_seconds": metrics.total(s, "ray_genaug_sample_batch_seconds_count", model=MODEL),
            "batched_requests": _exact_sum(_buckets(s, "ray_genaug_sample_batch_size", model=MODEL)),
            "loads": metrics.total(s, "ray_genaug_model_load_seconds_count", model=MODEL),
        }

    expected = {
        "rows": 250.0,
        "shards": 3.0,
        "jobs": {"queued": 0.0, "running": 0.0, "succeeded": 1.0, "failed": 0.0, "cancelled": 0.0},
        "requests": float(requests),
        # 10, 2, 5, 30, 1 and six 1s: <=1: 7, <=2: 8, <=4: 8, <=8: 9, <=16: 10, <=32: 11
        "request_sizes": {1.0: 7.0, 2.0: 8.0, 4.0: 8.0, 8.0: 9.0, 16.0: 10.0, 32.0: 11.0},
        "batched_requests": float(requests),  # every request was answered by exactly one forward pass
        "loads": 2.0,  # the generator for the job's shards, the ingress for the lone sequential requests
    }
    deadline = time.monotonic() + 90  # the agent exports every 10 s by default
    while True:
        got = figures()
        if all(got[k] == v for k, v in expected.items()) and got["batches"] == got["batch_seconds"] > 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"metrics never matched:\n got {got}\nwant {expected}")
        time.sleep(1.0)
    assert 1 <= got["batches"] <= requests
    assert got["rate"] == pytest.approx(manifest["rows_per_s"], rel=1e-6)


def test_status_of_the_live_service(metered):
    """``collect`` in a process already connected to Ray: cluster, app, replicas, queue, root."""
    from cluster.queue import JobStore
    from cluster.status import collect, render

    _, home = metered
    data = collect(home)
    assert data["ray"]["nodes_alive"] == 1 and data["ray"]["cpus"] == 2.0
    assert data["ray"]["nodes"][0]["head"] is True
    app = data["serve"]["applications"]["genaug"]
    assert app["status"] == "RUNNING"
    assert app["deployments"]["Generator"]["replicas"] == {"RUNNING": 1}
    assert app["deployments"]["Ingress"]["replicas"] == {"RUNNING": 1}
    assert data["queue"]["source"] == "queue owner actor"
    assert data["queue"]["owner"]["home"] == str(home)
    with JobStore(Path(home) / "state" / "queue.sqlite", readonly=True) as store:
        assert data["queue"]["counts"] == store.counts()
    assert data["storage"]["root"] == str(home) and data["storage"]["warning"] is None
    text = render(data)
    assert "1 node(s) alive on 1 machine(s)" in text and "Serve app 'genaug': RUNNING" in text
    assert f"Storage root: {home}" in text
