"""A job left unfinished by an interrupted CLI (its local Ray gone) resumes when the queue runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cluster.queue import JobStore
from jobs.store.manifest import verify_dataset
from tests.conftest import register_untrained

pytestmark = pytest.mark.slow


def _default_sigint() -> None:
    # A shell that starts the suite in the background ignores SIGINT for it, and Python keeps an ignored
    # SIGINT ignored: the CLI must get the default (KeyboardInterrupt), as in a terminal, to test Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def genaug(home: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "GENAUG_HOME": str(home)}
    env.pop("GENAUG_URL", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
        **kw,
    )


def test_interrupted_cli_job_resumes_with_exact_counts(home):
    register_untrained(home, "tiny-cgan", "cgan")
    store_path = home / "state" / "queue.sqlite"
    proc = genaug(
        home, "generate", "--model", "tiny-cgan", "--per-class", "6000", "--shard-rows", "500", "--wait"
    )
    job_id, deadline = None, time.time() + 180
    while time.time() < deadline:  # wait until the job is running with some shards committed
        if store_path.exists():
            jobs = JobStore(store_path).list()
            if jobs and jobs[0]["shards_done"] >= 3:
                job_id = jobs[0]["id"]
                break
        time.sleep(0.2)
    assert job_id, "the job never started"
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI shuts its local Ray down mid-job
    proc.wait(timeout=120)
    stranded = JobStore(store_path).get(job_id)
    assert stranded["status"] == "running" and stranded["shards_done"] < 120

    from cluster.service import free_port

    server = genaug(home, "serve", "--port", str(free_port()))  # the queue runs again
    store = JobStore(store_path)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and store.get(job_id)["status"] in ("queued", "running"):
            time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=120)
    resumed = store.get(job_id)
    assert resumed["status"] == "succeeded", resumed
    assert resumed["attempts"] == 2
    assert any("restarted" in e["reason"] or "started" in e["reason"] for e in store.events(job_id))
    df = pd.read_parquet(Path(resumed["output"]) / "data")
    assert df.label.value_counts().to_dict() == {k: 6000 for k in range(10)}
    assert df.key.is_unique
    assert verify_dataset(resumed["output"]).ok
