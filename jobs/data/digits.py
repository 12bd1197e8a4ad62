"""``digits``: scikit-learn's bundled 8x8 digits, split as scikit-learn's own classification example."""

from __future__ import annotations

import numpy as np
import torch

# --- digits -------------------------------------------------------------------------------------


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    n_train = len(digits.images) // 2  # 898: scikit-learn's "plot_digits_classification" split
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    x = torch.from_numpy(digits.images[part].astype(np.float32) / 8.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(digits.target[part].astype(np.int64))
    return x.contiguous(), y, [str(i) for i in range(10)]
