"""Two Ray nodes on one machine: a head (``ray start --head``) and a second node (``ray start --address``),
each with 1 CPU and its own temp dir. ``genaug serve`` joins them through ``RAY_ADDRESS`` with two
1-CPU generator replicas, so one lands on each node; a job's shards must then be written by workers on
both nodes, and the dataset must still be exact (the same rows as a one-process run, ``verify`` ok).

Only the processes started here are stopped: each ``ray start --block`` runs in its own session, and
teardown signals exactly the processes of those sessions (never ``ray stop``, which would stop every
Ray on the machine).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from cluster.client import Client
from cluster.queue import JobStore
from jobs.rayinit import HAPROXY_ENV, HAPROXY_INSTANCE_KEYS, free_port
from jobs.store.manifest import verify_dataset
from tests.conftest import register_untrained

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
PER_CLASS, SHARD_ROWS = 60, 50  # 600 rows in 12 shards


def _env(**extra: str) -> dict[str, str]:
    # the nodes run Serve's Python proxy: HAProxy on two nodes of one machine would need a port each
    drop = ("RAY_ADDRESS", "GENAUG_URL", "GENAUG_API_TOKEN", *HAPROXY_ENV, *HAPROXY_INSTANCE_KEYS)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    # workers started by these nodes import genaug from this checkout
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def _session_members(sid: int) -> list[psutil.Process]:
    """Processes of session ``sid`` (Ray's workers change their process group, not their session)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


class LocalNode:
    """``ray start ... --block`` in a session of its own; ``stop()`` ends exactly that session's processes."""

    def __init__(self, args: list[str], log: Path):
        self.temp_dir = tempfile.mkdtemp(prefix="gn", dir="/tmp")  # short: Unix socket paths are capped
        self.log = log
        ports = {
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        cmd = [
            RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats",
            "--object-store-memory=100000000", f"--temp-dir={self.temp_dir}",
            *(f"{k}={v}" for k, v in ports.items()), *args,
        ]  # fmt: skip
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, timeout_s: float = 20.0) -> list[int]:
        """SIGTERM, then SIGKILL, each process of this node's session until none is left; the leftovers."""
        sid = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL):
            members = _session_members(sid)
            if not members:
                break
            for p in members:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            psutil.wait_procs(members, timeout=timeout_s if sig == signal.SIGTERM else 5)
        self.proc.wait(timeout=10)
        return [p.pid for p in _session_members(sid)]


def _wait_for(predicate, timeout_s: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _genaug(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-node local Ray with ``genaug serve`` on it: yields (client, home, address, logs)."""
    tmp = tmp_path_factory.mktemp("multinode")
    home = tmp / "home"
    register_untrained(home, "tiny-cgan", "cgan", seed=1)
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    logs = [tmp / "head.log", tmp / "worker.log", tmp / "serve.log"]
    nodes: list[LocalNode] = []
    serve, serve_rc = None, None
    try:
        nodes.append(
            LocalNode(
                [
                    "--head", f"--port={gcs_port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                    '--resources={"head": 1}',
                ],
                logs[0],
            )
        )  # fmt: skip
        _wait_for(lambda: _port_open(gcs_port), 180, "the head's GCS", logs)
        nodes.append(LocalNode([f"--address={address}"], logs[1]))
        with open(logs[2], "w") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "serve", "--home", str(home), "--port",
                 str(free_port()), "--min-replicas", "2", "--max-replicas", "2"],
                env=_env(RAY_ADDRESS=address), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        line = _wait_for(
            lambda: next((ln for ln in logs[2].read_text().splitlines() if "genaug serving at" in ln), None),
            300,
            "genaug serve on the 2-node cluster",
            logs,
        )
        url = line.split("genaug serving at ")[1].split()[0]
        yield Client(url, token=""), home, address, logs
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)  # undeploys the app and the queue owner, then disconnects
            try:
                serve_rc = serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
        leftovers = {n.temp_dir: n.stop() for n in reversed(nodes)}
        for n in nodes:
            subprocess.run(["rm", "-rf", n.temp_dir], check=False)
    assert not any(leftovers.values()), f"processes left behind: {leftovers}"
    # SIGTERM is a clean stop: the app is undeployed and state/service.json removed
    assert serve_rc == 0 and "shutting down" in logs[2].read_text(), logs[2].read_text()[-3000:]
    assert not (home / "state" / "service.json").exists()


def test_job_shards_written_on_both_nodes_and_exact(cluster, tmp_path):
    client, home, address, logs = cluster
    serve_log = logs[2].read_text()
    # 2 Ray nodes but 1 machine: the local storage root is shared, so no warning
    assert "warning: the storage root" not in serve_log, serve_log

    status = _genaug(["status", "--home", str(home), "--json"], RAY_ADDRESS=address)
    assert status.returncode == 0, status.stdout + status.stderr
    data = json.loads(status.stdout)
    assert data["ray"]["nodes_alive"] == 2 and data["ray"]["machines"] == 1 and data["ray"]["cpus"] == 2
    node_ids = {n["node_id"] for n in data["ray"]["nodes"]}
    generator = data["serve"]["applications"]["genaug"]["deployments"]["Generator"]
    assert generator["replicas"] == {"RUNNING": 2}

    # Serve routes each shard to one of the two replicas (power of two choices on cached queue lengths):
    # a short job can land on one replica by chance, so a job is resubmitted (new seed) up to 3 times until
    # one is spread over both nodes; every job must be exact, and a routing that never spreads still fails
    total, num_shards = 10 * PER_CLASS, 10 * PER_CLASS // SHARD_ROWS
    for seed in (5, 6, 7):
        job = client.submit_job(
            {"model": "tiny-cgan", "per_class": PER_CLASS, "shard_rows": SHARD_ROWS, "seed": seed}
        )
        done = client.wait(job["id"], show=False)
        assert done["status"] == "succeeded", done
        with JobStore(home / "state" / "queue.sqlite", readonly=True) as store:
            recorded = store.committed_shards(job["id"])
            spec = store.get(job["id"])["spec"]
        assert sorted(recorded) == list(range(num_shards))
        writers = collections.Counter((s["worker"]["node_id"], s["worker"]["pid"]) for s in recorded.values())
        assert sum(writers.values()) == num_shards and {node for node, _ in writers} <= node_ids, writers
        print(f"seed {seed}: shards per writer (node, pid): {dict(writers)}")
        if {node for node, _ in writers} == node_ids:
            break
    assert {node for node, _ in writers} == node_ids, f"3 jobs, none written on both nodes: {writers}"
    assert len(writers) == 2

    # exact: verify passes, exact counts, and the very rows a one-process run produces
    out = Path(done["output"])
    assert verify_dataset(out).ok
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["rows"] == total
    assert manifest["totals"]["per_class"] == {str(c): PER_CLASS for c in range(10)}
    got = pq.read_table(out / "data").to_pandas()
    assert len(got) == total and got.key.is_unique
    want = _one_process_rows(home, spec, job["id"], tmp_path / "reference")
    assert list(got.sha256) == list(want.sha256) and list(got.label) == list(want.label)

    # `genaug status` also finds the service without RAY_ADDRESS, through state/service.json
    text = _genaug(["status", "--home", str(home)])
    assert text.returncode == 0, text.stdout + text.stderr
    assert "2 node(s) alive on 1 machine(s); CPU 0 free of 2" in text.stdout
    assert "Generator    HEALTHY    2 RUNNING" in text.stdout
    assert f"Queue (queue owner actor): 0 queued, 0 running; {seed - 4} succeeded" in text.stdout


def _one_process_rows(home: Path, spec: dict, job_id: str, out: Path):
    """The job's rows generated here, shard by shard, in this process."""
    from jobs.generate import JobSpec, ShardTask, run_shard
    from jobs.store.registry import Registry
    from models.checkpoint import load_checkpoint

    job = JobSpec.from_dict(spec)
    model = load_checkpoint(Registry(home).resolve(job.model).path).model
    for k in range(job.num_shards):
        run_shard(model, dataclasses.replace(ShardTask.of(job, job_id, k), output=str(out)))
    return pq.read_table(out / "data").to_pandas()
