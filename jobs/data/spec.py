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
- ``mnist:DIR``, ``fashion-mnist:DIR``: the IDX files (gzipped or not) flat in ``DIR``, as Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) and the original sites ship
  them, or in torchvision's ``DIR/MNIST/raw`` / ``DIR/FashionMNIST/raw`` (``jobs.data.mnist``). MNIST
  class names are simplified to ``"0"``..``"9"`` so that ``digits`` and ``mnist`` models share class names.
- ``cifar10:ROOT``: torchvision's reader with ``download=False``:
  ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` with their published MD5s.
- ``imagefolder:DIR``: ``DIR/<class>/<image>`` (torchvision ``ImageFolder``; class names are the folder
  names). If ``DIR`` holds both ``train/`` and ``test/`` they are the splits, else all of ``DIR`` is
  the train split. Images are grey (1 channel) if every image is grey, else RGB.
- ``parquet:PATH``: genaug's shard format (Hugging Face ``datasets`` layout): a file, or a directory
  with ``data/*.parquet`` or ``*.parquet``; columns ``image`` struct<bytes, path> (PNG bytes),
  ``label`` int64, ``label_name`` string. Train split only.

``image_size``: when given and different from the native size, images are resized with antialiased
bilinear interpolation (non-square folder/parquet images are centre-cropped to a square first)."""

from __future__ import annotations

import numbers
from pathlib import Path

from jobs.data.cifar10 import load_cifar10
from jobs.data.digits import load_digits
from jobs.data.imagefolder import load_imagefolder
from jobs.data.images import SPLITS, ImageDataset, resize_images
from jobs.data.mnist import load_mnist_like
from jobs.data.parquet import load_parquet
from jobs.data.shapes import make_shapes
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


_NO_ARG = ("digits", "shapes")


_NEEDS_ARG = ("mnist", "fashion-mnist", "cifar10", "imagefolder", "parquet")


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
        images, labels, classes = load_digits(split)
    elif name == "shapes":
        images, labels, classes = make_shapes(split, int(arg) if arg else 32)
    elif name in ("mnist", "fashion-mnist"):
        images, labels, classes = load_mnist_like(name, _local_path(arg, spec), split)
    elif name == "cifar10":
        images, labels, classes = load_cifar10(_local_path(arg, spec), split)
    elif name == "imagefolder":
        images, labels, classes = load_imagefolder(_local_path(arg, spec), split, image_size)
    else:
        images, labels, classes = load_parquet(_local_path(arg, spec), split, image_size)
    if image_size is not None:
        images = resize_images(images, image_size)
    return ImageDataset(images=images, labels=labels, classes=tuple(classes), spec=spec, split=split)


def _local_path(arg: str, spec: str) -> Path:
    raw = arg[len("file://") :] if arg.startswith("file://") else arg
    if "://" in raw:
        raise _bad_spec(spec, f"{arg!r} is not a local path (use a local path or file://PATH)")
    return Path(raw).expanduser().absolute()
