"""``mnist:DIR`` and ``fashion-mnist:DIR``: the idx files, read with torchvision and ``download=False``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from models.sampling import uint8_to_float

# --- torchvision formats --------------------------------------------------------------------------


def load_mnist_like(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    # torchvision's names without ".gz": with download=False it reads only the uncompressed files.
    expected = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]

    def not_found(problem: str) -> FileNotFoundError:
        gz = [f for f in expected if not (raw / f).is_file() and (raw / f"{f}.gz").is_file()]
        hint = f"; found {', '.join(f + '.gz' for f in gz)}: decompress with `gunzip`" if gz else ""
        return FileNotFoundError(
            f"{name} dataset in {root} is {problem}: expected the uncompressed files "
            f"{', '.join(str(raw / f) for f in expected)}{hint} (nothing is downloaded)"
        )

    missing = [f for f in expected if not (raw / f).is_file()]
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except Exception as e:  # torchvision raises RuntimeError/AssertionError/... on missing or bad files
        raise not_found(f"missing {', '.join(missing)}" if missing else "unreadable") from e
    data, targets = ds.data, ds.targets
    if data.ndim != 3 or data.shape[0] != targets.shape[0] or (len(targets) and int(targets.max()) > 9):
        raise not_found(f"damaged ({tuple(data.shape)} images vs {tuple(targets.shape)} labels, labels <= 9)")
    classes = [str(i) for i in range(10)] if name == "mnist" else list(cls.classes)
    return uint8_to_float(data).unsqueeze(1).contiguous(), targets.long(), classes  # (N, 1, 28, 28)
