"""Model checkpoints: a directory with fixed file names, loadable on CPU without unpickling objects.

Layout::

    config.json   {"type": "cvae" | "cgan", "config": {<dataclass fields>}}
    weights.pt    torch.save(state_dict) with CPU tensors, read back with weights_only=True
    classes.json  ["zero", "one", ...]  (index = label)
    data.json     facts about the training data, e.g. {"spec": ..., "fingerprint": ...}

Each file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from models.cgan import CGAN, CGANConfig
from models.cvae import CVAE, CVAEConfig

MODEL_TYPES: dict[str, tuple[type, type[nn.Module]]] = {
    "cvae": (CVAEConfig, CVAE),
    "cgan": (CGANConfig, CGAN),
}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CLASSES_FILE = "classes.json"
DATA_FILE = "data.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, CLASSES_FILE, DATA_FILE)  # also the hash order


class LoadedCheckpoint(NamedTuple):
    """What ``load_checkpoint`` returns."""

    model: nn.Module  # in eval mode, on the requested device
    model_type: str  # "cvae" | "cgan"
    config: Any  # the frozen config dataclass
    classes: list[str]  # class names, index = label
    data: dict  # training data facts as saved


def _valid_types() -> str:
    return ", ".join(MODEL_TYPES)


def build_model(model_type: str, config: dict | Any) -> nn.Module:
    """A fresh model of ``model_type`` ("cvae" | "cgan") from a config dataclass or a dict of its fields."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; valid: {_valid_types()}")
    config_cls, model_cls = MODEL_TYPES[model_type]
    if isinstance(config, config_cls):
        return model_cls(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        raise ValueError(
            f"config {type(config).__name__} does not fit model type {model_type!r}; "
            f"valid: {config_cls.__name__} or a dict of its fields"
        )
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict or {config_cls.__name__}, got {type(config).__name__}")
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(f"unknown {model_type} config keys {unknown}; valid: {', '.join(fields)}")
    return model_cls(config_cls(**config))


def model_type_of(model: nn.Module) -> str:
    """ "cvae" or "cgan" from the model's class (ValueError for anything else)."""
    for name, (_, model_cls) in MODEL_TYPES.items():
        if isinstance(model, model_cls):
            return name
    raise ValueError(
        f"cannot checkpoint a {type(model).__name__}; "
        f"valid: {', '.join(c.__name__ for _, c in MODEL_TYPES.values())}"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    # models/ may not import jobs/, so this mirrors jobs.store.location.write_bytes_atomic in four lines.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _check_classes(classes: Any, num_classes: int, where: str) -> list[str]:
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{where}: classes must be a list of strings, got {classes!r}")
    if len(classes) != num_classes:
        raise ValueError(f"{where}: {len(classes)} class names for a model with num_classes={num_classes}")
    return classes


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, classes: list[str], data: dict) -> None:
    """Write ``model`` (a CVAE or CGAN) into ``directory`` (created if missing) as the four fixed files."""
    model_type = model_type_of(model)
    config = model.config
    classes = _check_classes(list(classes), config.num_classes, "save_checkpoint")
    if not isinstance(data, dict):
        raise ValueError(f"data must be a dict, got {type(data).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_atomic(directory / WEIGHTS_FILE, buffer.getvalue())
    _write_atomic(directory / CLASSES_FILE, _json_bytes(classes))
    _write_atomic(directory / DATA_FILE, _json_bytes(data))
    # config.json last: its presence means the other files are complete.
    _write_atomic(
        directory / CONFIG_FILE, _json_bytes({"type": model_type, "config": dataclasses.asdict(config)})
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupted checkpoint file {path}: {e}") from e


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint written by ``save_checkpoint`` onto ``device`` (the model comes back in eval mode).

    Raises FileNotFoundError naming a missing file, ValueError naming a corrupted one.
    """
    directory = Path(directory)
    for name in CHECKPOINT_FILES:
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"checkpoint file {name} missing in {directory}; expected: {', '.join(CHECKPOINT_FILES)}"
            )
    config_path = directory / CONFIG_FILE
    meta = _read_json(config_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "type" not in meta:
        raise ValueError(
            f'corrupted checkpoint file {config_path}: expected {{"type": ..., "config": {{...}}}}'
        )
    try:
        model = build_model(meta["type"], meta["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid checkpoint file {config_path}: {e}") from e
    classes = _check_classes(
        _read_json(directory / CLASSES_FILE), model.config.num_classes, str(directory / CLASSES_FILE)
    )
    data = _read_json(directory / DATA_FILE)
    weights_path = directory / WEIGHTS_FILE
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, or a pickle that is not plain tensors
        raise ValueError(f"corrupted checkpoint file {weights_path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(
            f"corrupted checkpoint file {weights_path}: expected a state dict, got {type(state).__name__}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint file {weights_path} does not match {config_path}: {e}") from e
    model.to(device).eval()
    return LoadedCheckpoint(model, meta["type"], model.config, classes, data)


def checkpoint_hash(directory: str | os.PathLike) -> str:
    """sha256 hex digest over the fixed files, in the order of CHECKPOINT_FILES, names included."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint file {name} missing in {directory}; expected: {', '.join(CHECKPOINT_FILES)}"
            )
        content = path.read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
