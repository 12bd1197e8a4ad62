"""``genaug serve --ingress haproxy``: Serve's HAProxy ingress (direct ingress, gRPC between deployments).

The variables must reach Ray's processes when they start, so the service runs in a process of its own.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from jobs.rayinit import HAPROXY_ENV, select_ingress
from tests.conftest import register_untrained


def test_select_ingress_names_the_valid_values_and_refuses_a_cluster(monkeypatch):
    for key in HAPROXY_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="ingress 'nginx' is not valid; valid: proxy, haproxy"):
        select_ingress("nginx")
    select_ingress("proxy")  # the default: nothing to set
    assert not any(key in os.environ for key in HAPROXY_ENV)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(ValueError, match="RAY_ADDRESS is set.*RAY_SERVE_ENABLE_HA_PROXY=1"):
        select_ingress("haproxy")
    monkeypatch.delenv("RAY_ADDRESS")
    import ray.serve  # noqa: F401  (its settings are read now, without the variables)

    with pytest.raises(ValueError, match="before Ray Serve is imported"):
        select_ingress("haproxy")
    assert not any(key in os.environ for key in HAPROXY_ENV)
    for key, value in HAPROXY_ENV.items():  # already chosen (e.g. in the environment): accepted
        monkeypatch.setenv(key, value)
    select_ingress("haproxy")


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
def test_serve_with_haproxy_ingress_answers_like_the_default(tmp_path):
    from cluster.service import free_port, wait_ready

    home = tmp_path / "home"
    home.mkdir()
    ref = register_untrained(home, "tiny-cgan", "cgan")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GENAUG_HOME": str(home)}
    for key in ("GENAUG_URL", "RAY_ADDRESS", "GENAUG_API_TOKEN", *HAPROXY_ENV):
        env.pop(key, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port), "--ingress", "haproxy"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_ready(url, 240)
        assert "haproxy" in _session_names(server.pid)  # HAProxy, not Serve's Python proxy, holds the port
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
