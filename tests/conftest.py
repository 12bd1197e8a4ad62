"""Shared fixtures: one local Ray per test session, storage roots, small registered models."""

from __future__ import annotations

import os
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

    from jobs.registry import Registry
    from models.checkpoint import build_model, checkpoint_hash, save_checkpoint

    torch.manual_seed(seed)
    cfg = {"image_size": 8, "channels": 1, "num_classes": 10, **config}
    model = build_model(kind, cfg)
    classes = [str(i) for i in range(cfg["num_classes"])]
    data = {
        "spec": "digits",
        "fingerprint": "untrained-test-model",
        "image_shape": [cfg["channels"], cfg["image_size"], cfg["image_size"]],
    }

    def fill(tmp: Path) -> dict:
        save_checkpoint(model, tmp, classes=classes, data=data)
        return {
            "type": kind,
            "dataset": "digits",
            "data": data,
            "classes": classes,
            "image_shape": data["image_shape"],
            "epochs": 0,
            "checkpoint_sha256": checkpoint_hash(tmp),
        }

    return Registry(home).register(name, fill).ref


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A storage root with two small untrained models registered: tiny-cgan:v1 and tiny-cvae:v1."""
    root = tmp_path_factory.mktemp("model_home")
    register_untrained(root, "tiny-cgan", "cgan")
    register_untrained(root, "tiny-cvae", "cvae")
    return root
