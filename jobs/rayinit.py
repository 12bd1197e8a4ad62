"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, or an embedded local Ray sized to this machine.

The embedded default is quiet (no worker log spam, no dashboard, no usage stats) and is shut down by
whoever started it. See ``../shared/RAY_NOTES.md`` for why each setting is there. ``ray`` is imported
inside the functions that start or join it, on purpose: Ray reads several of the settings below from the
environment when it is imported, so they must be in place first.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator

# Settings that make Ray Train quick and quiet on small machines; set before Ray starts so that
# worker processes inherit them. Users can override any of them in their environment.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
# Serve's HAProxy ingress: HAProxy (C) on the HTTP port forwards to the ingress replicas, which serve
# HTTP themselves, and deployments call each other over gRPC (Ray's "throughput optimized" mode).
# Ray's processes read these when they start, so they must be set before the local Ray starts.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# HAProxy's own ports (stats, metrics, fallback proxy) come from just below Linux's default ephemeral range
# (32768-60999): a port that ``free_port`` found free could be handed to one of the many Ray processes that
# start before HAProxy binds it ("Address already in use" after a restart, seen once in the test suite).
HAPROXY_PORTS = (31001, 32768)  # above Ray's default replica HTTP ports (30000-31000)


def free_port_below_ephemeral(
    taken: set[int], low: int = HAPROXY_PORTS[0], high: int = HAPROXY_PORTS[1]
) -> int:
    """A random port in [low, high), not in ``taken``, that is free on 127.0.0.1 now (the kernel never hands
    these out itself); it is added to ``taken``."""
    for _ in range(200):
        candidate = low + secrets.randbelow(high - low)
        if candidate in taken:
            continue
        taken.add(candidate)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise OSError(f"no free port in [{low}, {high}) after 200 tries")


HAPROXY_SOCKET = "admin.sock"  # HAProxy's admin socket, in the instance's folder


def _instance_settings(folder: str, base: int, port: Callable[[], int]) -> dict[str, str]:
    """One HAProxy instance's own settings: its folder, ports from ``port()``, replica ports from ``base``."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/{HAPROXY_SOCKET}",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 99),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base - 10000),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base - 10000 + 99),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(port()),
        # an ingress replica that stops keeps serving this long so that load balancers notice; Ray's 30 s
        # made every undeploy take 31 s (3 s with the Python proxy). HAProxy here checks every 250 ms.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


HAPROXY_FOLDER_PREFIX = "genaug-haproxy-"  # each instance's folder in the temp dir
HAPROXY_OWNER_FILE = "owner.pid"  # in that folder: the genaug process that made it


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def sweep_haproxy_folders(root: str | None = None) -> list[str]:
    """Remove the HAProxy folders (in ``root``, default the temp dir) that a killed genaug left behind.

    A folder goes when it is this user's, its ``owner.pid`` names a process that no longer runs (a killed
    process never runs its ``atexit`` cleanup) and no HAProxy answers on its admin socket. Folders without
    an owner file (being created, or made by an older genaug) are left alone. Returns the removed paths.
    """
    removed = []
    for entry in os.scandir(root or tempfile.gettempdir()):
        if not entry.name.startswith(HAPROXY_FOLDER_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, HAPROXY_OWNER_FILE)) as f:
                owner = int(f.read())
        except (OSError, ValueError):
            continue
        if pid_alive(owner) or _socket_answers(os.path.join(entry.path, HAPROXY_SOCKET)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


# every variable haproxy_env sets besides HAPROXY_ENV (GENAUG_HAPROXY_PID: the process that chose them)
HAPROXY_INSTANCE_KEYS = (*_instance_settings("", 0, lambda: 0), "GENAUG_HAPROXY_PID")


def haproxy_env() -> dict[str, str]:
    """``HAPROXY_ENV`` plus a private folder and free ports for this instance's HAProxy.

    Ray's defaults (``/tmp/haproxy-serve`` for its config, admin socket and state; ports 8404 and 9101;
    ingress replica ports from 30000 and 40000; the fallback Python proxy on 8500 and 9500) are the same
    for every instance, so a second service on the machine, or another user's, would collide with the
    first: its HAProxy would not start, or, worse, would forward to the other instance (seen: a second
    service's HAProxy, before its own ingress replica was up, sent requests to the first one's fallback
    proxy on 8500). Each instance gets its own folder and ports, and 100 replica ports of its own.
    Variables already set in the environment win, unless another genaug process chose them
    (``GENAUG_HAPROXY_PID``: a service started by a service, or by the tests).
    Folders that killed instances left behind are swept first (``sweep_haproxy_folders``).
    """
    owner = os.environ.get("GENAUG_HAPROXY_PID")
    if owner == str(os.getpid()):  # chosen already, in this process
        return {k: os.environ[k] for k in (*HAPROXY_ENV, *HAPROXY_INSTANCE_KEYS) if k in os.environ}
    sweep_haproxy_folders()
    folder = tempfile.mkdtemp(prefix=HAPROXY_FOLDER_PREFIX)
    with open(os.path.join(folder, HAPROXY_OWNER_FILE), "w") as f:
        f.write(str(os.getpid()))
    base = 20000 + 100 * secrets.randbelow(100)  # HTTP ports base..base+99, gRPC 10000 lower
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    taken: set[int] = set()  # the instance's ports differ from each other
    env = _instance_settings(folder, base, lambda: free_port_below_ephemeral(taken))
    if owner is None:  # set by the user, not by a parent genaug: theirs win
        env = {k: os.environ.get(k, v) for k, v in env.items()}
    return {**HAPROXY_ENV, **env, "GENAUG_HAPROXY_PID": str(os.getpid())}


def select_ingress(kind: str | None = None) -> None:
    """Choose Serve's HTTP ingress for the local Ray this process will start.

    ``haproxy`` (the default): ``haproxy_env()``. ``proxy``: Serve's Python HTTP proxy. With
    ``RAY_ADDRESS`` the cluster's nodes decide (from their own environment): the default changes
    nothing and an explicit choice is refused. Also refused once Ray Serve was imported in this
    process with the other setting (it reads them at import).
    """
    if kind is not None and kind not in INGRESSES:
        raise ValueError(f"ingress {kind!r} is not valid; valid: {', '.join(INGRESSES)}")
    if os.environ.get("RAY_ADDRESS"):
        if kind is None:
            return
        env = " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())
        raise ValueError(
            f"--ingress {kind} configures the local Ray that genaug starts; RAY_ADDRESS is set, so start "
            f"that cluster's nodes {'with' if kind == 'haproxy' else 'without'} {env} in their environment"
        )
    haproxy = (kind or DEFAULT_INGRESS) == "haproxy"
    imported = sys.modules.get("ray.serve._private.constants")
    if imported is not None and imported.RAY_SERVE_ENABLE_HA_PROXY != haproxy:
        raise ValueError(
            f"--ingress {kind or DEFAULT_INGRESS} must be chosen before Ray Serve is imported in this process"
        )
    if haproxy:
        os.environ.update(haproxy_env())
    else:
        for key in (*HAPROXY_ENV, "GENAUG_HAPROXY_PID"):
            os.environ.pop(key, None)


def init_ray(num_cpus: int | None = None, object_store_memory: int | None = None) -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local Ray; return True when this call started or connected it.

    Returns False when Ray was already initialised in this process (the caller must not shut it down).
    """
    import ray

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_config=ray.LoggingConfig(log_level="WARNING"), log_to_driver=False)
        return True
    kwargs = dict(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
        configure_logging=True,
    )
    if object_store_memory:
        kwargs["object_store_memory"] = object_store_memory
    ray.init(address="local", **kwargs)  # never join some other Ray that happens to run on this machine
    if os.environ.get("GENAUG_HAPROXY_PID") == str(os.getpid()):  # this Ray's HAProxy has them now;
        for key in HAPROXY_INSTANCE_KEYS:  # a Ray that a child process starts chooses its own
            os.environ.pop(key, None)
    for name in ("ray", "ray.train", "ray.serve", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return True


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """``with ray_session(): ...`` - Ray is up inside, and shut down after only if this block started it."""
    import ray

    started = init_ray(num_cpus=num_cpus)
    try:
        yield
    finally:
        if started:  # a local Ray takes Serve and every actor down with it; a cluster is only disconnected
            ray.shutdown()
