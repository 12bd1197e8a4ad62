"""Load test: many concurrent HTTP clients against a genaug service on 127.0.0.1, for a bounded time.

    python -m benchmarks.load                              # 60 s, 50 clients (the RELIABILITY.md figures)
    python -m benchmarks.load --seconds 5 --clients 4      # a smoke run
    python -m benchmarks.load --json out.json

It starts its own local Ray, Serve and queue over a scratch storage root with one registered model,
then runs ``--clients`` asyncio clients (httpx) for ``--seconds``. Each client loops over a mix of
``POST /v1/samples`` (70 %), ``POST /v1/jobs`` (10 %, 100-row jobs) and status polls (20 %,
``GET /v1/jobs/{id}`` of a job it submitted, else ``GET /v1/jobs``). Recorded: requests/s, p50/p99
latency overall and per kind, answers by status (target: zero 5xx; connection errors counted apart),
the jobs' final states, and the summed RSS of the service's processes (Serve controller, proxy,
replicas, queue owner) after warm-up and at the end (target: growth under 10 %). It only ever talks to
127.0.0.1, stops by itself (each request has a timeout) and shuts down the Ray it started.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil

SERVICE_TITLES = ("ray::ServeController", "ray::ProxyActor", "ray::ServeReplica", "ray::QueueOwner")
MIX = (("samples", 0.7), ("submit", 0.1), ("poll", 0.2))


def service_processes() -> dict[int, str]:
    """pid -> name of the Serve / replica / queue processes below this process (the Ray it started).

    The name is the process title without the method it is running ("ray::ProxyActor").
    """
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith(SERVICE_TITLES):
            found[p.pid] = cmd[0].split(".", 1)[0]
    return found


def rss(pids: dict[int, str]) -> dict[str, int]:
    """RSS in bytes per process title (summed over processes with the same title); gone ones count 0."""
    out: dict[str, int] = collections.Counter()
    for pid, title in pids.items():
        try:
            out[title] += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            out[title] += 0
    return dict(out)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.wrong: list[str] = []
        self.jobs: list[str] = []


async def client(
    worker: int, url: str, deadline: float, stats: Stats, model: str, timeout: float, seed: int
) -> None:
    import httpx

    rng = random.Random(seed * 1000 + worker)
    mine: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        while time.monotonic() < deadline:
            kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            if kind == "poll" and mine:
                method, path, body = "GET", f"/v1/jobs/{rng.choice(mine)}", None
            elif kind == "poll":
                method, path, body = "GET", "/v1/jobs?limit=20", None
            elif kind == "submit":
                body = {"model": model, "per_class": 10, "shard_rows": 100, "seed": rng.randrange(2**31)}
                method, path = "POST", "/v1/jobs"
            else:
                label = rng.randrange(10)
                n = rng.randint(1, 8)
                body = {"model": model, "counts": {str(label): n}, "seed": rng.randrange(2**31)}
                method, path = "POST", "/v1/samples"
            t0 = time.perf_counter()
            try:
                r = await http.request(method, path, json=body)
            except httpx.HTTPError as e:
                stats.status[kind][type(e).__name__] += 1
                continue
            stats.latency[kind].append(time.perf_counter() - t0)
            stats.status[kind][r.status_code] += 1
            if r.status_code >= 400:
                continue
            reply = r.json()
            if kind == "samples":  # a success must be the right answer
                labels = [s["label"] for s in reply["samples"]]
                if reply["count"] != n or labels != [label] * n:
                    stats.wrong.append(f"{body} -> count {reply['count']}, labels {labels}")
            elif kind == "submit":
                mine.append(reply["id"])
                stats.jobs.append(reply["id"])


async def run_clients(url: str, clients: int, seconds: float, model: str, timeout: float, seed: int) -> Stats:
    stats = Stats()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(w, url, deadline, stats, model, timeout, seed) for w in range(clients)))
    return stats


def job_states(url: str, ids: list[str]) -> dict[str, int]:
    import httpx

    counts: collections.Counter = collections.Counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        for job_id in ids:
            counts[http.get(f"/v1/jobs/{job_id}").json()["status"]] += 1
    return dict(counts)


def summarize(stats: Stats, seconds: float) -> dict:
    all_lat = [x for v in stats.latency.values() for x in v]
    status_total: collections.Counter = collections.Counter()
    for c in stats.status.values():
        status_total.update({str(k): v for k, v in c.items()})
    per_kind = {
        kind: {
            "requests": sum(stats.status[kind].values()),
            "p50_ms": _ms(percentile(stats.latency[kind], 50)),
            "p99_ms": _ms(percentile(stats.latency[kind], 99)),
            "status": {str(k): v for k, v in sorted(stats.status[kind].items(), key=str)},
        }
        for kind, _ in MIX
    }
    answered = len(all_lat)
    return {
        "requests": sum(status_total.values()),
        "answered": answered,
        "requests_per_s": answered / seconds,
        "p50_ms": _ms(percentile(all_lat, 50)),
        "p99_ms": _ms(percentile(all_lat, 99)),
        "status": dict(sorted(status_total.items())),
        "errors_5xx": sum(v for k, v in status_total.items() if k.isdigit() and int(k) >= 500),
        "errors_4xx": sum(v for k, v in status_total.items() if k.isdigit() and 400 <= int(k) < 500),
        "connection_errors": sum(v for k, v in status_total.items() if not k.isdigit()),
        "wrong_answers": len(stats.wrong),
        "wrong_examples": stats.wrong[:3],
        "per_kind": per_kind,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def run(
    seconds: float = 60.0,
    clients: int = 50,
    timeout: float = 30.0,
    seed: int = 0,
    app_args: dict | None = None,
    warmup: int = 20,
) -> dict:
    """Start a local service, load it, and return the figures (see the module docstring)."""
    import httpx
    import ray

    from benchmarks.common import register_default_model
    from cluster.service import deploy, free_port, undeploy
    from jobs.rayinit import init_ray

    if ray.is_initialized():
        raise RuntimeError("benchmarks.load starts its own local Ray; call it from a process without Ray")
    with tempfile.TemporaryDirectory(prefix="genaug-load-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        model = register_default_model(home, "cgan", "load-cgan")
        init_ray()
        try:
            url = deploy(str(home), "127.0.0.1", free_port(), app_args or {})
            with httpx.Client(base_url=url, timeout=60) as http:  # load the model, run one job
                for i in range(warmup):
                    http.post("/v1/samples", json={"model": model, "per_class": 1, "seed": i})
                job = http.post("/v1/jobs", json={"model": model, "per_class": 10, "shard_rows": 100}).json()
                deadline = time.monotonic() + 120
                while http.get(f"/v1/jobs/{job['id']}").json()["status"] != "succeeded":
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the warm-up job {job['id']} did not succeed in 120 s")
                    time.sleep(0.2)
            pids = service_processes()
            mem_start = rss(pids)
            started = time.monotonic()
            stats = asyncio.run(run_clients(url, clients, seconds, model, timeout, seed))
            elapsed = time.monotonic() - started
            mem_end = rss(pids)
            now = service_processes()
            mem_all_end = rss(now)
            result = summarize(stats, elapsed)
            result["jobs"] = {"submitted": len(stats.jobs), "states_at_end": job_states(url, stats.jobs)}
            start_total, end_total = sum(mem_start.values()), sum(mem_end.values())
            result["memory"] = {
                "processes": len(pids),
                "start_mb": round(start_total / 2**20, 1),
                "end_mb": round(end_total / 2**20, 1),
                "growth": round(end_total / start_total - 1, 4) if start_total else None,
                "by_process_mb": {
                    t: [round(mem_start.get(t, 0) / 2**20, 1), round(mem_end.get(t, 0) / 2**20, 1)]
                    for t in sorted(mem_start)
                },
                # every service process at the end, replicas added by autoscaling included
                "end_all_mb": round(sum(mem_all_end.values()) / 2**20, 1),
                "processes_at_end": collections.Counter(now.values()),
            }
            result.update(seconds=round(elapsed, 1), clients=clients, app_args=app_args or {})
            return result
        finally:
            undeploy()
            ray.shutdown()  # the local Ray this call started (never any other)


def rows(quick: bool = False) -> list[dict]:
    """Rows for ``benchmarks.run --only load``: 5xx count and memory growth."""
    from benchmarks.common import Row

    r = run(seconds=10 if quick else 60, clients=10 if quick else 50)
    note = f"{r['clients']} clients {r['seconds']} s: {r['requests_per_s']:.0f} req/s, p99 {r['p99_ms']} ms"
    return [
        Row("load: 5xx answers", r["errors_5xx"], None, "count", "<= 0", note).to_dict(),
        Row(
            "load: service RSS end/start", r["memory"]["end_mb"], r["memory"]["start_mb"], "MB", "<= 1.1"
        ).to_dict(),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="how long the clients run (default 60)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in s (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if not (0 < args.seconds <= 3600 and 1 <= args.clients <= 1000 and args.timeout > 0):
        print("--seconds must be in (0, 3600], --clients in 1..1000, --timeout > 0", file=sys.stderr)
        return 2
    result = run(args.seconds, args.clients, args.timeout, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = result["errors_5xx"] == 0 and result["wrong_answers"] == 0
    print(
        f"{result['requests_per_s']:.1f} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"5xx {result['errors_5xx']}, wrong {result['wrong_answers']}, "
        f"RSS {result['memory']['start_mb']} -> {result['memory']['end_mb']} MB "
        f"({100 * (result['memory']['growth'] or 0):+.1f} %)",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
