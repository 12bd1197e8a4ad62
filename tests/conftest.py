"""Shared fixtures: one local Ray per test session, storage roots, small registered models."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("GENAUG_URL", None)
os.environ.pop("GENAUG_API_TOKEN", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("GENAUG_STATE_DIR", None)  # tests choose the local side of URI roots themselves

from jobs.rayinit import select_ingress  # noqa: E402

select_ingress()  # the suite's local Ray gets genaug's default ingress (HAProxy), as `genaug serve` does


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

    from jobs.store.registry import register_model
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


# ----------------------------------------------------------------------------- a local S3 server

# Variables that could point a test at a real account or change how S3 is reached; cleared per test.
AWS_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


class S3Server:
    """moto's standalone S3 server on 127.0.0.1; ``env`` are the AWS variables that reach it."""

    def __init__(self, port: int):
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make_bucket(self, prefix: str = "genaug") -> str:
        """Create a fresh bucket and return its name."""
        import uuid

        import pyarrow.fs as pafs

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        fs = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            scheme="http",
            endpoint_override=self.endpoint.split("://", 1)[1],
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return name


@contextlib.contextmanager
def local_server(argv: list[str], ready_url: str, log_dir: Path, what: str) -> Iterator[None]:
    """Run ``argv`` (a loopback test server) until the block ends; wait up to 60 s for ``ready_url``."""
    import subprocess
    import time
    import urllib.request

    log = open(log_dir / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                raise RuntimeError(f"{what} did not start at {ready_url} (see {log.name})") from None
            time.sleep(0.1)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free loopback port for the session; stop it at the end."""
    import sys

    from jobs.rayinit import free_port

    server = S3Server(free_port())
    port = server.endpoint.rsplit(":", 1)[1]
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port]
    with local_server(argv, f"{server.endpoint}/moto-api/", tmp_path_factory.mktemp("moto"), "moto server"):
        yield server


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """``s3://<fresh bucket>/root`` with the AWS variables of this process pointing at the local server.

    ``GENAUG_STATE_DIR`` (the local side of a URI root: queue database, caches) goes to ``tmp_path``.
    """
    for key in AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GENAUG_STATE_DIR", str(tmp_path / "genaug-state"))
    return f"s3://{s3_server.make_bucket()}/root"


# ----------------------------------------------------------------------------- a local GCS emulator


class GCSServer:
    """gcp-storage-emulator (PyPI) on 127.0.0.1; ``env`` points pyarrow's GcsFileSystem at it."""

    def __init__(self, port: int):
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"STORAGE_EMULATOR_HOST": self.endpoint}

    def make_bucket(self, prefix: str = "genaug") -> str:
        """Create a fresh bucket (the emulator's JSON API) and return its name."""
        import json
        import urllib.request
        import uuid

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=genaug-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):
            return name


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[GCSServer]:
    """Start ``gcp-storage-emulator`` (in memory) on a free loopback port for the session."""
    import sys

    from jobs.rayinit import free_port

    pytest.importorskip("gcp_storage_emulator", reason="the GCS emulator is a dev extra: pip install .[dev]")
    server = GCSServer(free_port())
    port = server.endpoint.rsplit(":", 1)[1]
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}"]
    ready = f"{server.endpoint}/storage/v1/b?project=genaug-test"
    with local_server([*argv, "--in-memory"], ready, tmp_path_factory.mktemp("gcs"), "GCS emulator"):
        yield server


@pytest.fixture
def gs_root(gcs_server: GCSServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """``gs://<fresh bucket>/root`` with ``STORAGE_EMULATOR_HOST`` pointing this process at the emulator.

    ``GENAUG_STATE_DIR`` (the local side of a URI root: queue database, caches) goes to ``tmp_path``.
    """
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    for key, value in gcs_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GENAUG_STATE_DIR", str(tmp_path / "genaug-state"))
    return f"gs://{gcs_server.make_bucket()}/root"


class ReplayGenerator(nn.Module):
    """A fake generator: 'samples' are real images of the requested class from a fixed pool."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, noise_dim: int = 4):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # generate_uint8 asks for the device
        self.pool, self.pool_labels, self.noise_dim = images, labels, noise_dim

    @torch.no_grad()
    def sample(self, labels, generator=None, temperature=1.0, noise=None):
        pick = []
        for i, y in enumerate(labels.tolist()):
            idx = torch.nonzero(self.pool_labels == y).flatten()
            pick.append(self.pool[idx[i % len(idx)]])
        return torch.stack(pick)
