"""``cifar10:ROOT``: the python pickles of CIFAR-10 from local files (checked against their MD5s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.sampling import uint8_to_float


def load_cifar10(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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
    x = uint8_to_float(data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return x, torch.from_numpy(targets), classes
