"""genaug's metrics, recorded with ``ray.util.metrics`` and exported by Ray's metrics agent.

Every Ray node serves Prometheus text at ``http://NODE:METRICS_EXPORT_PORT/metrics`` (the port is
``MetricsExportPort`` in ``ray.nodes()``, or ``ray start --metrics-export-port``). Ray prefixes each
name with ``ray_`` and counters also get ``_total``; every series carries Ray's own labels too
(``WorkerId``, ``NodeAddress``, ``SessionName``...), so sum over them for a cluster-wide figure.

=========================================  =========  =====================================================
name (as scraped)                          type       what
=========================================  =========  =====================================================
``ray_genaug_jobs{status}``                gauge      jobs in the queue by status (queue owner, every 1 s)
``ray_genaug_rows_generated_total{model}`` counter    rows of recorded shards (each shard counted once)
``ray_genaug_generation_rows_per_second``  gauge      ``{model}``: the running job's rows/s so far; after
                                                      the job, its ``rows_per_s`` from ``manifest.json``
``ray_genaug_shard_commit_seconds``        histogram  ``{model}``: from sending a shard to a replica until
                                                      the queue recorded it (generate, write, rename, commit)
``ray_genaug_sample_request_seconds``      histogram  ``{model}``: ``POST /v1/samples`` in the ingress
``ray_genaug_sample_request_size``         histogram  ``{model}``: images asked for per inline request
``ray_genaug_sample_batch_seconds``        histogram  ``{model}``: one forward pass answering sample
                                                      requests: a generator's ``@serve.batch`` call, or
                                                      the ingress answering a lone request
``ray_genaug_sample_batch_size``           histogram  ``{model}``: requests merged into that forward pass
``ray_genaug_model_load_seconds``          histogram  ``{model}``: loading a checkpoint into a replica
=========================================  =========  =====================================================

Histogram sums are approximate: Ray's agent re-creates observations from bucket midpoints. Bucket
counts are exact, and the batch-size buckets are every integer up to 8 so small sizes stay exact.
A gauge of a process that died disappears after two export intervals (20 s by default).

Each hook is a no-op outside a Ray worker or driver, and never raises into the caller.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("genaug.metrics")

LATENCY_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60, 120, 300]
BATCH_BUCKETS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128, 256]
REQUEST_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
MODEL_LOAD_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60]

# name -> (kind, description, tag keys, buckets)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], list | None]] = {
    "genaug_jobs": ("gauge", "Jobs in the queue by status.", ("status",), None),
    "genaug_rows_generated": ("counter", "Rows of recorded shards.", ("model",), None),
    "genaug_generation_rows_per_second": (
        "gauge",
        "Rows/s of the model's current (or last finished) generation job.",
        ("model",),
        None,
    ),
    "genaug_shard_commit_seconds": (
        "histogram",
        "Seconds from dispatching a shard to the queue recording it.",
        ("model",),
        LATENCY_BUCKETS,
    ),
    "genaug_sample_request_seconds": (
        "histogram",
        "Seconds to answer POST /v1/samples in the ingress.",
        ("model",),
        LATENCY_BUCKETS,
    ),
    "genaug_sample_request_size": (
        "histogram",
        "Images asked for per POST /v1/samples request.",
        ("model",),
        REQUEST_SIZE_BUCKETS,
    ),
    "genaug_sample_batch_seconds": (
        "histogram",
        "Seconds of one forward pass answering sample requests (generator batch or lone request).",
        ("model",),
        LATENCY_BUCKETS,
    ),
    "genaug_sample_batch_size": (
        "histogram",
        "Sample requests merged into one forward pass.",
        ("model",),
        BATCH_BUCKETS,
    ),
    "genaug_model_load_seconds": (
        "histogram",
        "Seconds to load a model checkpoint into a generator replica.",
        ("model",),
        MODEL_LOAD_BUCKETS,
    ),
}


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge, Histogram

    out: dict[str, Any] = {}
    for name, (kind, description, tags, buckets) in DEFINITIONS.items():
        if kind == "counter":
            out[name] = Counter(name, description=description, tag_keys=tags)
        elif kind == "gauge":
            out[name] = Gauge(name, description=description, tag_keys=tags)
        else:
            out[name] = Histogram(name, description=description, boundaries=buckets, tag_keys=tags)
    return out


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    """Record ``value`` on metric ``name``; silently nothing when Ray is not up in this process."""
    try:
        import ray

        if not ray.is_initialized():
            return
        metric = _registry()[name]
        kind = DEFINITIONS[name][0]
        if kind == "counter":
            metric.inc(value, tags=tags)
        elif kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
    except Exception:  # metrics must never break serving or generation
        log.debug("could not record metric %s", name, exc_info=True)


# ------------------------------------------------------------------ hooks (one call per event)


def job_counts(counts: dict[str, int]) -> None:
    """Queue owner: the number of jobs per status (every status, zeros included)."""
    for status, n in counts.items():
        _record("genaug_jobs", float(n), {"status": status})


def shard_committed(model: str, rows: int, seconds: float) -> None:
    """Queue owner: a shard was recorded (once per shard; re-sent shards are not counted twice)."""
    _record("genaug_rows_generated", float(rows), {"model": model})
    _record("genaug_shard_commit_seconds", seconds, {"model": model})


def generation_rate(model: str, rows_per_s: float | None) -> None:
    """Queue owner: rows/s of the model's job, while it runs and once it finished."""
    if rows_per_s is not None:
        _record("genaug_generation_rows_per_second", float(rows_per_s), {"model": model})


def sample_request(model: str, images: int, seconds: float) -> None:
    """Ingress: one answered ``POST /v1/samples``."""
    _record("genaug_sample_request_seconds", seconds, {"model": model})
    _record("genaug_sample_request_size", float(images), {"model": model})


def sample_batch(model: str, requests: int, seconds: float) -> None:
    """Generator or ingress: ``requests`` sample calls for ``model`` answered by one forward pass."""
    _record("genaug_sample_batch_size", float(requests), {"model": model})
    _record("genaug_sample_batch_seconds", seconds, {"model": model})


def model_loaded(model: str, seconds: float) -> None:
    """Generator or ingress: a checkpoint was loaded into this replica."""
    _record("genaug_model_load_seconds", seconds, {"model": model})


# ------------------------------------------------------------------ reading them back


def scrape(timeout_s: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
    """Every ``ray_genaug_*`` sample from the Prometheus endpoint of each alive node of the connected Ray.

    Returns ``(sample name, labels, value)`` triples, e.g. ``("ray_genaug_rows_generated_total",
    {"model": "digits-cgan:v1", "WorkerId": ..., ...}, 50000.0)``. Nodes that do not answer are skipped.
    """
    import urllib.request

    import ray
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if not node.get("Alive") or not port:
            continue
        url = f"http://{node['NodeManagerAddress']}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                text = r.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name.startswith("ray_genaug_"):
                out.extend((s.name, dict(s.labels), float(s.value)) for s in family.samples)
    return out


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (over workers and nodes)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))
