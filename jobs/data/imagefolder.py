"""``imagefolder:DIR``: ``DIR/<class>/<image>`` as torchvision's ``ImageFolder``, optional train/test."""

from __future__ import annotations

from pathlib import Path

import torch

from jobs.data.images import open_image, pil_batch


def load_imagefolder(
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
        train = ImageFolder(str(train_dir), loader=open_image)
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

        folder = _TrainClasses(str(test_dir), loader=open_image, allow_empty=True)
        if not folder.samples:
            raise FileNotFoundError(
                f"imagefolder {test_dir} holds no images; expected {test_dir}/<class>/<image>"
            )
    images = pil_batch([folder.loader(p) for p, _ in folder.samples], image_size, str(folder.root))
    labels = torch.tensor([y for _, y in folder.samples], dtype=torch.int64)
    return images, labels, classes
