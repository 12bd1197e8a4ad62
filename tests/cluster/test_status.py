"""``genaug status`` and the storage check of ``genaug serve``: decision functions, the queue summary,
rendering, and the CLI when nothing runs (no Ray needed). The live paths: test_metrics, test_multinode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.queue import JobStore
from cluster.status import (
    is_shared_root,
    mount_fs_type,
    read_service,
    render,
    storage_warning,
)

REPO = Path(__file__).resolve().parents[2]

MOUNTS = """\
overlay / overlay rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/sda1 /data ext4 rw,relatime 0 0
fs-123.efs.us-east-1.amazonaws.com:/ /mnt/genaug nfs4 rw,vers=4.1 0 0
gcsfuse-bucket /mnt/bucket fuse.gcsfuse rw 0 0
/dev/sdb1 /mnt/genaug/scratch xfs rw 0 0
/dev/sdc1 /mnt/with\\040space ext4 rw 0 0
"""


@pytest.mark.parametrize(
    "path, fs",
    [
        ("/", "overlay"),
        ("/home/user/genaug-data", "overlay"),
        ("/data", "ext4"),
        ("/data/genaug", "ext4"),
        ("/database", "overlay"),  # a prefix of the name is not a mount point
        ("/mnt/genaug", "nfs4"),
        ("/mnt/genaug/models/x", "nfs4"),
        ("/mnt/genaug/scratch/y", "xfs"),  # the longest mount point wins
        ("/mnt/bucket/root", "fuse.gcsfuse"),
        ("/mnt/with space/home", "ext4"),
    ],
)
def test_mount_fs_type_longest_mount_point(path, fs):
    assert mount_fs_type(path, MOUNTS) == fs


def test_mount_fs_type_of_this_machine(tmp_path):
    assert mount_fs_type(tmp_path) not in (None, "")


@pytest.mark.parametrize(
    "root, machines, fs_type, warns",
    [
        ("/data/genaug", 1, "ext4", False),  # one machine: a local disk is fine
        ("/data/genaug", 2, "ext4", True),
        ("/data/genaug", 5, "xfs", True),
        ("/data/genaug", 2, "overlay", True),
        ("/data/genaug", 2, None, True),  # unknown file system: say so rather than stay silent
        ("/mnt/genaug", 3, "nfs4", False),  # EFS / Filestore / NFS
        ("/mnt/genaug", 3, "nfs", False),
        ("/mnt/genaug", 3, "cifs", False),
        ("/mnt/genaug", 3, "lustre", False),
        ("/mnt/bucket", 3, "fuse.gcsfuse", False),
        ("s3://bucket/genaug", 4, None, False),
        ("gs://bucket/genaug", 4, None, False),
        ("/mnt/genaug", 0, "ext4", False),
    ],
)
def test_storage_warning_decision(root, machines, fs_type, warns):
    warning = storage_warning(root, machines, fs_type)
    assert (warning is not None) == warns
    if machines > 1:
        assert is_shared_root(root, fs_type) == (not warns)
    if warns:
        assert root in warning and f"{machines} machines" in warning
        assert "every node mounts at the same path" in warning and "GENAUG_HOME" in warning
        assert (fs_type or "unknown file system") in warning


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _submit(store: JobStore, priority: int, rows: int = 10) -> str:
    job = store.submit({"x": 1}, priority=priority, total_rows=rows, total_shards=1, output="/tmp/o")
    return job["id"]


def test_queue_summary_by_priority_oldest_and_next(tmp_path):
    clock = Clock()
    store = JobStore(tmp_path / "q.sqlite", now=clock)
    empty = store.summary()
    assert empty["counts"] == {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    assert empty["by_priority"] == [] and empty["oldest_queued"] is None and empty["next_queued"] is None

    first = _submit(store, 0, rows=7)
    clock.t += 10
    runs = _submit(store, 5)
    clock.t += 10
    urgent = _submit(store, 5, rows=3)
    clock.t += 10
    _submit(store, -1)
    done = _submit(store, 0)
    assert store.claim("w1")["id"] == runs  # priority 5 first
    store.cancel(done)
    clock.t += 100

    s = store.summary()
    assert s["counts"] == {"queued": 3, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert s["by_priority"] == [
        {"priority": 5, "queued": 1, "running": 1},
        {"priority": 0, "queued": 1, "running": 0},
        {"priority": -1, "queued": 1, "running": 0},
    ]
    assert s["oldest_queued"]["id"] == first and s["oldest_queued"]["waiting_s"] == 130
    assert s["oldest_queued"]["total_rows"] == 7 and s["oldest_queued"]["priority"] == 0
    assert s["next_queued"]["id"] == urgent and s["next_queued"]["waiting_s"] == 110
    text = "\n".join(render(_data(queue={**s, "source": "SQLite q.sqlite"})).splitlines())
    assert "3 queued, 1 running; 0 succeeded, 0 failed, 1 cancelled" in text
    assert "priority 5: 1q/1r  priority 0: 1q/0r  priority -1: 1q/0r" in text
    assert f"oldest waiting: {first} (priority 0, 7 rows) for 2m10s" in text
    assert f"next to run: {urgent} (priority 5)" in text


def _data(**over) -> dict:
    data = {
        "home": "/srv/genaug",
        "service": None,
        "ray": None,
        "serve": None,
        "queue": None,
        "error": "no RAY_ADDRESS, and no running `genaug serve` for this root",
        "storage": {"root": "/srv/genaug", "fs_type": "ext4", "shared": False, "warning": None},
    }
    return {**data, **over}


def test_render_nothing_running():
    text = render(_data())
    assert text.startswith("genaug status: no genaug service is running for /srv/genaug")
    assert "genaug serve --home /srv/genaug" in text and "RAY_ADDRESS" in text
    assert "Queue: no queue yet" in text and "Storage root: /srv/genaug  (ext4)" in text


def test_render_full_screen_fits_one_screen():
    nodes = [
        {"node_id": f"{i:056x}", "address": f"10.0.0.{i}", "hostname": f"ip-10-0-0-{i}", "head": i == 0,
         "cpus": 8.0, "gpus": 0.0 if i == 0 else 1.0}
        for i in range(12)
    ]  # fmt: skip
    data = _data(
        error=None,
        ray={"address": "10.0.0.0:6379", "nodes_alive": 12, "nodes_dead": 1, "machines": 12, "cpus": 96.0,
             "cpus_free": 40.0, "gpus": 11.0, "gpus_free": 3.5, "nodes": nodes},
        serve={"running": True, "proxies": {"a": "HEALTHY", "b": "UNHEALTHY"}, "applications": {
            "genaug": {"status": "RUNNING", "message": "", "deployments": {
                "Generator": {"status": "UPSCALING", "replicas": {"RUNNING": 3, "STARTING": 1},
                              "message": ""},
                "Ingress": {"status": "HEALTHY", "replicas": {"RUNNING": 1}, "message": ""}}}}},
        service={"url": "http://127.0.0.1:8000", "pid": 42},
        queue={"counts": {"queued": 1, "running": 2, "succeeded": 9, "failed": 1, "cancelled": 0},
               "by_priority": [{"priority": 0, "queued": 1, "running": 2}],
               "oldest_queued": {"id": "j-1", "priority": 0, "total_rows": 50000, "waiting_s": 7300.0},
               "next_queued": {"id": "j-1", "priority": 0}, "source": "queue owner actor"},
        storage={"root": "/data/genaug", "fs_type": "ext4", "shared": False,
                 "warning": storage_warning("/data/genaug", 12, "ext4")},
    )  # fmt: skip
    text = render(data)
    lines = text.splitlines()
    assert len(lines) <= 24, text
    assert lines[0] == (
        "Ray 10.0.0.0:6379: 12 node(s) alive, 1 dead on 12 machine(s); CPU 40 free of 96, GPU 3.5 free of 11"
    )
    assert "... and 4 more node(s)" in text and sum("  head  " in ln for ln in lines) == 1
    assert "Serve app 'genaug': RUNNING" in text
    assert any(ln.split() == ["Generator", "UPSCALING", "3", "RUNNING,", "1", "STARTING"] for ln in lines)
    assert "HTTP proxies: 1 healthy of 2" in text
    assert "URL: http://127.0.0.1:8000  (genaug serve, pid 42)" in text
    assert "oldest waiting: j-1 (priority 0, 50,000 rows) for 2h01m" in text
    assert "next to run" not in text  # the oldest is also the next
    assert "WARNING: the storage root /data/genaug" in text


def test_read_service_ignores_a_dead_process(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    record = {"ray_address": "127.0.0.1:1", "url": "http://x", "hostname": socket.gethostname()}
    (state / "service.json").write_text(json.dumps({**record, "pid": int(dead.stdout)}))
    assert read_service(tmp_path) is None
    (state / "service.json").write_text(json.dumps({**record, "pid": os.getpid()}))
    assert read_service(tmp_path)["url"] == "http://x"
    (state / "service.json").write_text(json.dumps({**record, "pid": 1, "hostname": "another-host"}))
    assert read_service(tmp_path)["hostname"] == "another-host"  # cannot check its pid from here
    (state / "service.json").write_text("{not json")
    assert read_service(tmp_path) is None


def _status_cli(home: Path, extra_env: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GENAUG_URL")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--home", str(home), *args],
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_status_cli_when_nothing_runs(tmp_path):
    """No RAY_ADDRESS, a stale service.json, a queue with one waiting job: a clear message, exit 1,
    the queue read from SQLite, and no Ray started."""
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    store = JobStore(home / "state" / "queue.sqlite")
    job = _submit(store, 3, rows=1234)
    store.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (home / "state" / "service.json").write_text(
        json.dumps({"ray_address": "127.0.0.1:9", "pid": int(dead.stdout), "hostname": socket.gethostname()})
    )
    r = _status_cli(home)
    assert r.returncode == 1, r.stderr
    assert f"no genaug service is running for {home}" in r.stdout
    assert "Queue (SQLite " in r.stdout and "1 queued, 0 running" in r.stdout
    assert f"oldest waiting: {job} (priority 3, 1,234 rows)" in r.stdout
    assert f"Storage root: {home}" in r.stdout
    assert "Started a local Ray" not in r.stdout + r.stderr

    r = _status_cli(home, {"RAY_ADDRESS": "127.0.0.1:9"}, "--json")  # nobody listens on port 9
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["ray"] is None and data["error"] == "no Ray answers at 127.0.0.1:9"
    assert data["queue"]["counts"]["queued"] == 1 and data["storage"]["root"] == str(home)


def test_serve_warning_plumbing(monkeypatch, tmp_path, capsys):
    """``genaug serve``'s check: machines from Ray's alive nodes, the file system of the real root."""
    import cluster.status as status
    from cluster.cli import _warn_storage
    from jobs.store.location import resolve_home

    monkeypatch.setattr(status, "alive_machines", lambda: 3)
    monkeypatch.setattr(status, "mount_fs_type", lambda path, mounts=None: "ext4")
    assert _warn_storage(str(tmp_path)) is True
    err = capsys.readouterr().err
    assert err.startswith(f"genaug serve: warning: the storage root {resolve_home(tmp_path)} is on this")
    assert "spans 3 machines" in err
    monkeypatch.setattr(status, "mount_fs_type", lambda path, mounts=None: "nfs4")
    assert _warn_storage(str(tmp_path)) is False
    monkeypatch.setattr(status, "mount_fs_type", lambda path, mounts=None: "ext4")
    monkeypatch.setattr(status, "alive_machines", lambda: 1)
    assert _warn_storage(str(tmp_path)) is False
    assert capsys.readouterr().err == ""
