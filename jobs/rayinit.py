"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, or an embedded local Ray sized to this machine.

The embedded default is quiet (no worker log spam, no dashboard, no usage stats) and is shut down by
whoever started it. See ``../shared/RAY_NOTES.md`` for why each setting is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

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


INGRESSES = ("proxy", "haproxy")
# Serve's HAProxy ingress: HAProxy (C) on the HTTP port forwards to the ingress replicas, which serve
# HTTP themselves, and deployments call each other over gRPC (Ray's "throughput optimized" mode).
# Ray's processes read these when they start, so they must be set before the local Ray starts.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def select_ingress(kind: str) -> None:
    """Choose Serve's HTTP ingress for the local Ray this process will start.

    ``proxy``: Serve's Python HTTP proxy (the default). ``haproxy``: ``HAPROXY_ENV``; refused when
    ``RAY_ADDRESS`` names a cluster (its nodes take the variables from their own environment) or when
    Ray Serve was already imported here without them.
    """
    import sys

    if kind not in INGRESSES:
        raise ValueError(f"ingress {kind!r} is not valid; valid: {', '.join(INGRESSES)}")
    if kind == "proxy" or all(os.environ.get(k) == v for k, v in HAPROXY_ENV.items()):
        return
    if os.environ.get("RAY_ADDRESS"):
        env = " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())
        raise ValueError(
            f"--ingress haproxy configures the local Ray that genaug starts; RAY_ADDRESS is set, so start "
            f"that cluster's nodes with {env} in their environment instead"
        )
    if "ray.serve._private.constants" in sys.modules:
        raise ValueError("--ingress haproxy must be chosen before Ray Serve is imported in this process")
    os.environ.update(HAPROXY_ENV)


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
