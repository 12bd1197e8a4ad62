"""Bring the service up and down: Ray (local or ``RAY_ADDRESS``), Serve over HTTP, and the queue owner."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from cluster import APP_NAME
from cluster.dispatcher import NAMESPACE, QUEUE_ACTOR
from cluster.serve_app import build_app
from jobs.rayinit import (
    free_port,  # noqa: F401  (callers import it from here too)
    ray_session,
)
from jobs.store.location import resolve_home


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def deploy(
    home: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_args: dict[str, Any] | None = None,
    timeout_s: float = 120.0,
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the app (Ray must be up); return the URL.

    When Serve already runs in this Ray (e.g. ``serve deploy`` earlier), its proxy keeps its own
    host and port, and the URL says so.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": host, "port": port})
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # serve.start installs its own INFO handler
    http = _get_global_client().http_config
    host, port = http.host, http.port
    serve.run(
        build_app({"home": resolve_home(home).uri, **(app_args or {})}), name=APP_NAME, route_prefix="/"
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_ready(url, timeout_s)
    return url


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Poll ``/readyz`` until the service is ready."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.3)
    raise TimeoutError(f"genaug at {url} was not ready after {timeout_s:.0f} s ({last})")


def undeploy() -> None:
    """Remove the app and the queue owner (jobs stay in SQLite and resume at the next start)."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(APP_NAME)
    with contextlib.suppress(Exception):
        ray.kill(ray.get_actor(QUEUE_ACTOR, namespace=NAMESPACE))


@contextlib.contextmanager
def local_service(
    home: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    app_args: dict[str, Any] | None = None,
) -> Iterator[str]:
    """``with local_service(home) as url:`` - the embedded default, torn down on exit."""

    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    with ray_session():
        url = deploy(home, host, port or free_port(host), app_args)
        try:
            yield url
        finally:
            undeploy()
