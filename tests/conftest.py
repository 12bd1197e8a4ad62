"""Shared fixtures: one local Ray per test session, storage roots, small registered models."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("GENAUG_URL", None)
os.environ.pop("GENAUG_API_TOKEN", None)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, quiet) for the whole session; Serve and Ray shut down at the end."""
    import ray

    from jobs.rayinit import init_ray

    init_ray(num_cpus=2)
    yield ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty storage root."""
    root = tmp_path / "home"
    root.mkdir()
    return root


def register_untrained(home: Path, name: str, kind: str = "cgan", seed: int = 0, **config) -> str:
    """Register a freshly initialised (untrained) model quickly, without Ray Train; return its ref."""
    import torch

    from jobs.registry import register_model
    from models.checkpoint import build_model

    torch.manual_seed(seed)
    cfg = {"image_size": 8, "channels": 1, "num_classes": 10, **config}
    data = {
        "spec": "digits",
        "fingerprint": "untrained",
        "image_shape": [cfg["channels"], cfg["image_size"], cfg["image_size"]],
    }
    classes = [str(i) for i in range(cfg["num_classes"])]
    return register_model(home, name, build_model(kind, cfg), classes, data, epochs=0).ref


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A storage root with two small untrained models registered: tiny-cgan:v1 and tiny-cvae:v1."""
    root = tmp_path_factory.mktemp("model_home")
    register_untrained(root, "tiny-cgan", "cgan")
    register_untrained(root, "tiny-cvae", "cvae")
    return root


@contextlib.contextmanager
def running_service(home: Path, **app_args) -> Iterator[str]:
    """The app deployed over ``home`` on a free 127.0.0.1 port (one replica unless told); yields its URL."""
    from cluster.service import deploy, free_port, undeploy

    url = deploy(str(home), "127.0.0.1", free_port(), {"max_replicas": 1, **app_args})
    try:
        yield url
    finally:
        undeploy()
