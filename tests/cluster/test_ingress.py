"""``genaug serve --ingress``: HAProxy (the default; direct ingress, gRPC between deployments) or
Serve's Python proxy. The variables must reach Ray's processes when they start, so the service under
test runs in a process of its own; the rest of the suite runs on the default (``tests/conftest.py``).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from ray.serve._private import constants as serve_constants  # read now, with the suite's ingress

from jobs.rayinit import (
    HAPROXY_ENV,
    HAPROXY_INSTANCE_KEYS,
    haproxy_env,
    select_ingress,
    sweep_haproxy_folders,
)
from tests.conftest import register_untrained


@pytest.fixture
def clean_env(monkeypatch):
    for key in (*HAPROXY_ENV, *HAPROXY_INSTANCE_KEYS, "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_select_ingress_names_the_valid_values_and_refuses_a_cluster(clean_env):
    with pytest.raises(ValueError, match="ingress 'nginx' is not valid; valid: haproxy, proxy"):
        select_ingress("nginx")
    clean_env.setenv("RAY_ADDRESS", "ray://head:10001")
    select_ingress()  # the default: the cluster's nodes decide, nothing is set
    assert not any(key in os.environ for key in HAPROXY_ENV)
    for kind in ("haproxy", "proxy"):
        match = f"--ingress {kind} .*RAY_ADDRESS is set.*RAY_SERVE_ENABLE_HA_PROXY=1"
        with pytest.raises(ValueError, match=match):
            select_ingress(kind)
    clean_env.delenv("RAY_ADDRESS")
    other = "proxy" if serve_constants.RAY_SERVE_ENABLE_HA_PROXY else "haproxy"
    with pytest.raises(ValueError, match=f"--ingress {other} must be chosen before Ray Serve is imported"):
        select_ingress(other)
    assert not any(key in os.environ for key in HAPROXY_ENV)


def test_each_haproxy_instance_gets_its_own_folder_and_ports(clean_env):
    """Ray's HAProxy defaults (/tmp/haproxy-serve, ports 8404/9101) would collide between two services."""
    mine = haproxy_env()
    assert mine["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and mine["GENAUG_HAPROXY_PID"] == str(os.getpid())
    folder = Path(mine["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert folder.is_dir() and folder.name.startswith("genaug-haproxy-")
    assert (folder / "owner.pid").read_text() == str(os.getpid())  # what a later sweep checks
    assert Path(mine["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent == folder
    keys = ("HAPROXY_STATS", "HAPROXY_METRICS", "FALLBACK_PROXY_HTTP")
    own_ports = [int(mine[f"RAY_SERVE_{k}_PORT"]) for k in keys]
    assert len(set(own_ports)) == 3 and all(31001 <= p < 32768 for p in own_ports)  # not the kernel's to give
    for key, value in mine.items():  # as select_ingress sets them
        clean_env.setenv(key, value)
    assert haproxy_env() == mine  # asked again in this process: the same instance
    child = subprocess.run(  # a service started by this one (or by the tests) gets its own
        [
            sys.executable,
            "-c",
            "import json; from jobs.rayinit import haproxy_env; print(json.dumps(haproxy_env()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(child.stdout)
    assert theirs["GENAUG_HAPROXY_PID"] != mine["GENAUG_HAPROXY_PID"]
    for key in (
        "RAY_SERVE_HAPROXY_SOCKET_PATH",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    ):
        assert theirs[key] != mine[key]
    for key in HAPROXY_INSTANCE_KEYS:
        clean_env.delenv(key)
    clean_env.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")  # the user's own setting wins
    assert haproxy_env()["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


def test_sweep_removes_the_folders_that_killed_instances_left(clean_env):
    """A killed genaug never runs its atexit cleanup; the next instance removes what it left, only that."""
    code = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    with tempfile.TemporaryDirectory(prefix="gs") as root:  # short: a unix socket path has ~100 characters

        def folder(name: str, owner: int | None) -> Path:
            path = Path(root, f"genaug-haproxy-{name}")
            path.mkdir()
            (path / "server-state").write_text("state")
            if owner is not None:
                (path / "owner.pid").write_text(str(owner))
            return path

        stale = folder("stale", dead_pid)
        alive = folder("alive", os.getpid())
        unowned = folder("unowned", None)  # being created, or an older genaug's
        served = folder("served", dead_pid)  # owner gone, but an HAProxy still answers on its admin socket
        other = Path(root, "something-else")
        other.mkdir()
        (other / "owner.pid").write_text(str(dead_pid))
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(served / "admin.sock"))
            server.listen()
            assert sweep_haproxy_folders(root) == [str(stale)]
        assert not stale.exists()
        assert all(p.is_dir() for p in (alive, unowned, served, other))


def _session_names(sid: int) -> list[str]:
    names = []
    for p in psutil.process_iter(["name"]):
        try:
            if os.getsid(p.pid) == sid:
                names.append(p.info["name"] or "")
        except (OSError, psutil.Error):
            pass
    return names


@pytest.mark.slow
def test_serve_with_the_python_proxy_answers_like_the_default(tmp_path):
    from cluster.service import free_port, wait_ready

    home = tmp_path / "home"
    home.mkdir()
    ref = register_untrained(home, "tiny-cgan", "cgan")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GENAUG_HOME": str(home)}
    for key in ("GENAUG_URL", "RAY_ADDRESS", "GENAUG_API_TOKEN", *HAPROXY_ENV, *HAPROXY_INSTANCE_KEYS):
        env.pop(key, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port), "--ingress", "proxy"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_ready(url, 240)
        assert "haproxy" not in _session_names(server.pid)  # Serve's Python proxy holds the port
        with httpx.Client(base_url=url, timeout=60) as c:
            body = {"model": "tiny-cgan", "counts": {"3": 4, "7": 2}, "seed": 5, "format": "npz"}
            first, again = c.post("/v1/samples", json=body), c.post("/v1/samples", json=body)
            assert first.status_code == 200 and first.headers["x-genaug-model"] == ref
            npz = np.load(io.BytesIO(first.content))
            assert npz["images"].shape == (6, 8, 8, 1) and npz["labels"].tolist() == [3, 3, 3, 3, 7, 7]
            assert first.content == again.content
            bad = c.post("/v1/samples", json={"model": "tiny-cgan", "per_class": 0})
            assert bad.status_code == 400 and "per_class" in bad.json()["detail"]
            missing = c.get("/v1/models/nope")
            assert missing.status_code == 404 and missing.json()["error"] == "not found"
            job = c.post("/v1/jobs", json={"model": "tiny-cgan", "per_class": 30, "seed": 1}).json()
            deadline = time.time() + 120
            while (status := c.get(f"/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                assert time.time() < deadline, status
                time.sleep(0.3)
            assert status["status"] == "succeeded", status
            assert status["result"]["totals"]["rows"] == 300
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=120)
    assert server.returncode == 0, out[-2000:]
    assert "shutting down" in out
    deadline = time.time() + 60
    while "haproxy" in _session_names(server.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert "haproxy" not in _session_names(server.pid)  # nothing left running
    assert Path(status["output"]).is_dir()


def test_build_app_refuses_a_non_boolean_local_inline(tmp_path):
    from cluster.serve_app import build_app

    with pytest.raises(ValueError, match="local_inline 'no' is not valid; valid: true, false"):
        build_app({"home": str(tmp_path), "local_inline": "no"})
    assert build_app({"home": str(tmp_path), "local_inline": False}) is not None
