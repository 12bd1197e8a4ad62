"""``mnist:DIR`` and ``fashion-mnist:DIR``: the four IDX files, gzipped or not, in either common layout.

- flat in ``DIR``, as Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) and
  the original sites ship them: ``DIR/train-images-idx3-ubyte.gz``, ``DIR/t10k-labels-idx1-ubyte.gz``, ...;
- torchvision's layout: ``DIR/MNIST/raw/...`` or ``DIR/FashionMNIST/raw/...``.

A file may be gzipped (``.gz``) or not; only the requested split's two files are read. Nothing is
downloaded. MNIST class names are simplified to ``"0"``..``"9"`` so that ``digits`` and ``mnist`` models
share class names; Fashion-MNIST keeps its published names.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from models.sampling import uint8_to_float

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
PREFIX = {"train": "train", "test": "t10k"}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


def file_names(split: str) -> tuple[str, str]:
    """The (images, labels) base names of a split, without ``.gz``."""
    return f"{PREFIX[split]}-images-idx3-ubyte", f"{PREFIX[split]}-labels-idx1-ubyte"


def layouts(name: str, root: Path) -> list[Path]:
    """The folders searched, in order: flat ``root``, then torchvision's ``root/<Folder>/raw``."""
    return [root, root / TORCHVISION_FOLDER[name] / "raw"]


def _find(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array (big-endian header: magic ``0x000008NN``, then NN dimension sizes) from ``path``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a damaged gzip stream
        raise FileNotFoundError(
            f"{path} is unreadable ({e}); valid: an IDX file, optionally gzipped"
        ) from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileNotFoundError(f"{path} is unreadable: {len(data)} bytes, shorter than an IDX header")
    magic = struct.unpack_from(">I", data)[0]
    if magic != (IDX_UBYTE << 8 | ndim):
        raise FileNotFoundError(
            f"{path} is unreadable: IDX magic {magic:#010x}, expected {IDX_UBYTE << 8 | ndim:#010x}"
        )
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise FileNotFoundError(
            f"{path} is unreadable: header says {dims} ({size} bytes), the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_like(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 1, 28, 28) in [-1, 1], int64 labels and class names of ``split``."""
    bases = file_names(split)
    for folder in layouts(name, root):
        found = [_find(folder, b) for b in bases]
        if all(found):
            break
    else:
        expected = [str(folder / b) for folder in layouts(name, root) for b in bases]
        partial = [str(p) for folder in layouts(name, root) for b in bases if (p := _find(folder, b))]
        have = f"; found only {', '.join(partial)}" if partial else ""
        raise FileNotFoundError(
            f"{name} {split} split in {root} is missing: expected both files (each optionally .gz) flat in "
            f"the folder (Debian's dataset-{name} package, the original site) or in torchvision's layout: "
            f"{', '.join(expected)}{have} (nothing is downloaded)"
        )
    images_path, labels_path = found
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if (
        images.shape[0] != labels.shape[0]
        or images.shape[1:] != (28, 28)
        or (len(labels) and labels.max() > 9)
    ):
        raise FileNotFoundError(
            f"{name} files in {images_path.parent} are damaged: {images.shape} images vs {labels.shape} "
            "labels; valid: N 28x28 images, N labels in 0..9"
        )
    classes = [str(i) for i in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    x = uint8_to_float(torch.from_numpy(images.copy())).unsqueeze(1).contiguous()  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64)), classes
