"""Checkpoints: round trips at every size, hashes, missing/corrupted files, build_model validation."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from models import (
    CGAN,
    CHECKPOINT_FILES,
    CVAE,
    SUPPORTED_SIZES,
    CGANConfig,
    CVAEConfig,
    build_model,
    checkpoint_hash,
    load_checkpoint,
    save_checkpoint,
)

CLASSES = [f"digit-{i}" for i in range(10)]
DATA = {"spec": "digits", "fingerprint": "abc123"}
TINY = {
    "cvae": {"hidden": 32, "latent_dim": 4, "conv_width": 8, "embed_dim": 4},
    "cgan": {"z_dim": 8, "g_hidden": 32, "d_hidden": 32, "conv_width": 8, "embed_dim": 4},
}


def trained_tiny(model_type: str, size: int = 8, channels: int = 1):
    """A tiny model whose buffers (BatchNorm stats, spectral-norm vectors, EMA) moved away from init."""
    torch.manual_seed(0)
    model = build_model(model_type, {"image_size": size, "channels": channels, **TINY[model_type]})
    x = torch.rand(4, channels, size, size) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    if isinstance(model, CGAN):
        model.generator(torch.randn(4, 8), y)
        model.discriminator(x, y)
        with torch.no_grad():
            for p in model.generator.parameters():
                p.add_(0.01)
        model.update_ema()
    else:
        with torch.no_grad():
            model.log_sigma.fill_(-0.5)
    return model


def sample(model, seed: int = 5) -> torch.Tensor:
    return model.sample(torch.tensor([0, 4, 9]), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("model_type", "size", "channels"), list(itertools.product(("cvae", "cgan"), SUPPORTED_SIZES, (1, 3)))
)
def test_round_trip_is_exact(tmp_path, model_type, size, channels):
    model = trained_tiny(model_type, size, channels)
    save_checkpoint(model, tmp_path / "ckpt", CLASSES, DATA)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(CHECKPOINT_FILES)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.model_type == model_type
    assert loaded.config == model.config
    assert (loaded.classes, loaded.data) == (CLASSES, DATA)
    assert not loaded.model.training
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    model.eval()
    assert torch.equal(sample(model), sample(loaded.model))


def test_config_json_layout(tmp_path):
    save_checkpoint(trained_tiny("cgan"), tmp_path, CLASSES, DATA)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["type"] == "cgan"
    assert meta["config"] == {**CGANConfig(**TINY["cgan"]).__dict__}
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASSES
    assert json.loads((tmp_path / "data.json").read_text()) == DATA


def test_hash_is_stable_and_content_sensitive(tmp_path):
    model = trained_tiny("cvae")
    save_checkpoint(model, tmp_path / "a", CLASSES, DATA)
    save_checkpoint(model, tmp_path / "b", CLASSES, DATA)
    first = checkpoint_hash(tmp_path / "a")
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert first == checkpoint_hash(tmp_path / "b")
    save_checkpoint(model, tmp_path / "c", CLASSES, {**DATA, "fingerprint": "other"})
    assert checkpoint_hash(tmp_path / "c") != first
    with torch.no_grad():
        model.log_sigma.add_(1e-3)
    save_checkpoint(model, tmp_path / "d", CLASSES, DATA)
    assert checkpoint_hash(tmp_path / "d") != first


@pytest.mark.parametrize("missing", CHECKPOINT_FILES)
def test_missing_file_is_named(tmp_path, missing):
    save_checkpoint(trained_tiny("cvae"), tmp_path, CLASSES, DATA)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        checkpoint_hash(tmp_path)


@pytest.mark.parametrize("keep", [0, 100, 0.5, 0.9])
def test_truncated_weights_raise_value_error(tmp_path, keep):
    save_checkpoint(trained_tiny("cgan"), tmp_path, CLASSES, DATA)
    path = tmp_path / "weights.pt"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="weights.pt"):
        load_checkpoint(tmp_path)


class Payload:
    """An arbitrary object: weights_only loading must refuse to build it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_weights_that_need_unpickling_are_refused(tmp_path, capsys):
    save_checkpoint(trained_tiny("cvae"), tmp_path, CLASSES, DATA)
    torch.save({"x": Payload()}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="weights.pt"):
        load_checkpoint(tmp_path)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("config.json", "{not json", "config.json"),
        ("config.json", '{"type": "diffusion", "config": {}}', "cvae, cgan"),
        ("config.json", '{"type": "cvae", "config": {"image_size": 12}}', "image_size=12"),
        (
            "config.json",
            json.dumps({"type": "cvae", "config": {**TINY["cvae"], "hidden": 33}}),
            "does not match",
        ),
        ("config.json", "[1, 2]", "config.json"),
        ("classes.json", '["a", "b"]', "num_classes=10"),
        ("data.json", "", "data.json"),
    ],
)
def test_corrupted_metadata_raises_value_error(tmp_path, file, content, message):
    save_checkpoint(trained_tiny("cvae"), tmp_path, CLASSES, DATA)
    (tmp_path / file).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_checkpoint(tmp_path)


def test_build_model_validates_type_and_keys():
    assert isinstance(build_model("cvae", {}), CVAE)
    assert isinstance(build_model("cgan", CGANConfig(**TINY["cgan"])), CGAN)
    with pytest.raises(ValueError, match="unknown model type 'gan'; valid: cvae, cgan"):
        build_model("gan", {})
    with pytest.raises(
        ValueError, match=r"unknown cvae config keys \['colour', 'z_dim'\]; valid: image_size"
    ):
        build_model("cvae", {"z_dim": 3, "colour": 1})
    with pytest.raises(ValueError, match="does not fit model type 'cgan'"):
        build_model("cgan", CVAEConfig())
    with pytest.raises(ValueError, match="channels=2"):
        build_model("cgan", {"channels": 2})


def test_save_rejects_wrong_class_count_and_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="3 class names for a model with num_classes=10"):
        save_checkpoint(trained_tiny("cvae"), tmp_path, ["a", "b", "c"], DATA)
    with pytest.raises(ValueError, match="cannot checkpoint a Linear; valid: CVAE, CGAN"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path, CLASSES, DATA)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_type", ["cvae", "cgan"])
def test_model_saved_from_cuda_loads_on_cpu(tmp_path, model_type):
    model = trained_tiny(model_type).cuda().eval()
    save_checkpoint(model, tmp_path, CLASSES, DATA)
    loaded = load_checkpoint(tmp_path, device="cpu")
    assert all(t.device.type == "cpu" for t in loaded.model.state_dict().values())
    torch.testing.assert_close(sample(loaded.model), sample(model).cpu(), rtol=1e-4, atol=1e-4)
