"""/v1/samples: latency over HTTP vs the same generation in process, and batching vs no batching.

    python -m benchmarks.serving [--requests 200]

Rows:
- p50 overhead (ms) of a 64-sample ``/v1/samples`` request (format json) over HTTP, against the same
  work (forward + PNG encoding + JSON body) in this process; targets <= 5 ms (issue 4) and <= 3 ms (issue 8);
- requests/s with 16 concurrent clients (10 samples each, format npz), batching on vs off
  (``max_batch_size`` 32 vs 1), same app, same run; target >= 2x.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, register_default_model


def in_process_ms(home: Path, ref: str, n: int) -> np.ndarray:
    """Latencies (ms) of generating 64 samples + PNG + JSON in this process."""
    from jobs import shards
    from jobs.generate import generate_uint8
    from jobs.registry import Registry
    from models.checkpoint import load_checkpoint

    model = load_checkpoint(Registry(home).resolve(ref).path).model
    labels = np.repeat(np.arange(10), 7)[:64]
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        images = generate_uint8(model, labels, seed=i)
        body = {
            "samples": [
                {"label": int(y), "label_name": str(y), "png": base64.b64encode(p).decode()}
                for y, p in zip(labels, shards.encode_pngs(images), strict=False)
            ]
        }
        json.dumps(body)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def http_ms(client, ref: str, n: int) -> np.ndarray:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.samples({"model": ref, "counts": {str(c): 7 for c in range(9)} | {"9": 1}, "seed": i})
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def concurrent_rps(client, ref: str, clients: int = 16, per_client: int = 25) -> float:
    def worker(k: int) -> None:
        for i in range(per_client):
            client.samples({"model": ref, "per_class": 1, "seed": k * 1000 + i, "format": "npz"})

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per_client / (time.perf_counter() - t0)


def run(requests: int = 200) -> list[Row]:
    from cluster.client import Client
    from cluster.service import deploy, free_port, undeploy
    from jobs.rayinit import ray_session

    home = Path(tempfile.mkdtemp(prefix="genaug-bench-"))
    ref = register_default_model(home)
    rows: list[Row] = []
    with ray_session():
        port = free_port()
        rps = {}
        for batch in (32, 1):
            url = deploy(str(home), "127.0.0.1", port, {"max_replicas": 1, "max_batch_size": batch})
            client = Client(url, token="")
            http_ms(client, ref, 20)  # warm-up
            if batch == 32:
                ours = http_ms(client, ref, requests)
                base = in_process_ms(home, ref, requests)
                overhead = float(np.median(ours) - np.median(base))
                note = (
                    f"HTTP p50 {np.median(ours):.1f} ms / p99 {np.percentile(ours, 99):.1f} ms; in-process "
                    f"p50 {np.median(base):.1f} ms / p99 {np.percentile(base, 99):.1f} ms"
                )
                rows.append(
                    Row(
                        "/v1/samples 64 samples: p50 overhead over in-process",
                        overhead,
                        None,
                        "ms",
                        "<= 5",
                        note,
                    )
                )
                rows.append(
                    Row(
                        "/v1/samples 64 samples: p50 overhead (issue 8 target)",
                        overhead,
                        None,
                        "ms",
                        "<= 3",
                        note,
                    )
                )
            rps[batch] = concurrent_rps(client, ref)
            undeploy()
        rows.append(
            Row(
                "16 concurrent clients, 10 samples each: requests/s with batching vs without",
                rps[32],
                rps[1],
                "req/s",
                ">= 2",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args(argv)
    print(json.dumps([r.to_dict() for r in run(args.requests)], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
