"""Image datasets by spec string: ``load_dataset("mnist:/data", split="test", image_size=32)``.

Every dataset is loaded into memory as one ``ImageDataset``: float32 images ``(N, C, H, W)`` in
``[-1, 1]`` (``C`` is 1 or 3, ``H == W``), int64 labels and class names. Nothing is cached on disk.

Spec forms (``DATASET_FORMS``):

- ``digits``: scikit-learn's bundled 8x8 digits (no download). Split as scikit-learn's digits
  classification example: first half (898) train, second half (899) test, no shuffle. Values 0..16
  map to ``x / 8 - 1``. Classes ``"0"``..``"9"``.
- ``shapes`` / ``shapes:SIZE``: procedurally generated RGB shapes (circle, square, triangle, cross,
  ring) at random colour, position and scale on a dark background; 600 train / 200 test images per
  class, deterministic (one fixed seed per split), default size 32.
- ``mnist:ROOT``, ``fashion-mnist:ROOT``, ``cifar10:ROOT``: torchvision's readers with
  ``download=False`` (nothing is downloaded). MNIST wants the *uncompressed* files
  ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (all four, whatever the split);
  Fashion-MNIST the same under ``ROOT/FashionMNIST/raw``; CIFAR-10 wants
  ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` with their published MD5s.
  MNIST class names are simplified to ``"0"``..``"9"`` (torchvision says ``"0 - zero"``) so that
  ``digits`` and ``mnist`` models share class names; Fashion-MNIST and CIFAR-10 keep torchvision's.
- ``imagefolder:DIR``: ``DIR/<class>/<image>`` (torchvision ``ImageFolder``; class names are the folder
  names). If ``DIR`` holds both ``train/`` and ``test/`` they are the splits, else all of ``DIR`` is
  the train split. Images are grey (1 channel) if every image is grey, else RGB.
- ``parquet:PATH``: genaug's shard format (Hugging Face ``datasets`` layout): a file, or a directory
  with ``data/*.parquet`` or ``*.parquet``; columns ``image`` struct<bytes, path> (PNG bytes),
  ``label`` int64, ``label_name`` string. Train split only.

``image_size``: when given and different from the native size, images are resized with antialiased
bilinear interpolation (non-square folder/parquet images are centre-cropped to a square first).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.blocks import SUPPORTED_SIZES  # one list of image sides for models and data

DATASET_FORMS = (
    "digits",
    "shapes",
    "shapes:SIZE",
    "mnist:ROOT",
    "fashion-mnist:ROOT",
    "cifar10:ROOT",
    "imagefolder:DIR",
    "parquet:PATH",
)
SPLITS = ("train", "test")
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")

_NO_ARG = ("digits", "shapes")
_NEEDS_ARG = ("mnist", "fashion-mnist", "cifar10", "imagefolder", "parquet")
_SHAPES_PER_CLASS = {"train": 600, "test": 200}
_SHAPES_SEED = {"train": 20240601, "test": 20240602}  # different seeds: test images are new images
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")


@dataclass(frozen=True, eq=False)
class ImageDataset(torch.utils.data.Dataset):
    """An in-memory labelled image dataset; ``ds[i] -> (image (C, H, W) in [-1, 1], int label)``."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1], C in {1, 3}, H == W
    labels: torch.Tensor  # (N,) int64, each in [0, num_classes)
    classes: tuple[str, ...]  # class names, index = label
    spec: str  # the spec string it was loaded from
    split: str  # "train" | "test"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))  # lists accepted
        im, lb = self.images, self.labels
        if (
            im.dtype != torch.float32
            or im.ndim != 4
            or im.shape[1] not in (1, 3)
            or im.shape[2] != im.shape[3]
        ):
            raise ValueError(
                f"images must be float32 (N, C, H, W) with C in (1, 3) and H == W; "
                f"got {im.dtype} {tuple(im.shape)}"
            )
        if lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({im.shape[0]},); got {lb.dtype} {tuple(lb.shape)}"
            )
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if len(lb) and (int(lb.min()) < 0 or int(lb.max()) >= len(self.classes)):
            raise ValueError(
                f"labels span {int(lb.min())}..{int(lb.max())}; valid: 0..{len(self.classes) - 1} "
                f"for {len(self.classes)} classes"
            )
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_size(self) -> int:
        """Side length H (== W)."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (RGB)."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content (shape, image bytes, labels, class names); independent of spec/split."""
        h = hashlib.sha256()
        h.update(json.dumps({"shape": list(self.images.shape), "classes": list(self.classes)}).encode())
        h.update(self.images.contiguous().numpy().astype("<f4", copy=False).tobytes())
        h.update(self.labels.contiguous().numpy().astype("<i8", copy=False).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"ImageDataset(spec={self.spec!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={self.num_classes})"
        )


def _bad_spec(spec: object, why: str) -> ValueError:
    return ValueError(f"invalid dataset spec {spec!r}: {why}; valid forms: {', '.join(DATASET_FORMS)}")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec: ``"mnist:/d" -> ("mnist", "/d")``, ``"digits" -> ("digits", None)``; else ValueError."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(spec, "empty")
    name, sep, arg = spec.strip().partition(":")
    name = name.lower()
    if name not in _NO_ARG + _NEEDS_ARG:
        raise _bad_spec(spec, f"unknown dataset {name!r}")
    if name in _NEEDS_ARG:
        if not arg:
            raise _bad_spec(spec, f"{name} needs a path after ':'")
        return name, arg
    if name == "digits" and sep:
        raise _bad_spec(spec, "digits takes no argument")
    if name == "shapes" and sep:
        if not arg.isdigit() or int(arg) not in SUPPORTED_SIZES:
            raise _bad_spec(spec, f"shapes size {arg!r} is not one of {SUPPORTED_SIZES}")
        return name, arg
    return name, None


def load_dataset(spec: str, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """Load the ``split`` of the dataset named by ``spec`` into memory, resized to ``image_size`` if given."""
    name, arg = parse_spec(spec)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if image_size is not None:
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, numbers.Integral)
            or (int(image_size) not in SUPPORTED_SIZES)
        ):
            raise ValueError(
                f"unsupported image size {image_size!r}; valid: {', '.join(map(str, SUPPORTED_SIZES))}"
            )
        image_size = int(image_size)
    if name == "digits":
        images, labels, classes = _load_digits(split)
    elif name == "shapes":
        images, labels, classes = _make_shapes(split, int(arg) if arg else 32)
    elif name in ("mnist", "fashion-mnist"):
        images, labels, classes = _load_mnist_like(name, _local_path(arg, spec), split)
    elif name == "cifar10":
        images, labels, classes = _load_cifar10(_local_path(arg, spec), split)
    elif name == "imagefolder":
        images, labels, classes = _load_imagefolder(_local_path(arg, spec), split, image_size)
    else:
        images, labels, classes = _load_parquet(_local_path(arg, spec), split, image_size)
    if image_size is not None:
        images = resize_images(images, image_size)
    return ImageDataset(images=images, labels=labels, classes=tuple(classes), spec=spec, split=split)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)``, antialiased bilinear; no-op if already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(-1.0, 1.0).contiguous()


def denormalize_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, C)`` (rounded, clipped)."""
    x = ((images.detach().cpu().float() + 1.0) * 127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)


def normalize_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [-1, 1]: the inverse of ``denormalize_uint8``."""
    return _uint8_to_float(images).permute(0, 3, 1, 2).contiguous()


def _uint8_to_float(arr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (same layout)."""
    return torch.as_tensor(np.asarray(arr)).float().div_(127.5).sub_(1.0)


def _local_path(arg: str, spec: str) -> Path:
    raw = arg[len("file://") :] if arg.startswith("file://") else arg
    if "://" in raw:
        raise _bad_spec(spec, f"{arg!r} is not a local path (use a local path or file://PATH)")
    return Path(raw).expanduser().absolute()


# --- digits -------------------------------------------------------------------------------------


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    n_train = len(digits.images) // 2  # 898: scikit-learn's "plot_digits_classification" split
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    x = torch.from_numpy(digits.images[part].astype(np.float32) / 8.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(digits.target[part].astype(np.int64))
    return x.contiguous(), y, [str(i) for i in range(10)]


# --- shapes -------------------------------------------------------------------------------------


def _make_shapes(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Draw the procedural shapes split: exact class balance, deterministic per split."""
    rng = np.random.default_rng(_SHAPES_SEED[split])
    k = len(SHAPE_CLASSES)
    n = _SHAPES_PER_CLASS[split] * k
    labels = rng.permutation(np.repeat(np.arange(k), n // k))
    r = rng.uniform(0.22, 0.4, n) * size  # shape "radius" in pixels
    cx = rng.uniform(r, size - r)  # centre keeps the shape inside the image
    cy = rng.uniform(r, size - r)
    fg = rng.uniform(0.35, 1.0, (n, 3))
    fg[np.arange(n), rng.integers(0, 3, n)] = 1.0  # one saturated channel: always bright
    bg = rng.uniform(0.0, 0.15, (n, 3))  # dark background

    coords = np.arange(size, dtype=np.float32) + 0.5
    mask = np.empty((n, size, size), dtype=bool)
    for i, cls in enumerate(SHAPE_CLASSES):
        sel = np.flatnonzero(labels == i)
        rr = r[sel, None, None].astype(np.float32)
        dx = (coords[None, None, :] - cx[sel, None, None].astype(np.float32)) / rr  # (n_i, 1, W), units of r
        dy = (coords[None, :, None] - cy[sel, None, None].astype(np.float32)) / rr  # (n_i, H, 1)
        adx, ady = np.abs(dx), np.abs(dy)
        if cls in ("circle", "ring"):
            d2 = dx**2 + dy**2  # (n_i, H, W)
            m = (d2 <= 1.0) & (d2 >= 0.36) if cls == "ring" else d2 <= 1.0
        elif cls == "square":
            m = (adx <= 0.8) & (ady <= 0.8)
        elif cls == "triangle":  # apex up, base at dy = 0.7
            m = (dy >= -1.0) & (dy <= 0.7) & (adx <= (dy + 1.0) * (0.95 / 1.7))
        else:  # cross ("+")
            m = ((adx <= 0.28) & (ady <= 1.0)) | ((ady <= 0.28) & (adx <= 1.0))
        mask[sel] = m
    m = torch.from_numpy(mask).unsqueeze(1).float()  # (N, 1, H, W)
    bg_t = torch.from_numpy(bg.astype(np.float32))[:, :, None, None]  # (N, 3, 1, 1)
    fg_t = torch.from_numpy(fg.astype(np.float32))[:, :, None, None]
    x = ((bg_t * 2.0 - 1.0) + ((fg_t - bg_t) * 2.0) * m).clamp_(-1.0, 1.0)  # (N, 3, H, W)
    return x, torch.from_numpy(labels.astype(np.int64)), list(SHAPE_CLASSES)


# --- torchvision formats --------------------------------------------------------------------------


def _load_mnist_like(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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
    return _uint8_to_float(data).unsqueeze(1).contiguous(), targets.long(), classes  # (N, 1, 28, 28)


def _load_cifar10(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = datasets.CIFAR10
    folder = root / cls.base_folder
    files = [(f, md5) for f, md5 in cls.train_list + cls.test_list] + [
        (cls.meta["filename"], cls.meta["md5"])
    ]
    try:
        ds = cls(str(root), train=split == "train", download=False)
        data, targets = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
        classes = list(ds.classes)
        if data.shape[1:] != (32, 32, 3) or len(data) != len(targets) or not classes:
            raise ValueError(f"unexpected content: {data.shape} images, {targets.shape} labels")
    except Exception as e:  # torchvision: RuntimeError on missing/bad checksum; pickle/shape errors
        missing = [f for f, _ in files if not (folder / f).is_file()]
        bad = [f for f, md5 in files if (folder / f).is_file() and not check_integrity(str(folder / f), md5)]
        problem = "; ".join(
            p
            for p in (
                f"missing {', '.join(missing)}" if missing else "",
                f"checksum mismatch in {', '.join(bad)}" if bad else "",
            )
            if p
        )
        raise FileNotFoundError(
            f"cifar10 dataset in {root} is {problem or 'unreadable'}: expected "
            f"{', '.join(str(folder / f) for f, _ in files)} (the extracted cifar-10-python.tar.gz; "
            "nothing is downloaded)"
        ) from e
    x = _uint8_to_float(data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return x, torch.from_numpy(targets), classes


# --- PIL images (imagefolder, parquet) --------------------------------------------------------------


def _pil_batch(images: Sequence, image_size: int | None, where: str) -> torch.Tensor:
    """PIL images -> float (N, C, H, W) in [-1, 1]; C = 1 if every image is grey, else 3.

    Without ``image_size`` all images must share one square supported size. With it, non-square images
    are centre-cropped to a square; the caller resizes to ``image_size``.
    """
    if not images:
        raise ValueError(f"no images in {where}")
    arrays, grey = [], True
    for img in images:
        if img.mode in _GREY_MODES:
            a = np.asarray(img.convert("L"))  # (H, W)
        else:
            a = np.asarray(img.convert("RGB"))  # (H, W, 3)
            if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
                a = a[..., 0]
        grey = grey and a.ndim == 2
        arrays.append(a)
    sizes = sorted({a.shape[:2] for a in arrays})
    if image_size is None:
        if len(sizes) != 1 or sizes[0][0] != sizes[0][1] or sizes[0][0] not in SUPPORTED_SIZES:
            shown = ", ".join(f"{w}x{h}" for h, w in sizes[:5]) + (", ..." if len(sizes) > 5 else "")
            raise ValueError(
                f"images in {where} are {shown}; without --image-size they must all be one square size "
                f"from {SUPPORTED_SIZES}: pass --image-size (image_size=) with one of those to resize"
            )
    c = 1 if grey else 3
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(arrays):
        by_size.setdefault(a.shape[:2], []).append(i)
    side = image_size if image_size is not None else sizes[0][0]
    out = torch.empty((len(arrays), c, side, side), dtype=torch.float32)
    for (h, w), idx in by_size.items():
        if grey:
            stack = np.stack([arrays[i] for i in idx])[:, None]  # (n, 1, h, w)
        else:
            rgb = [arrays[i] if arrays[i].ndim == 3 else np.repeat(arrays[i][..., None], 3, -1) for i in idx]
            stack = np.stack(rgb).transpose(0, 3, 1, 2)  # (n, h, w, 3) -> (n, 3, h, w)
        t = _uint8_to_float(stack)
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        t = t[:, :, top : top + s, left : left + s]  # centre square
        out[idx] = resize_images(t.contiguous(), side)
    return out


def _open_image(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return img


def _load_imagefolder(
    root: Path, split: str, image_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder directory {root} does not exist; expected {root}/<class>/<image>"
        )
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if split == "test" and not has_splits:
        raise ValueError(
            f"imagefolder {root} has no test split; valid: split='train', or put the images under "
            f"{root}/train/<class>/ and {root}/test/<class>/"
        )
    train_dir = root / "train" if has_splits else root
    try:
        train = ImageFolder(str(train_dir), loader=_open_image)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"imagefolder {train_dir}: {e} Expected {train_dir}/<class>/<image> with images ending in "
            ".png, .jpg, .jpeg, .bmp, ... "
        ) from e
    classes = list(train.classes)
    folder = train
    if split == "test":
        test_dir = root / "test"
        extra = sorted({p.name for p in test_dir.iterdir() if p.is_dir()} - set(classes))
        if extra:
            raise ValueError(
                f"imagefolder {test_dir} has classes {extra} missing from train; valid: {classes}"
            )

        class _TrainClasses(ImageFolder):
            def find_classes(self, directory):  # the train split's classes fix the label indices
                return classes, {c: i for i, c in enumerate(classes)}

        folder = _TrainClasses(str(test_dir), loader=_open_image, allow_empty=True)
        if not folder.samples:
            raise FileNotFoundError(
                f"imagefolder {test_dir} holds no images; expected {test_dir}/<class>/<image>"
            )
    images = _pil_batch([folder.loader(p) for p, _ in folder.samples], image_size, str(folder.root))
    labels = torch.tensor([y for _, y in folder.samples], dtype=torch.int64)
    return images, labels, classes


def _parquet_files(path: Path) -> list[Path]:
    def visible(ps):  # skip temporary/hidden files (".tmp-...", "_SUCCESS")
        return sorted(p for p in ps if p.is_file() and not p.name.startswith((".", "_")))

    if path.is_file():
        return [path]
    if path.is_dir():
        files = visible((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []
        files = files or visible(path.glob("*.parquet"))
        if files:
            return files
    raise FileNotFoundError(
        f"no Parquet data at {path}; expected a .parquet file, {path}/data/*.parquet or {path}/*.parquet"
    )


def _load_parquet(
    path: Path, split: str, image_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if split != "train":
        raise ValueError(f"parquet dataset {path} has no test split; valid: split='train'")
    files = _parquet_files(path)
    tables = []
    for f in files:
        t = pq.read_table(f)
        missing = {"image", "label"} - set(t.column_names)
        if missing:
            raise ValueError(f"{f} lacks columns {sorted(missing)}; valid: image, label, label_name")
        tables.append(t.select([c for c in ("image", "label", "label_name") if c in t.column_names]))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"Parquet files under {path} have different schemas: {e}") from e

    names = _classlabel_names(pq.read_schema(files[0]).metadata)
    labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise ValueError(f"label column in {path} must hold non-negative integers; got {labels.dtype}")
    labels = labels.astype(np.int64)
    if names is None:
        names = _names_from_rows(labels, table, path)
    if len(labels) and labels.max() >= len(names):
        raise ValueError(f"label {int(labels.max())} in {path} has no class name; valid: 0..{len(names) - 1}")

    pil = []
    for i, cell in enumerate(table.column("image").to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise ValueError(f"row {i} of {path} has no image bytes; valid: image.bytes holding PNG data")
        pil.append(Image.open(io.BytesIO(data)))
    return _pil_batch(pil, image_size, str(path)), torch.from_numpy(labels), list(names)


def _classlabel_names(metadata: dict | None) -> list[str] | None:
    """ClassLabel names from the Hugging Face ``huggingface`` schema metadata, if present."""
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        label = json.loads(raw)["info"]["features"]["label"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(label, dict) and label.get("_type") == "ClassLabel" and label.get("names"):
        return [str(n) for n in label["names"]]
    return None


def _names_from_rows(labels: np.ndarray, table, path: Path) -> list[str]:
    """Class names from (label, label_name) pairs; labels without rows are named by their number."""
    if len(labels) == 0:
        raise ValueError(f"parquet dataset {path} has no rows")
    if "label_name" not in table.column_names:
        return [str(i) for i in range(int(labels.max()) + 1)]
    by_label: dict[int, str] = {}
    for y, n in zip(labels.tolist(), table.column("label_name").to_pylist(), strict=True):
        if by_label.setdefault(y, n) != n:
            raise ValueError(f"label {y} in {path} has two names: {by_label[y]!r} and {n!r}")
    return [str(by_label.get(i, i)) for i in range(int(labels.max()) + 1)]


__all__ = [
    "DATASET_FORMS",
    "SUPPORTED_SIZES",
    "SPLITS",
    "SHAPE_CLASSES",
    "ImageDataset",
    "parse_spec",
    "load_dataset",
    "resize_images",
    "denormalize_uint8",
]
