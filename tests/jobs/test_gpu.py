"""The GPU path (``--gpu``, fractional GPUs): runs where CUDA exists, skipped elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jobs.generate import run_job_with_ray_tasks, validate_request
from jobs.store.registry import Registry
from jobs.train import TrainSettings, train
from models.checkpoint import load_checkpoint
from models.sampling import generate_uint8

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.slow,
]


@pytest.mark.parametrize(
    "kind,dataset,compile_",
    [("cgan", "digits", False), ("cvae", "shapes:16", False), ("cvae", "digits", True)],
)
def test_train_on_gpu_bf16_nccl_registers_a_cpu_loadable_model(ray_local, home, kind, dataset, compile_):
    info = train(
        TrainSettings(
            model=kind,
            dataset=dataset,
            name=f"gpu-{kind}",
            workers=1,
            gpu=True,
            compile=compile_,
            epochs=3,
            checkpoint_every=1,
        ),
        home,
        quiet=True,
    )
    mv = Registry(home).resolve(info["ref"])
    history = json.loads((mv.path / "history.json").read_text())
    losses = [v for h in history for k, v in h.items() if k.endswith("loss")]
    assert len(history) == 3 and losses and np.isfinite(losses).all(), f"non-finite bf16 losses: {losses}"
    model = load_checkpoint(mv.path).model  # weights saved from CUDA load on the CPU
    assert next(model.parameters()).device.type == "cpu"
    images = generate_uint8(model, np.arange(20) % len(mv.info["classes"]), seed=1)
    assert images.dtype == np.uint8 and images.std() > 0


def test_sampling_on_gpu_matches_cpu_within_one_grey_level(model_home):
    ref = "tiny-cgan:v1"
    path = Registry(model_home).resolve(ref).path
    labels = np.arange(200) % 10
    cpu = generate_uint8(load_checkpoint(path).model, labels, seed=7).astype(int)
    gpu = generate_uint8(load_checkpoint(path, device="cuda").model, labels, seed=7).astype(int)
    assert np.abs(cpu - gpu).mean() < 1.0
    assert np.abs(cpu - gpu).max() <= 8


def test_standalone_job_with_fractional_gpus_is_exact(ray_local, model_home):
    spec = validate_request(
        {"model": "tiny-cgan", "counts": {"0": 300, "5": 700}, "shard_rows": 100, "seed": 2},
        model_home,
        job_id="j-gpu1",
    )
    manifest = run_job_with_ray_tasks(spec, "j-gpu1", model_home, progress=lambda _: None, gpu_per_task=0.25)
    out = Path(spec.output)
    df = pd.read_parquet(out / "data")
    assert df.label.value_counts().to_dict() == {5: 700, 0: 300}
    assert df.key.is_unique and manifest.verify_dataset(out).ok
    assert manifest["totals"]["rows"] == 1000


def test_serve_replicas_share_one_gpu(ray_local, model_home):
    from cluster.client import Client
    from cluster.service import deploy, free_port, undeploy

    url = deploy(
        str(model_home),
        "127.0.0.1",
        free_port(),
        {"min_replicas": 2, "max_replicas": 2, "gpu_per_replica": 0.5},
    )
    try:
        client = Client(url, token="")
        body = client.request(
            "POST", "/v1/samples", {"model": "tiny-cgan", "per_class": 3, "seed": 1, "format": "json"}
        )
        assert sorted(s["label"] for s in body["samples"]) == sorted(list(range(10)) * 3)
        stats = client.request("GET", "/v1/stats")["generator"]
        assert stats["device"].startswith("cuda")
    finally:
        undeploy()
