"""Faults injected into a real local Ray, Serve and the SQLite queue; every job ends verified.

Each fault is one test: a Ray Train worker SIGKILLed mid-run, a generation worker SIGKILLed mid-shard,
Serve replicas SIGKILLed while `/v1/samples` requests are in flight, the whole local Ray of a
`genaug serve` SIGKILLed mid-job and started again, a full filesystem, damaged model versions, and a
locked or read-only job store. Every process killed here is one this test session started (a
descendant of this process, or a process in the session of a subprocess it launched); nothing else
is touched, and no `ray stop` is ever run.
"""

from __future__ import annotations

import base64
import collections
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.queue import JobStore, QueueError
from jobs.store import shards
from jobs.store.manifest import read_manifest, verify_dataset
from tests.conftest import register_untrained

pytestmark = pytest.mark.slow

CLASSES = [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- helpers


def assert_dataset_exact(output: str | Path, counts: dict[int, int]) -> dict:
    """Exact per-class counts, unique keys, a manifest matching the files, _SUCCESS; returns the manifest."""
    out = Path(output)
    df = pq.read_table(out / "data").to_pandas()
    assert df.label.value_counts().sort_index().to_dict() == dict(sorted(counts.items()))
    assert df.key.is_unique and len(df) == sum(counts.values())
    report = verify_dataset(out)
    assert report.ok, str(report)
    manifest = read_manifest(out)
    assert manifest["totals"]["rows"] == len(df)
    assert manifest["totals"]["per_class"] == {CLASSES[k]: n for k, n in counts.items()}
    files = sorted(p.name for p in (out / "data").iterdir())
    assert [Path(s["path"]).name for s in manifest["shards"]] == files
    assert manifest["totals"]["shards"] == len(files) and (out / "_SUCCESS").is_file()
    return manifest


def descendants(pid: int | None = None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def find_own_process(title: str, root: int | None = None) -> psutil.Process | None:
    """A process started by this test session (below ``root``) whose title starts with ``title``."""
    for p in descendants(root):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith(title):
            return p
    return None


def http(method: str, url: str, **kw) -> httpx.Response:
    kw.setdefault("timeout", 120)
    return httpx.request(method, url, **kw)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def job_of(url: str, job_id: str) -> dict:
    r = http("GET", f"{url}/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(url: str, job_id: str, timeout: float = 240) -> dict:
    """Poll until the job is terminal; a dropped connection is retried (the service may be recovering)."""

    def terminal() -> dict | None:
        try:
            job = job_of(url, job_id)
        except httpx.TransportError as e:
            print(f"poll of {job_id}: {type(e).__name__}: {e}; retrying")
            return None
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(terminal, timeout, f"job {job_id} finishing", poll=0.3)


def submit(url: str, body: dict) -> dict:
    r = http("POST", f"{url}/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def mount_tmpfs(path: Path, size: str) -> None:
    """Mount a small tmpfs at ``path`` (root only); skip the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# ----------------------------------------------------------------------------- Ray Train worker


def test_train_worker_sigkilled_resumes_from_last_checkpoint(ray_local, home):
    """One DDP worker SIGKILLs its own process at the start of epoch 2: Ray Train notices the dead worker,
    restarts the group from the last checkpoint it registered and finishes.

    Runs before this module's service exists, so that both training workers get a CPU.
    """
    from jobs.train import TrainSettings, train
    from models.checkpoint import load_checkpoint

    settings = TrainSettings(
        model="cvae",
        dataset="digits",
        name="killed",
        workers=2,
        epochs=4,
        batch_size=32,
        limit_batches=2,
        checkpoint_every=1,
        model_config={"hidden": 32, "latent_dim": 4},
        inject_failure_at_epoch=2,
        inject_failure_kill=True,
    )
    info = train(settings, home, quiet=True)
    assert info["epochs"] == 4
    # Resumed from a checkpoint, not from scratch: from epoch 1's, or from epoch 0's when the kill comes
    # before Ray Train has registered the report made just before it (a hard crash can lose the report
    # in flight; [0, 1] was measured).
    print(f"\ntraining worker killed at epoch 2: starts {info['starts']}")
    assert len(info["starts"]) == 2 and info["starts"][0] == 0 and info["starts"][1] in (1, 2), info
    assert (home / "runs" / "killed" / info["run_id"] / "injected_failure").exists()
    assert load_checkpoint(home / "models" / "killed" / "v1").model is not None


# ----------------------------------------------------------------------------- generation worker


def test_shard_worker_sigkilled_mid_shard_standalone_job(tmp_path):
    """`python -m jobs.generate`: SIGKILL the Ray worker while it runs a shard task; the retry finishes it."""
    home = tmp_path / "home"
    home.mkdir()
    register_untrained(home, "tiny-cgan", "cgan")
    env = {**os.environ, "GENAUG_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.generate", "--model", "tiny-cgan", "--per-class", "3000"]
    cmd += ["--shard-rows", "2000", "--seed", "5", "--job-id", "killed-mid-shard"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = []
    try:
        deadline = time.monotonic() + 120
        while len(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
            worker = find_own_process("ray::_shard_task", proc.pid)  # the title while a shard runs
            if worker is not None and worker.pid not in killed:
                worker.send_signal(signal.SIGKILL)
                killed.append(worker.pid)
                time.sleep(0.5)
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert len(killed) == 2, f"no shard task was caught running: {out}"
    assert_dataset_exact(home / "datasets" / "killed-mid-shard", {k: 3000 for k in range(10)})


# ----------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    """The app over its own root: tiny-cgan:v1, and models whose v2 is damaged in one way each."""
    from cluster.service import deploy, free_port, undeploy

    home = tmp_path_factory.mktemp("faults_home")
    register_untrained(home, "tiny-cgan", "cgan")
    for kind in DAMAGE:
        register_untrained(home, f"dmg-{kind}", "cgan", seed=1)
        register_untrained(home, f"dmg-{kind}", "cgan", seed=2)
        DAMAGE[kind](home / "models" / f"dmg-{kind}" / "v2")
    args = {"max_replicas": 1, "max_in_flight": 2, "max_running": 2, "lease_s": 3.0}
    url = deploy(str(home), "127.0.0.1", free_port(), args)
    yield url, home
    undeploy()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGE = {
    "weights-truncated": lambda v: _truncate(v / "weights.pt"),
    "weights-garbage": lambda v: (v / "weights.pt").write_bytes(os.urandom(4096)),
    "config-truncated": lambda v: _truncate(v / "config.json"),
    "classes-missing": lambda v: (v / "classes.json").unlink(),
    "model-json-truncated": lambda v: _truncate(v / "model.json"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_version_is_503_and_the_rest_keeps_serving(service, kind):
    url, _ = service
    name = f"dmg-{kind}"
    for _ in range(2):  # a failed load is not cached as loaded
        r = http("POST", f"{url}/v1/samples", json={"model": name, "per_class": 1})
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        assert body["error"] == "model unavailable" and f"{name}:v2" in body["detail"], body
        assert "Traceback" not in body["detail"]
    r = http("POST", f"{url}/v1/samples", json={"model": f"{name}:v1", "per_class": 2})
    assert r.status_code == 200 and [s["label"] for s in r.json()["samples"]] == sorted(list(range(10)) * 2)
    listing = http("GET", f"{url}/v1/models")
    assert listing.status_code == 200, listing.text
    versions = {v["ref"]: v for v in http("GET", f"{url}/v1/models/{name}").json()["versions"]}
    assert set(versions) == {f"{name}:v1", f"{name}:v2"}
    assert "unavailable" not in versions[f"{name}:v1"]
    r = http("POST", f"{url}/v1/jobs", json={"model": name, "per_class": 3, "shard_rows": 10})
    if r.status_code == 503:  # model.json is read when the request is validated: refused at once
        assert kind == "model-json-truncated" and r.json()["error"] == "model unavailable", r.text
        return
    assert r.status_code == 202, r.text
    job = wait_job(url, r.json()["id"])  # the checkpoint itself is read when a shard runs
    assert job["status"] == "failed" and f"{name}:v2" in job["error"], job
    assert "unavailable" in job["error"] and "Traceback" not in job["error"]
    out = Path(job["output"])
    assert not list(out.rglob("*.parquet")) and not (out / "_SUCCESS").exists()


def _png_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_replicas_sigkilled_with_samples_in_flight(service):
    """8 clients keep asking; the generator replica, then the HTTP ingress replica are SIGKILLed.

    Every 200 must be exactly right (labels, names, shape and the very pixels the same request gave
    before any fault); every other answer is a 5xx error, or, for a request the dying ingress replica
    held, a dropped connection (HAProxy forwards the connection, so the client sees it close); the
    service recovers on its own.
    """
    url, _ = service
    requests = [{"model": "tiny-cgan", "counts": {str(i % 10): 1 + i % 3}, "seed": i} for i in range(16)]
    reference = []
    for req in requests:  # one at a time, before any fault
        r = http("POST", f"{url}/v1/samples", json=req)
        assert r.status_code == 200
        reference.append([_png_pixels(s["png"]) for s in r.json()["samples"]])

    outcomes: collections.Counter = collections.Counter()
    wrong, errors = [], []
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(timeout=120) as c:
            i = worker
            while not stop.is_set():
                req = requests[i % len(requests)]
                i += 3
                try:
                    r = c.post(f"{url}/v1/samples", json=req)
                except httpx.HTTPError as e:
                    with lock:
                        outcomes[type(e).__name__] += 1
                    continue
                with lock:
                    outcomes[r.status_code] += 1
                if r.status_code != 200:
                    with lock:
                        errors.append((r.status_code, r.headers.get("content-type"), r.text[:200]))
                    continue
                body = r.json()
                ((label, n),) = req["counts"].items()
                ok = (
                    body["model"] == "tiny-cgan:v1"
                    and body["count"] == n
                    and [s["label"] for s in body["samples"]] == [int(label)] * n
                    and [s["label_name"] for s in body["samples"]] == [label] * n
                )
                pixels = [_png_pixels(s["png"]) for s in body["samples"]] if ok else []
                ok = ok and all(
                    p.shape == (8, 8) and np.array_equal(p, q)
                    for p, q in zip(pixels, reference[requests.index(req)], strict=True)
                )
                if not ok:
                    with lock:
                        wrong.append((req, body))

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        before = dict(outcomes)
        gen_pid = http("GET", f"{url}/v1/stats").json()["generator"]["pid"]
        os.kill(gen_pid, signal.SIGKILL)
        time.sleep(6)
        after_generator = dict(outcomes)
        ingress = find_own_process("ray::ServeReplica:genaug:Ingress")
        assert ingress is not None
        ingress.send_signal(signal.SIGKILL)
        time.sleep(6)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    print(
        f"\nreplica kills, /v1/samples outcomes: before {before}, total {dict(outcomes)}; errors {errors[:3]}"
    )
    assert wrong == [], wrong[:2]
    assert before.get(200, 0) > 0 and outcomes[200] > before[200]
    assert all(isinstance(k, int) and k >= 500 for k in after_generator if k != 200), after_generator
    dropped = {"RemoteProtocolError", "ReadError", "ConnectError"}
    assert all((isinstance(k, int) and k >= 500) or k in dropped for k in outcomes if k != 200), outcomes
    for status, ctype, _ in errors:  # ours are JSON; a dying ingress's proxy answers a bare 500
        assert status == 500 or ctype == "application/json"
    # recovered without a restart: a new generator replica answers, the service is ready
    wait_until(lambda: http("GET", f"{url}/readyz").status_code == 200, 60, "readyz after the kills")
    assert http("GET", f"{url}/v1/stats").json()["generator"]["pid"] != gen_pid
    r = http("POST", f"{url}/v1/samples", json=requests[5])
    assert r.status_code == 200
    assert all(
        np.array_equal(_png_pixels(s["png"]), q)
        for s, q in zip(r.json()["samples"], reference[5], strict=True)
    )


def test_generator_replica_sigkilled_mid_job(service):
    """SIGKILL the generator replica while it holds shard calls (the dispatcher keeps 2 in flight)."""
    url, _ = service
    job = submit(url, {"model": "tiny-cgan", "per_class": 2500, "shard_rows": 500, "seed": 9})
    wait_until(lambda: job_of(url, job["id"])["shards_done"] >= 3, 120, "3 committed shards")
    os.kill(http("GET", f"{url}/v1/stats").json()["generator"]["pid"], signal.SIGKILL)
    done = wait_job(url, job["id"])
    assert done["status"] == "succeeded", done
    assert_dataset_exact(done["output"], {k: 2500 for k in range(10)})


def test_disk_full_fails_the_job_cleanly(service):
    """A 192 KiB tmpfs as the output: ENOSPC mid-job fails it clearly; nothing unrecorded is left."""
    url, home = service
    full = home / "full"
    mount_tmpfs(full, "192k")
    try:
        job = submit(url, {"model": "tiny-cgan", "per_class": 1000, "shard_rows": 500, "out": "full/ds"})
        done = wait_job(url, job["id"])
        assert done["status"] == "failed", done
        assert "No space left on device" in done["error"] and "Traceback" not in done["error"], done
        out = Path(done["output"])
        assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
        with JobStore(home / "state" / "queue.sqlite", readonly=True) as store:
            recorded = store.committed_shards(job["id"])
        print(
            f"\ndisk full: {len(recorded)} shards recorded of {done['total_shards']}; error: {done['error']}"
        )
        assert 1 <= len(recorded) < done["total_shards"]  # ~58 KB shards: a few fit, then ENOSPC
        on_disk = sorted((out / "data").iterdir()) if (out / "data").exists() else []
        assert all(not p.name.startswith(".") for p in on_disk)  # no temp file left
        assert sorted(p.name for p in on_disk) == sorted(Path(s["path"]).name for s in recorded.values())
        for info in recorded.values():  # every file there is a whole, recorded shard
            described = shards.describe_shard(out, info["shard"], done["total_shards"])
            assert described["sha256"] == info["sha256"] and described["rows"] == info["rows"]
        # the service and other jobs keep working
        r = http("POST", f"{url}/v1/samples", json={"model": "tiny-cgan", "per_class": 1})
        assert r.status_code == 200
        other = wait_job(url, submit(url, {"model": "tiny-cgan", "per_class": 300, "shard_rows": 500})["id"])
        assert other["status"] == "succeeded", other
        assert_dataset_exact(other["output"], {k: 300 for k in range(10)})
    finally:
        umount(full)


def test_locked_job_store_is_503_then_the_job_resumes(service):
    """Another process holds SQLite's write lock for a while: clear 503s, no failure, no corruption."""
    url, home = service
    path = home / "state" / "queue.sqlite"
    job = submit(url, {"model": "tiny-cgan", "per_class": 2000, "shard_rows": 250, "seed": 2})
    wait_until(lambda: job_of(url, job["id"])["shards_done"] >= 2, 120, "2 committed shards")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE jobs SET priority = priority")  # an uncommitted write holds the lock
    try:
        r = http("POST", f"{url}/v1/jobs", json={"model": "tiny-cgan", "per_class": 1})
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        assert body["error"] == "queue unavailable" and "is locked" in body["detail"], body
        assert str(path) in body["detail"]
        time.sleep(5)  # longer than the lease (3 s): the running attempt cannot commit and stops
        assert job_of(url, job["id"])["status"] == "running"  # reads still work (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    done = wait_job(url, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None, done
    assert done["attempts"] >= 2  # claimed again once its lease lapsed
    assert_dataset_exact(done["output"], {k: 2000 for k in range(10)})
    with JobStore(path, readonly=True) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        reasons = [e["reason"] for e in store.events(job["id"])]
    assert any("lease expired" in r for r in reasons), reasons
    assert submit(url, {"model": "tiny-cgan", "per_class": 1})["status"] == "queued"


def test_read_only_job_store_is_a_clear_error_without_damage(tmp_path):
    """The store's filesystem remounted read-only: opening it names the file; back to rw it is intact."""
    fs = tmp_path / "state"
    mount_tmpfs(fs, "4m")
    path = fs / "queue.sqlite"
    try:
        with JobStore(path) as store:
            job = store.submit({"n": 1}, total_rows=10, total_shards=1, output=str(tmp_path / "ds"))
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        with pytest.raises(QueueError) as e:
            JobStore(path)
        assert str(path) in str(e.value) and "mounted read-only" in str(e.value)
        assert "Traceback" not in str(e.value)
        subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
        with JobStore(path) as again:
            assert [j["id"] for j in again.list()] == [job["id"]]
            assert again._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert again.claim("w")["id"] == job["id"]
    finally:
        umount(fs)


# ----------------------------------------------------------------------------- the whole local Ray


def _serve(home: Path, port: int) -> subprocess.Popen:
    """`genaug serve` in its own session: its local Ray (every Ray process) lives in that session.

    (Ray puts each worker in a process group of its own, but they all stay in the session.)
    """
    env = {**os.environ, "GENAUG_HOME": str(home)}
    for key in ("GENAUG_URL", "RAY_ADDRESS", "GENAUG_API_TOKEN"):
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (one this test started with ``start_new_session``)."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                pids.append(pid)
        except (OSError, psutil.Error):
            pass
    return pids


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_whole_local_ray_sigkilled_mid_job_then_restarted(tmp_path):
    """SIGKILL every process of a `genaug serve` (its local Ray included) mid-job; serve again: resumed.

    (Its processes are found by session id: Ray puts each worker in a process group of its own.)
    """
    from cluster.service import free_port, wait_ready

    home = tmp_path / "home"
    home.mkdir()
    register_untrained(home, "tiny-cgan", "cgan")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(home, port)
    assert os.getsid(server.pid) == server.pid != os.getsid(0)
    try:
        wait_ready(url, 180)
        names = [psutil.Process(p).name() for p in _session(server.pid)]
        own = http("GET", f"{url}/v1/models").json()["models"]  # not another service's (same machine)
        assert [m["name"] for m in own] == ["tiny-cgan"], own
        assert "haproxy" in names, names  # the default ingress, with its own folder and ports
        job = submit(url, {"model": "tiny-cgan", "per_class": 4000, "shard_rows": 500, "seed": 11})
        wait_until(lambda: job_of(url, job["id"])["shards_done"] >= 4, 120, "4 committed shards")
    finally:
        _kill_session(server.pid)  # at once: the CLI, GCS, raylet, Serve, replicas, queue owner
        server.communicate(timeout=60)
    wait_until(lambda: not _session(server.pid), 60, "every process of the killed Ray to exit")
    store_path = home / "state" / "queue.sqlite"
    with JobStore(store_path, readonly=True) as store:
        stranded = store.get(job["id"])
        before = store.committed_shards(job["id"])
    assert stranded["status"] == "running" and 4 <= len(before) < stranded["total_shards"]
    print(f"\nwhole Ray killed with {len(before)} of {stranded['total_shards']} shards committed")
    out = Path(stranded["output"])
    mtimes = {k: (out / s["path"]).stat().st_mtime_ns for k, s in before.items()}

    server = _serve(home, port)  # Ray, Serve and the queue start again over the same root
    try:
        wait_ready(url, 180)
        done = wait_job(url, job["id"])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            log, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            _kill_session(server.pid)
            log, _ = server.communicate(timeout=60)
        print("restarted genaug serve said:", log[-3000:])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    manifest = assert_dataset_exact(done["output"], {k: 4000 for k in range(10)})
    by_shard = {s["shard"]: s for s in manifest["shards"]}
    for k, s in before.items():  # the shards committed before the crash were kept, not redone
        assert by_shard[k]["sha256"] == s["sha256"]
        assert (out / s["path"]).stat().st_mtime_ns == mtimes[k]
    with JobStore(store_path, readonly=True) as store:
        reasons = [e["reason"] for e in store.events(job["id"])]
    assert any("queue owner started" in r for r in reasons), reasons
