"""/v1/samples: latency over HTTP vs the same generation in process, and batching vs no batching.

    python -m benchmarks.serving [--requests 200] [--rounds 2] [--ingress haproxy|proxy]

The service is deployed as ``genaug serve`` deploys it (local Ray, HAProxy or, with ``--ingress proxy``,
Serve's Python HTTP proxy; ingress and generator deployments; one generator replica so that both sides
use one core for the forward pass).

Rows:
- p50 overhead (ms) of a 64-sample ``/v1/samples`` request (format json) over HTTP, against the same
  work in this process (forward pass + the same ``encode_samples`` body, torch on 1 thread like the
  replica); HTTP and in-process calls alternate, so load from other processes hits both alike.
  Targets <= 5 ms (issue 4) and <= 3 ms (issue 8);
- the same overhead with ``local_inline`` off (reference): every request makes the deployment hop to
  the generator; with it on (the default), a lone request is answered by the ingress itself;
- ``/healthz`` p50 (reference): the HTTP front and the ingress replica with no work, the floor of any
  request through Serve on this machine;
- requests/s with 16 concurrent clients (10 samples each, format npz), batching on vs off
  (``max_batch_size`` 32 vs 1 in both the ingress and the generator), same app, same run; runs in
  the order on, off, off, on (... per ``--rounds``) so that drifting load cancels; target >= 2x;
- the generator's own work for 16 such requests in process, merged into one forward pass vs one pass
  each (reference: the most batching can save, Serve's per-request cost aside).

Clients keep their HTTP connection open (as ``requests.Session`` or ``httpx.Client`` do).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from benchmarks.common import Row, register_default_model, scratch_home
from jobs.rayinit import DEFAULT_INGRESS, INGRESSES

COUNTS_64 = {str(c): 7 for c in range(9)} | {"9": 1}  # 64 samples over 10 classes


class Conn:
    """One keep-alive HTTP connection: ``post(path, body) -> bytes``, ``get(path) -> bytes``."""

    def __init__(self, url: str):
        u = urlparse(url)
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def _do(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.c.request(method, path, body=body, headers=headers)
        r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:200]!r}")
        return data

    def post(self, path: str, req: dict) -> bytes:
        return self._do("POST", path, json.dumps(req).encode())

    def get(self, path: str) -> bytes:
        return self._do("GET", path)


def latency_pairs(url: str, home: Path, ref: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(HTTP ms, in-process ms) of the same 64-sample json request, alternating one of each."""
    import torch

    from cluster.formats import encode_samples
    from jobs.generate import parse_counts
    from jobs.store.registry import Registry
    from models.checkpoint import load_checkpoint
    from models.sampling import generate_uint8

    mv = Registry(home).resolve(ref)
    classes = mv.info["classes"]
    model = load_checkpoint(mv.path).model
    labels = np.repeat(np.arange(len(classes)), parse_counts(None, COUNTS_64, classes))
    conn = Conn(url)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the replica's torch runs on 1 thread (num_cpus=1)
    try:
        http_ms, local_ms = [], []
        for i in range(n):
            t0 = time.perf_counter()
            conn.post("/v1/samples", {"model": ref, "counts": COUNTS_64, "seed": i, "format": "json"})
            http_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            encode_samples(generate_uint8(model, labels, seed=i), labels, classes, "json", mv.ref)
            local_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    return np.array(http_ms), np.array(local_ms)


def healthz_ms(url: str, n: int) -> np.ndarray:
    conn = Conn(url)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.get("/healthz")
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def concurrent_rps(url: str, ref: str, clients: int = 16, per_client: int = 25) -> float:
    def worker(k: int) -> None:
        conn = Conn(url)
        for i in range(per_client):
            conn.post("/v1/samples", {"model": ref, "per_class": 1, "seed": k * 1000 + i, "format": "npz"})

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per_client / (time.perf_counter() - t0)


def merged_forward_speedup(home: Path, ref: str, clients: int = 16, repeats: int = 30) -> tuple[float, float]:
    """What batching buys the generator itself, in process: ``clients`` requests of 10 samples (npz)
    made as one merged forward pass vs one pass each; returns (merged, separate) requests/s."""
    import torch

    from cluster.formats import encode_samples
    from jobs.store.registry import Registry
    from models.checkpoint import load_checkpoint
    from models.sampling import generate_many_uint8

    mv = Registry(home).resolve(ref)
    classes = mv.info["classes"]
    model = load_checkpoint(mv.path).model
    labels = np.arange(len(classes))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_merged, t_separate = [], []
    try:
        for r in range(repeats):
            seeds = [r * clients + k for k in range(clients)]
            t0 = time.perf_counter()
            for img in generate_many_uint8(model, [labels] * clients, seeds):
                encode_samples(img, labels, classes, "npz", mv.ref)
            t_merged.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in seeds:
                img = generate_many_uint8(model, [labels], [s])[0]
                encode_samples(img, labels, classes, "npz", mv.ref)
            t_separate.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return clients / float(np.median(t_merged)), clients / float(np.median(t_separate))


def _fmt(xs: np.ndarray) -> str:
    return f"p50 {np.median(xs):.1f} ms / p99 {np.percentile(xs, 99):.1f} ms"


def run(requests: int = 200, rounds: int = 2, ingress: str = DEFAULT_INGRESS) -> list[Row]:
    """The rows above; ``ingress`` only labels them (``select_ingress`` must have run before Ray)."""
    from cluster.service import deploy, free_port, undeploy
    from jobs.rayinit import ray_session

    rows: list[Row] = []
    with scratch_home() as home, ray_session():
        ref = register_default_model(home)
        port = free_port()
        rps: dict[int, list[float]] = {32: [], 1: []}
        answered = {b: collections.Counter() for b in rps}  # who answered the concurrent requests
        merged: list[float] = []
        order = [32, 1, 1, 32] * rounds
        for k, batch in enumerate(order[: 2 * rounds]):
            url = deploy(str(home), "127.0.0.1", port, {"max_replicas": 1, "max_batch_size": batch})
            Conn(url).post("/v1/samples", {"model": ref, "per_class": 1})  # the replica loads the model
            concurrent_rps(url, ref, per_client=3)  # warm-up
            if k == 0:
                latency_pairs(url, home, ref, 20)  # warm-up
                ours, base = latency_pairs(url, home, ref, requests)
                floor = healthz_ms(url, requests)
                overhead = float(np.median(ours) - np.median(base))
                note = f"HTTP {_fmt(ours)}; in-process {_fmt(base)}; /healthz {_fmt(floor)}"
                name = "/v1/samples 64 samples: p50 overhead over in-process"
                rows.append(Row(name, overhead, None, "ms", "<= 5", note))
                rows.append(Row(name + " (issue 8 target)", overhead, None, "ms", "<= 3", note))
                rows.append(
                    Row(
                        "/healthz p50 (HTTP front + ingress replica, no work: the floor)",
                        float(np.median(floor)),
                        None,
                        "ms",
                        "n/a",
                        _fmt(floor),
                    )
                )
            before = json.loads(Conn(url).get("/v1/stats"))["ingress"]["inline_answered_by"]
            rps[batch].append(concurrent_rps(url, ref))
            stats = json.loads(Conn(url).get("/v1/stats"))
            for k2, n in stats["ingress"]["inline_answered_by"].items():
                answered[batch][k2] += n - before[k2]
            if batch > 1:  # requests per forward pass since this deployment started (mostly this run)
                merged.append(stats["generator"]["mean_batch_size"])
            undeploy()
        url = deploy(str(home), "127.0.0.1", port, {"max_replicas": 1, "local_inline": False})
        latency_pairs(url, home, ref, 20)  # the replica loads the model; warm-up
        ours, base = latency_pairs(url, home, ref, requests)
        undeploy()
        rows.insert(
            2,
            Row(
                "/v1/samples 64 samples, local_inline off (each request hops to the generator): p50 overhead",
                float(np.median(ours) - np.median(base)),
                None,
                "ms",
                "n/a",
                f"reference; HTTP {_fmt(ours)}; in-process {_fmt(base)}",
            ),
        )
        merged_rps, separate_rps = merged_forward_speedup(home, ref)
        on, off = float(np.median(rps[32])), float(np.median(rps[1]))
        runs = "; ".join(
            f"{k}: " + ", ".join(f"{x:.0f}" for x in rps[b]) for k, b in (("on", 32), ("off", 1))
        )
        per_pass = np.mean(merged) if merged else float("nan")
        by_ingress = "; ".join(
            f"{k}: {answered[b]['ingress']} of {sum(answered[b].values())}"
            for k, b in (("on", 32), ("off", 1))
        )
        rows.append(
            Row(
                "16 concurrent clients, 10 samples each: requests/s with batching vs without",
                on,
                off,
                "req/s",
                ">= 2",
                f"req/s per run, {runs}; requests per forward pass with batching: {per_pass:.1f}; "
                f"answered by the ingress itself (lone requests), {by_ingress}",
            )
        )
        rows.append(
            Row(
                "generator work for 16 requests of 10 samples (forward + npz), in process: merged vs one "
                "pass each",
                merged_rps,
                separate_rps,
                "req/s",
                "n/a",
                "reference: what @serve.batch saves per merged request, without Serve's per-request cost",
            )
        )
    if ingress != DEFAULT_INGRESS:
        label = {"proxy": "Serve's Python proxy"}.get(ingress, ingress)
        rows = [Row(f"[{label}] {r.name}", *dataclasses.astuple(r)[1:]) for r in rows]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2, help="batching on/off pairs (each a fresh deployment)")
    p.add_argument("--ingress", choices=list(INGRESSES), default=DEFAULT_INGRESS, help="as genaug serve")
    args = p.parse_args(argv)
    from jobs.rayinit import select_ingress

    select_ingress(args.ingress)
    print(json.dumps([r.to_dict() for r in run(args.requests, args.rounds, args.ingress)], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
