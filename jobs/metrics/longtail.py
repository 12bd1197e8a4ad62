"""Long-tailed balancing: does topping rare classes up with samples beat oversampling them?

Protocol, per seed: ``RARE_CLASSES`` classes (chosen by the seed) keep ``RARE_KEEP`` of their train images
(at least one), the others keep all of theirs. A generator is trained on that long-tailed set only
(``train_fn``, default ``train_generator`` with ``LONG_TAIL_RECIPES``). Two classifiers with the same
seed, the same classical augmentation (``classical_augmentation``: random crops, flips where safe) and the
same number of optimiser steps are trained on

- (a) *oversampling*: the long-tailed set with each rare class's images repeated up to the size of the
  largest class (the usual re-sampling baseline), and
- (b) *top-up*: the long-tailed set plus generated images of each rare class up to that same size, and
- (c) *mixed*: each rare class's real images cycled to ``LONG_TAIL_REAL_SHARE`` (half) of that size and
  generated images for the rest (the real share the augmentation-gain protocol uses too);
- (d) *full real*: the whole train split, every rare class with all its real images (as large as (b) when
  the classes are of one size): what the missing real images themselves would give. ceiling = (d) - (a)
  bounds what a top-up can buy with this classifier, unless samples teach more than the real images they
  stand in for;

all four are scored by balanced accuracy (the mean of per-class recalls) on the whole real test split.
gain = (b) - (a), gain_mixed = (c) - (a) and ceiling = (d) - (a), reported in pp as mean ± std (ddof=1) over
seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.data.images import ImageDataset
from jobs.metrics.classifier import (
    GAIN_CLASSIFIER,
    ClassifierConfig,
    Log,
    mean_std,
    predict,
    quiet,
    train_classifier,
)
from jobs.metrics.gain import (
    LowDataRecipe,
    TrainFn,
    classical_augmentation,
    classical_text,
    sample_images,
    train_generator,
)
from jobs.tasks import Call, run_calls

RARE_CLASSES = 3  # classes cut down
RARE_KEEP = 0.01  # share of a rare class's train images that is kept
LONG_TAIL_REAL_SHARE = 0.5  # arm (c): the rare class's real images, cycled, make this share of its target
# The generator sees the whole long-tailed set, class-balanced (each batch about 1/C of each class: with
# plain drawing a rare class is 60 of 42,180 Fashion-MNIST images, 0.09 per batch), the cGAN with DiffAugment
# (60 images of a class). Fashion-MNIST, 3 seeds, top-up arm: plain -15.3 / -16.8 pp (cVAE / cGAN),
# class-balanced -14.8 / -13.6 pp (benchmarks/QUALITY.md).
LONG_TAIL_RECIPES = {
    "cvae": LowDataRecipe(steps=1000, lr=1e-3, batch_size=64, class_balanced=True),
    "cgan": LowDataRecipe(steps=1000, lr=2e-4, batch_size=64, class_balanced=True, diffaug=True),
}


def long_tail_indices(labels: Tensor, rare: Sequence[int], keep: float, seed: int) -> Tensor:
    """Sorted train indices of the long-tailed set: ``keep`` of each ``rare`` class (>= 1), all others."""
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep must be in (0, 1), got {keep!r}")
    rng = np.random.default_rng(seed)
    lab = labels.numpy()
    chosen = [np.flatnonzero(~np.isin(lab, list(rare)))]
    for c in rare:
        idx = np.flatnonzero(lab == c)
        if len(idx) == 0:
            raise ValueError(f"class {c} has no train images; valid: a class present in the train split")
        chosen.append(rng.choice(idx, size=max(1, round(keep * len(idx))), replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def oversampled_indices(labels: Tensor, rare: Sequence[int], target: int) -> Tensor:
    """Indices into ``labels``: every non-rare image once, each rare class's images cycled to ``target``."""
    parts = [torch.nonzero(~torch.isin(labels, torch.tensor(list(rare))))[:, 0]]
    for c in rare:
        own = torch.nonzero(labels == c)[:, 0]
        parts.append(own.repeat(-(-target // len(own)))[:target])
    return torch.cat(parts)


def class_recalls(pred: Tensor, labels: Tensor, num_classes: int) -> dict[int, float]:
    """Per class present in ``labels``: the share of its images predicted as itself."""
    return {
        c: float((pred[labels == c] == c).float().mean()) for c in range(num_classes) if (labels == c).any()
    }


def balanced_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean of the per-class recalls (``class_recalls``)."""
    return float(np.mean(list(class_recalls(pred, labels, num_classes).values())))


def long_tail_gain(
    model_type: str,
    train: ImageDataset,
    test: ImageDataset,
    seeds: Sequence[int],
    *,
    train_fn: TrainFn | None = None,
    model_config: Mapping[str, Any] | None = None,
    recipe: LowDataRecipe | None = None,
    rare_classes: int = RARE_CLASSES,
    keep: float = RARE_KEEP,
    real_share: float = LONG_TAIL_REAL_SHARE,
    classifier_config: ClassifierConfig = GAIN_CLASSIFIER,
    workers: int = 1,
    log: Log = quiet,
) -> dict[str, Any]:
    """The protocol of this module's docstring on ``train``/``test``; per-seed rows and mean ± std. The
    seeds are independent calls (``long_tail_row``): ``workers`` > 1 runs that many at once as Ray tasks."""
    C = train.num_classes
    if not 1 <= rare_classes < C:
        raise ValueError(f"rare_classes must be in 1..{C - 1}, got {rare_classes!r}")
    if not seeds:
        raise ValueError("seeds must name at least one seed, e.g. (0, 1, 2)")
    if train_fn is None:
        r = recipe or LONG_TAIL_RECIPES[model_type]
        train_fn = functools.partial(train_generator, model_type, model_config=model_config, recipe=r)
    log(f"long tail, seeds {list(seeds)}: a generator on the long-tailed set each ...")
    calls = long_tail_calls(train, test, seeds, train_fn, classifier_config, rare_classes, keep, real_share)
    rows = list(run_calls(calls, workers, progress=log).values())
    return long_tail_summary(rows, real_share, rare_classes, keep)


def long_tail_row(
    train: ImageDataset,
    test: ImageDataset,
    seed: int,
    train_fn: TrainFn,
    rare_classes: int = RARE_CLASSES,
    keep: float = RARE_KEEP,
    real_share: float = LONG_TAIL_REAL_SHARE,
    classifier_config: ClassifierConfig = GAIN_CLASSIFIER,
) -> dict[str, Any]:
    """One seed of ``long_tail_gain``: the four arms' balanced accuracies, rare-class recalls and gains."""
    C = train.num_classes
    rare = sorted(np.random.default_rng(seed).choice(C, size=rare_classes, replace=False).tolist())
    idx = long_tail_indices(train.labels, rare, keep, seed)
    x_lt, y_lt = train.images[idx], train.labels[idx]
    counts = torch.bincount(y_lt, minlength=C)
    target = int(counts.max())
    gen = train_fn(x_lt, y_lt, train.classes, seed)
    extra_y = torch.cat([torch.full((target - int(counts[c]),), c) for c in rare])  # (M,)
    x_syn = sample_images(gen, extra_y, seed)  # (M, C, H, W)
    x_top, y_top = torch.cat([x_lt, x_syn]), torch.cat([y_lt, extra_y])
    over = oversampled_indices(y_lt, rare, target)
    x_over, y_over = x_lt[over], y_lt[over]
    # (c) mixed: each rare class's real images cycled to real_share of the target, samples the rest
    n_real = round(real_share * target)
    half = oversampled_indices(y_lt, rare, n_real)
    keep_syn = torch.cat([torch.nonzero(extra_y == c)[:, 0][: target - n_real] for c in rare])
    x_mix, y_mix = torch.cat([x_lt[half], x_syn[keep_syn]]), torch.cat([y_lt[half], extra_y[keep_syn]])
    steps = classifier_config.steps_for(len(y_top))
    cfg = classical_augmentation(
        train.spec, dataclasses.replace(classifier_config, min_steps=steps, max_steps=steps)
    )
    row: dict[str, Any] = {"seed": int(seed), "rare": rare, "rare_kept": [int(counts[c]) for c in rare]}
    arms = {
        "oversampled": (x_over, y_over),
        "topped_up": (x_top, y_top),
        "mixed": (x_mix, y_mix),
        "full_real": (train.images, train.labels),
    }
    for arm, (x, y) in arms.items():
        net = train_classifier(x, y, C, seed, cfg)
        recalls = class_recalls(predict(net, test.images), test.labels, C)
        row[arm] = float(np.mean(list(recalls.values())))  # balanced accuracy
        row[arm + "_rare_recall"] = float(np.mean([recalls[c] for c in rare]))
    row["gain"] = row["topped_up"] - row["oversampled"]
    row["gain_mixed"] = row["mixed"] - row["oversampled"]
    row["ceiling"] = row["full_real"] - row["oversampled"]
    row["classifier_steps"] = steps
    row["classical"] = classical_text(cfg)
    return row


def long_tail_calls(
    train: ImageDataset,
    test: ImageDataset,
    seeds: Sequence[int],
    train_fn: TrainFn,
    classifier_config: ClassifierConfig = GAIN_CLASSIFIER,
    rare_classes: int = RARE_CLASSES,
    keep: float = RARE_KEEP,
    real_share: float = LONG_TAIL_REAL_SHARE,
) -> dict[str, Call]:
    """``long_tail_row`` of each seed as a named call for ``jobs.tasks.run_calls`` (in seed order)."""
    settings = dict(rare_classes=rare_classes, keep=keep, real_share=real_share)
    return {
        f"long_tail seed {s}": Call(
            long_tail_row,
            dict(
                train=train,
                test=test,
                seed=s,
                train_fn=train_fn,
                classifier_config=classifier_config,
                **settings,
            ),
        )
        for s in seeds
    }


def long_tail_summary(
    rows: Sequence[Mapping[str, Any]],
    real_share: float = LONG_TAIL_REAL_SHARE,
    rare_classes: int = RARE_CLASSES,
    keep: float = RARE_KEEP,
) -> dict[str, Any]:
    """``long_tail_gain``'s result from its per-seed ``rows`` (``long_tail_row``): mean ± std (ddof=1)."""

    def stat(key: str) -> dict[str, float]:
        return dict(zip(("mean", "std"), mean_std([r[key] for r in rows]), strict=True))

    gain, gain_mixed, ceiling = stat("gain"), stat("gain_mixed"), stat("ceiling")
    return {
        "seeds": [int(r["seed"]) for r in rows],
        "oversampled": stat("oversampled"),
        "topped_up": stat("topped_up"),
        "gain": gain,
        "gain_pp": {"mean": 100 * gain["mean"], "std": 100 * gain["std"]},
        "gain_mixed": gain_mixed,
        "mixed": stat("mixed"),
        "gain_mixed_pp": {"mean": 100 * gain_mixed["mean"], "std": 100 * gain_mixed["std"]},
        "full_real": stat("full_real"),
        "ceiling": ceiling,
        "ceiling_pp": {"mean": 100 * ceiling["mean"], "std": 100 * ceiling["std"]},
        "real_share": real_share,
        "per_seed": [
            {k: v for k, v in r.items() if k not in ("classifier_steps", "classical")} for r in rows
        ],
        "rare_classes": rare_classes,
        "keep": keep,
        "classifier_steps": rows[-1]["classifier_steps"],
        "classical": rows[-1]["classical"],
    }
