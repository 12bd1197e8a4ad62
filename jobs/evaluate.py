"""Evaluate a registered class-conditional generator on the real test split, protocol next to each number.

Launch::

    genaug eval --model digits-cgan            # latest version; --fast for a smoke run
    python -m jobs.evaluate --model digits-cgan:v2 --seeds 0,1,2
    ray job submit --working-dir . -- python -m jobs.evaluate --model digits-cgan

What is measured (definitions follow /work/shared/REFERENCE.md, "Evaluation of class-conditional
generators"; every function below states its exact protocol in its docstring):

- a *domain feature extractor*: a small CNN classifier trained on the dataset's train split, cached in
  ``<home>/cache/classifiers/<train fingerprint>.pt`` (+ ``.json`` with its test accuracy; with an
  ``s3://``/``gs://`` root the cache stays local, under ``$GENAUG_STATE_DIR``). Its
  penultimate layer is the feature space for FID, precision/recall and density/coverage ("Fréchet
  LeNet distance": Inception weights cannot be downloaded here and do not fit 8x8 digits anyway);
- ``fid`` (with the real-train vs real-test floor), ``precision_recall`` (k=3), ``density_coverage``
  (k=5), ``label_fidelity`` (does the classifier read the asked-for class), ``cas`` (Classification
  Accuracy Score: train on samples only, test on real) and its ratio to real data, ``cas_svc`` (the
  scikit-learn digits protocol), ``memorisation`` (near-copies of training images) and
  ``augmentation_gain`` (k real images per class vs k plus samples of a generator trained on those k).

Results go into the model version directory (local or in the object store): ``eval.json``,
``eval.md`` and PNG figures (these are the only files ever added to a published version). Everything
runs in one process on the CPU: evaluation is small next to training, and one process keeps the seeds
meaningful. Torch is pinned to one thread while a network trains, because CPU results depend on the
thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.data import ImageDataset, load_dataset, normalize_uint8
from jobs.generate import generate_uint8
from jobs.registry import Registry
from jobs.storage import (
    HOME_HELP,
    Location,
    cache_dir,
    location,
    read_json,
    resolve_home,
    write_bytes_atomic,
    write_json_atomic,
)
from models.blocks import diff_augment
from models.checkpoint import build_model

CLASSIFIER_VERSION = 1  # bump when FeatureCNN or its training changes: old cache files are then retrained
CHUNK_ELEMENTS = 1 << 22  # distances held at once by the kNN helpers (4M float64 = 32 MB)
SVC_REAL_REFERENCE = 0.969  # REFERENCE.md: SVC(gamma=0.001) on digits' first half, scored on the second
EVAL_FILES = ("eval.json", "eval.md", "eval_samples.png", "eval_curves.png", "eval_metrics.png")
METRICS = (
    "fid",
    "precision",
    "recall",
    "density",
    "coverage",
    "label_fidelity",
    "cas",
    "cas_ratio",
    "cas_svc",
    "memorisation",
    "augmentation_gain",
)
FID_FLOOR_FACTOR = {"cgan": 1.5, "cvae": 2.0}  # target: FID <= factor x real-train-vs-real-test floor
TARGETS_DIGITS = {  # the project's quality targets, set on digits; shown for every dataset
    "cas_ratio": ">= 0.99",
    "label_fidelity": ">= 0.995",
    "fid": "<= 1.5x floor (cgan) / 2x floor (cvae)",
    "augmentation_gain": ">= +3 pp at k=10",
    "memorisation": "<= 0.5 % near-copies",
}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- the domain classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """How the domain classifier (feature extractor, CAS and gain classifier) is built and trained."""

    width: int = 16  # stem conv channels, doubled per 2x downsampling (max 128); 32: +0.2 pp, 2.5x time
    feature_dim: int = 64  # penultimate width = feature space (FID covariances come from ~900 images)
    dropout: float = 0.3  # before the class head only; features are taken before it
    batch_size: int = 64  # images per step (the whole set when smaller)
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 5e-4  # AdamW decoupled weight decay
    epochs: int = 3  # steps = clip(epochs x batches per epoch, min_steps, max_steps)
    min_steps: int = 400  # small sets (digits, k images per class) still get a full schedule
    max_steps: int = 4000  # large sets (MNIST) stop here (about 4 epochs of MNIST)
    translation: float = 0.1  # random shift augmentation, fraction of the side (1 px at 8x8, 3 at 28)
    seed: int = 0  # seed of the cached feature classifier
    threads: int = 1  # torch threads while training: CPU results depend on it, so it is pinned

    def steps_for(self, n: int) -> int:
        """Optimiser steps for a training set of ``n`` images."""
        per_epoch = math.ceil(n / min(self.batch_size, max(n, 1)))
        return int(min(self.max_steps, max(self.min_steps, self.epochs * per_epoch)))


class FeatureCNN(nn.Module):
    """Small CNN classifier for (B, C, S, S) images in [-1, 1], C in {1, 3}, S in 8..64.

    Stem conv at full resolution, then conv-BN-ReLU-maxpool stages while the side is >= 8, an adaptive
    4x4 average pool, a ``feature_dim`` ReLU layer (the feature space) and a linear class head.
    """

    def __init__(self, channels: int, image_size: int, num_classes: int, cfg: ClassifierConfig) -> None:
        super().__init__()
        if channels not in (1, 3) or not 8 <= image_size <= 64 or num_classes < 2:
            raise ValueError(
                f"FeatureCNN needs channels in (1, 3), image_size in 8..64 and >= 2 classes; "
                f"got channels={channels}, image_size={image_size}, num_classes={num_classes}"
            )
        c, side = cfg.width, image_size
        layers: list[nn.Module] = [nn.Conv2d(channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        while side >= 8:
            out = min(2 * c, 128)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c, side = out, side // 2
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 16, cfg.feature_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim)."""
        return F.relu(self.fc(self.body(x).flatten(1)))  # (B, C'*16) -> (B, F)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))  # (B, num_classes)


@contextlib.contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed a forked torch RNG, pin the thread count and enable deterministic algorithms; restore after."""
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before_det)
            torch.set_num_threads(before_threads)


GAIN_CLASSIFIER = ClassifierConfig(translation=0.0)  # augmentation gain: no hand-made augmentation


def train_classifier(
    images: Tensor, labels: Tensor, num_classes: int, seed: int, config: ClassifierConfig = ClassifierConfig()
) -> FeatureCNN:
    """Train a ``FeatureCNN`` on ``images`` (N, C, S, S) in [-1, 1]; same inputs and seed, same weights.

    AdamW with a one-cycle schedule for ``config.steps_for(N)`` steps of shuffled batches, random shifts
    (``diff_augment`` translation) on every batch; one CPU thread, deterministic algorithms.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"need as many labels as images and at least one image; got {len(images)} vs {len(labels)}"
        )
    images, labels = images.float(), labels.long()
    n = len(images)
    batch = min(config.batch_size, n)
    steps = config.steps_for(n)
    with _deterministic(seed, config.threads):
        net = FeatureCNN(images.shape[1], images.shape[-1], num_classes, config)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
        order = torch.Generator().manual_seed(seed)
        perm, pos = torch.randperm(n, generator=order), 0
        net.train()
        for _ in range(steps):
            if pos + batch > n:
                perm, pos = torch.randperm(n, generator=order), 0
            idx = perm[pos : pos + batch]
            pos += batch
            x = (
                diff_augment(images[idx], translation=config.translation)
                if config.translation
                else images[idx]
            )
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict(classifier: nn.Module, images: Tensor, batch: int = 1024) -> Tensor:
    """Predicted class (N,) for images (N, C, S, S) in [-1, 1]."""
    classifier.eval()
    out = [classifier(images[i : i + batch].float()).argmax(1) for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def extract_features(classifier: FeatureCNN, images: Tensor, batch: int = 1024) -> Tensor:
    """Penultimate-layer features (N, feature_dim) of images (N, C, S, S) in [-1, 1]."""
    classifier.eval()
    parts = [classifier.features(images[i : i + batch].float()) for i in range(0, len(images), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, classifier.fc.out_features)


def accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Share of ``images`` the classifier labels correctly."""
    return float((predict(classifier, images) == labels.long()).float().mean())


def classifier_cache_paths(home: str | Path | None, train: ImageDataset) -> tuple[Path, Path]:
    """``(<cache>/classifiers/<fingerprint>.pt, ... .json)`` for a train split.

    ``<cache>`` is ``jobs.storage.cache_dir(home)``: ``<home>/cache`` for a local root, a local folder
    under ``$GENAUG_STATE_DIR`` for an object-store root (a cache stays on local disk).
    """
    folder = cache_dir(home) / "classifiers"
    return folder / f"{train.fingerprint}.pt", folder / f"{train.fingerprint}.json"


def _cache_key(train: ImageDataset, config: ClassifierConfig) -> dict[str, Any]:
    return {
        "version": CLASSIFIER_VERSION,
        "train_fingerprint": train.fingerprint,
        "config": dataclasses.asdict(config),
        "channels": train.channels,
        "image_size": train.image_size,
        "classes": list(train.classes),
    }


def feature_classifier(
    home: str | Path | None,
    train: ImageDataset,
    test: ImageDataset | None = None,
    config: ClassifierConfig = ClassifierConfig(),
    log: Log = _quiet,
) -> tuple[FeatureCNN, dict[str, Any]]:
    """The domain classifier of ``train`` (trained with ``config.seed``), from the cache or trained now.

    Cache: ``<home>/cache/classifiers/<train fingerprint>.pt`` (state dict, read with
    ``weights_only=True``) and ``.json`` (config, test accuracy, real-data baselines). A file written
    for another config or an older ``CLASSIFIER_VERSION``, or an unreadable one, is retrained and
    replaced. Returns the model (eval mode) and the json content plus ``cached`` and ``path``.
    """
    pt, js = classifier_cache_paths(home, train)
    key = _cache_key(train, config)
    net = FeatureCNN(train.channels, train.image_size, train.num_classes, config)
    meta: dict[str, Any] | None = None
    if pt.is_file() and js.is_file():
        try:
            found = read_json(js)
            if {k: found.get(k) for k in key} == key:
                net.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True), strict=True)
                meta = found
        except Exception as e:  # a corrupted cache file is rebuilt, not fatal
            log(f"classifier cache {pt} unreadable ({type(e).__name__}: {e}); retraining")
            meta = None
    cached = meta is not None
    if meta is None:
        log(f"training the domain classifier on {train.spec} train ({len(train)} images) ...")
        t0 = time.perf_counter()
        net = train_classifier(train.images, train.labels, train.num_classes, config.seed, config)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
        write_bytes_atomic(pt, buf.getvalue())
        meta = {**key, "train_time_s": round(time.perf_counter() - t0, 2), "real_accuracy_by_seed": {}}
    if test is not None and meta.get("test_fingerprint") != test.fingerprint:
        acc = accuracy(net, test.images, test.labels)
        meta.update(test_fingerprint=test.fingerprint, test_accuracy=acc, test_images=len(test))
        meta["real_accuracy_by_seed"] = {str(config.seed): acc}
        write_json_atomic(js, meta)
    elif not cached:
        write_json_atomic(js, meta)
    net.eval()
    return net, {**meta, "cached": cached, "path": str(pt)}


def real_baseline(
    home: str | Path | None,
    train: ImageDataset,
    test: ImageDataset,
    seed: int,
    config: ClassifierConfig = ClassifierConfig(),
    log: Log = _quiet,
) -> float:
    """Test accuracy of the classifier trained on the real train split with ``seed`` (the CAS reference).

    Seed ``config.seed`` is the cached feature classifier; other seeds are trained once and their
    accuracy (not the weights) is cached in the classifier's json.
    """
    _, meta = feature_classifier(home, train, test, config, log)
    by_seed = dict(meta.get("real_accuracy_by_seed") or {})
    if str(seed) not in by_seed:
        log(f"training the real-data reference classifier, seed {seed} ...")
        net = train_classifier(train.images, train.labels, train.num_classes, seed, config)
        by_seed[str(seed)] = accuracy(net, test.images, test.labels)
        _, js = classifier_cache_paths(home, train)
        stored = read_json(js)
        stored["real_accuracy_by_seed"] = {**(stored.get("real_accuracy_by_seed") or {}), **by_seed}
        write_json_atomic(js, stored)
    return float(by_seed[str(seed)])


# ----------------------------------------------------------------------------- metrics (pure functions)


def _as_f64(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.detach().reshape(len(t), -1).to(torch.float64)  # (N, D)


def _chunks(a: Tensor, b: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(start, cdist(a[start:start+c], b))`` over row chunks of ``a``, c x len(b) <= CHUNK_ELEMENTS."""
    rows = max(1, CHUNK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), rows):
        yield start, torch.cdist(a[start : start + rows], b).clamp_min_(0)  # (c, len(b))


def kth_nn_distance(x: Tensor | np.ndarray, k: int) -> Tensor:
    """Distance (N,) from each row of ``x`` to its k-th nearest other row (the point itself not counted)."""
    x = _as_f64(x)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs at least k+1 points; got {len(x)}; valid: 1 <= k < {len(x)}")
    out = torch.empty(len(x), dtype=torch.float64)
    for start, d in _chunks(x, x):
        out[start : start + len(d)] = d.kthvalue(k + 1, dim=1).values  # k+1: the 0 distance to itself
    return out


def nearest_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Distance (len(a),) from each row of ``a`` to its nearest row of ``b``."""
    a, b = _as_f64(a), _as_f64(b)
    out = torch.empty(len(a), dtype=torch.float64)
    for start, d in _chunks(a, b):
        out[start : start + len(d)] = d.min(dim=1).values
    return out


def fid(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)`` with unbiased covariances, in float64.
    ``tr((S_a S_b)^1/2)`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S_a^1/2 S_b S_a^1/2`` (same spectrum as ``S_a S_b``), so only ``eigh`` is needed; tiny negative
    eigenvalues from rounding are clipped to 0. Identical sets give 0 (up to ~1e-9).
    """
    a, b = _as_f64(feats_a).numpy(), _as_f64(feats_b).numpy()
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"fid needs two sets of >= 2 rows with equal width; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = (
        np.cov(a, rowvar=False).reshape(a.shape[1], -1),
        np.cov(b, rowvar=False).reshape(b.shape[1], -1),
    )
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^1/2
    inner = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_cross = float(np.sqrt(np.clip(eig, 0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross)
    return max(value, 0.0)


def precision_recall(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) in a feature space.

    Each point's radius is the distance to its k-th nearest neighbour in its own set (itself not
    counted). Precision = share of ``fake`` rows within (<=) the radius of at least one ``real`` row;
    recall = share of ``real`` rows within the radius of at least one ``fake`` row. Both are in [0, 1];
    identical sets give 1, 1. Distances: Euclidean, float64, computed in memory-bounded chunks.
    """
    real, fake = _as_f64(real), _as_f64(fake)
    r_real, r_fake = kth_nn_distance(real, k), kth_nn_distance(fake, k)
    return {"precision": _share_inside(fake, real, r_real), "recall": _share_inside(real, fake, r_fake)}


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    inside = 0
    for _, d in _chunks(points, centres):
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(points)


def density_coverage(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) in a feature space, real radii only.

    With r_i the distance from real point i to its k-th nearest other real point: density =
    (1 / (k M)) * sum over the M fakes of the number of real balls B(x_i, r_i) containing it (about 1
    for identical distributions, can exceed 1); coverage = share of real points whose ball contains at
    least one fake (about 0.97 for two draws of one distribution at k = 5). "Contains" is ``<=``.
    """
    real, fake = _as_f64(real), _as_f64(fake)
    radii = kth_nn_distance(real, k)
    hits = 0
    for _, d in _chunks(fake, real):
        hits += int((d <= radii[None, :]).sum())
    covered = nearest_distance(real, fake) <= radii
    return {"density": hits / (k * len(fake)), "coverage": float(covered.double().mean())}


def label_fidelity(
    classifier: nn.Module, images: Tensor, labels: Tensor, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """How often the domain classifier assigns generated ``images`` the class they were asked for.

    Returns ``per_class`` (class name -> share of that class's samples classified as it), ``mean`` (the
    unweighted mean over classes present) and ``accuracy`` (over all samples; equal to ``mean`` for
    balanced requests).
    """
    labels = labels.long()
    pred = predict(classifier, images)
    per_class: dict[str, float] = {}
    for c in torch.unique(labels).tolist():
        name = str(classes[c]) if classes is not None else str(c)
        per_class[name] = float((pred[labels == c] == c).float().mean())
    return {
        "per_class": per_class,
        "mean": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "accuracy": float((pred == labels).float().mean()) if len(labels) else float("nan"),
    }


def cas(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    seed: int,
    num_classes: int | None = None,
    config: ClassifierConfig = ClassifierConfig(),
) -> float:
    """Classification Accuracy Score (Ravuri & Vinyals 2019): accuracy on the real test images of a
    ``FeatureCNN`` trained (``train_classifier``, ``seed``) only on the given (synthetic) images."""
    k = num_classes or int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    net = train_classifier(train_images, train_labels, k, seed, config)
    return accuracy(net, test_images, test_labels)


def memorisation(
    fake_feats: Tensor | np.ndarray, train_feats: Tensor | np.ndarray, test_feats: Tensor | np.ndarray
) -> dict[str, Any]:
    """Near-copies of training data, in whatever space the rows live (pixels or features).

    For each generated row, d_fake = Euclidean distance to its nearest training row; for each real test
    row, d_test = the same for unseen real data. Threshold tau = min over test rows of d_test: how close
    a genuinely new real image ever got to the training set. ``near_copy_rate`` = share of generated rows
    with d_fake < tau (strictly closer to a training image than any real test image is). Copies of
    training images give 1.0; a generator as novel as the test set gives about 1/len(test) or less.
    ``median_ratio`` = median(d_fake) / median(d_test): below 1 means samples sit closer to the
    training set than new real data does.
    """
    d_fake = nearest_distance(fake_feats, train_feats)
    d_test = nearest_distance(test_feats, train_feats)
    tau = float(d_test.min())
    med_fake, med_test = float(d_fake.median()), float(d_test.median())
    return {
        "near_copy_rate": float((d_fake < tau).double().mean()),
        "threshold": tau,
        "fake_to_train": {"min": float(d_fake.min()), "median": med_fake},
        "test_to_train": {"min": tau, "median": med_test},
        "median_ratio": med_fake / med_test if med_test > 0 else float("inf"),
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


# ----------------------------------------------------------------------------- augmentation gain

TrainFn = Callable[[Tensor, Tensor, Sequence[str], int], nn.Module]


@dataclass(frozen=True)
class LowDataRecipe:
    """How the augmentation-gain protocol trains a generator on k images per class (in process).

    Counted in optimiser steps, not epochs: with k = 10 a digits epoch is a single batch, so the full-data
    epoch count (``jobs.train.MODEL_DEFAULTS``) would leave the generator nearly untrained (100 CVAE / 300
    CGAN steps: that was the cause of the negative gains first measured).
    """

    steps: int  # optimiser steps (CGAN: one D and one G step each)
    lr: float  # Adam learning rate (CGAN: G and D alike, betas (0, 0.9), as jobs.train)
    data_translation: float = 0.0  # random shift of the generator's training images (fraction of the side)
    batch_size: int = 64  # min(batch_size, N) images per step, drawn without replacement per pass
    kl_warmup: float = 0.3  # CVAE: KL weight linear 0 -> 1 over this share of the steps


# Measured on digits, k = 10, seed 0 (benchmarks/QUALITY.md): the CVAE gains from shifted training images
# (its samples then vary in position as real test digits do); the CGAN loses label fidelity with them
# (0.92, one class at 0.38) and is trained on the plain k images.
LOW_DATA_RECIPES = {
    "cvae": LowDataRecipe(steps=2000, lr=1e-3, data_translation=0.125),
    "cgan": LowDataRecipe(steps=3000, lr=3e-4),
}


def train_generator(
    model_type: str,
    images: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    seed: int,
    *,
    model_config: Mapping[str, Any] | None = None,
    recipe: LowDataRecipe | None = None,
) -> nn.Module:
    """Train a generator in this process on ``images`` (N, C, S, S) in [-1, 1] (the default ``train_fn``).

    A plain single-process CPU loop (no Ray: this is evaluation, the sets are k images per class) with
    the losses and optimisers of ``jobs.train``: CVAE: Adam, KL weight warmed up linearly over the first
    ``recipe.kl_warmup`` of the steps; CGAN: hinge loss, Adam(0, 0.9) for G and D at one learning rate, an
    EMA update after every step. ``recipe`` defaults to ``LOW_DATA_RECIPES[model_type]``; its
    ``data_translation`` shifts every training batch (``diff_augment``). One thread, seeded: the same
    inputs give the same weights.
    """
    from models.cgan import d_loss, g_loss

    if model_type not in LOW_DATA_RECIPES:
        raise ValueError(f"unknown model type {model_type!r}; valid: {', '.join(LOW_DATA_RECIPES)}")
    r = recipe or LOW_DATA_RECIPES[model_type]
    cfg = {**dict(model_config or {}), "image_size": images.shape[-1], "channels": images.shape[1]}
    cfg["num_classes"] = len(classes)
    n = len(images)
    batch = min(r.batch_size, n)
    with _deterministic(seed, 1):
        model = build_model(model_type, cfg)
        order = torch.Generator().manual_seed(seed)
        model.train()
        if model_type == "cvae":
            opt = torch.optim.Adam(model.parameters(), lr=r.lr)
        else:
            opt_g = torch.optim.Adam(model.generator.parameters(), lr=r.lr, betas=(0.0, 0.9))
            opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=r.lr, betas=(0.0, 0.9))
        warm = max(1, int(r.kl_warmup * r.steps))
        perm, pos = torch.randperm(n, generator=order), 0
        for step in range(r.steps):
            if pos + batch > n:
                perm, pos = torch.randperm(n, generator=order), 0
            idx = perm[pos : pos + batch]
            pos += batch
            x, y = images[idx], labels[idx]
            if r.data_translation:
                x = diff_augment(x, translation=r.data_translation)
            if model_type == "cvae":
                out = model(x, y, kl_weight=min(1.0, (step + 1) / warm))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
            else:
                d_out = d_loss(
                    model.generator, model.discriminator, x, y, torch.randn(batch, model.noise_dim)
                )
                opt_d.zero_grad(set_to_none=True)
                d_out.loss.backward()
                opt_d.step()
                model.discriminator.requires_grad_(False)
                g_out = g_loss(model.generator, model.discriminator, y, torch.randn(batch, model.noise_dim))
                opt_g.zero_grad(set_to_none=True)
                g_out.loss.backward()
                opt_g.step()
                model.discriminator.requires_grad_(True)
                model.update_ema()
        if getattr(model.config, "prior", "standard") != "standard":  # few images: shrunk towards N(0, I)
            copies = 8 if r.data_translation else 1  # the prior covers the shifts the model was trained on
            shifted = [
                diff_augment(images, r.data_translation) if copies > 1 else images for _ in range(copies)
            ]
            model.fit_prior(torch.cat(shifted), labels.repeat(copies))
    return model.eval()


def pick_per_class(labels: Tensor, k: int, seed: int, num_classes: int) -> Tensor:
    """Indices of ``k`` images per class, chosen by ``seed`` (sorted); ValueError if a class has fewer."""
    rng = np.random.default_rng(seed)
    lab = labels.numpy()
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(lab == c)
        if len(idx) < k:
            raise ValueError(
                f"class {c} has {len(idx)} train images, fewer than k={k}; valid: k <= {len(idx)}"
            )
        chosen.append(np.sort(rng.choice(idx, size=k, replace=False)))
    return torch.from_numpy(np.concatenate(chosen))


def _samples(model: nn.Module, labels: Tensor, seed: int, temperature: float = 1.0) -> Tensor:
    """Generated images (N, C, H, W) in [-1, 1], through the uint8 path datasets are written with."""
    u8 = generate_uint8(model, labels.numpy().astype(np.int64), seed, temperature)  # (N, H, W, C)
    return normalize_uint8(u8)  # (N, C, H, W)


GAIN_SYNTH_PER_CLASS = 1000  # generated images per class added to the k real ones
# The k real images are repeated to make about this share of the augmented set. Measured with the CVAE
# recipe at k = 10 (3 seeds): 1000/class at a real share of 0.2 / 0.33 / 0.5 gave +2.6 / +2.8 / +3.2 pp,
# 2000/class at 0.2 +3.3 pp; half real, half synthetic is the cheaper of the two best.
GAIN_REAL_SHARE = 0.5
SHIFT = 0.1  # the classical-augmentation comparison: random shifts of up to 10 % of the side


def real_repeats(n_real: int, n_synth: int, real_share: float = GAIN_REAL_SHARE) -> int:
    """How often the real images are repeated so that they make about ``real_share`` of the mixed set."""
    if n_synth == 0 or n_real == 0:
        return 1
    return max(1, round(real_share * n_synth / ((1.0 - real_share) * n_real)))


def augmentation_gain(
    spec: str,
    model_type: str,
    k: int,
    seeds: Sequence[int],
    *,
    train_fn: TrainFn | None = None,
    image_size: int | None = None,
    n_synth_per_class: int = GAIN_SYNTH_PER_CLASS,
    real_share: float = GAIN_REAL_SHARE,
    model_config: Mapping[str, Any] | None = None,
    recipe: LowDataRecipe | None = None,
    classifier_config: ClassifierConfig = GAIN_CLASSIFIER,
    shift_reference: bool = True,
    train: ImageDataset | None = None,
    test: ImageDataset | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Low-data augmentation gain: do samples help a classifier that has only k real images per class?

    For each seed: k real images per class are drawn from the train split (``pick_per_class``); a
    generator is trained on those k*C images only (``train_fn(images, labels, classes, seed)``, default
    ``train_generator`` of ``model_type`` with ``recipe``); two ``FeatureCNN`` classifiers with the same
    seed, the same recipe and the same number of optimiser steps are trained on (a) the k*C real images
    and (b) those same images, repeated ``real_repeats`` times so that they make about ``real_share`` of
    the set, plus ``n_synth_per_class`` generated images per class (generation seed = seed); both are
    scored on the whole real test split. gain = (b) - (a).

    The step count of both arms is ``classifier_config.steps_for(len(b))`` (the larger set's), so the two
    classifiers differ only in their data. The default ``classifier_config`` (``GAIN_CLASSIFIER``) uses
    no classical augmentation in either arm, so the gain is what the generator adds to plain training.
    ``shift_reference`` repeats both arms with random shifts (``SHIFT``) on every batch: the gain over
    a classifier that already uses classical augmentation (``*_shifted``). Returns per-seed numbers and
    mean/std (ddof=1) over seeds, accuracies in [0, 1], gains also in pp.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (real images per class), got {k!r}")
    if not seeds:
        raise ValueError("seeds must name at least one seed, e.g. (0, 1, 2)")
    if not 0.0 < real_share < 1.0:
        raise ValueError(f"real_share must be in (0, 1), got {real_share!r}")
    train = train if train is not None else load_dataset(spec, "train", image_size)
    test = test if test is not None else load_dataset(spec, "test", image_size)
    if train_fn is None:
        train_fn = functools.partial(train_generator, model_type, model_config=model_config, recipe=recipe)
    C = train.num_classes
    n_synth = C * n_synth_per_class
    reps = real_repeats(k * C, n_synth, real_share)
    steps = classifier_config.steps_for(reps * k * C + n_synth)
    plain = dataclasses.replace(classifier_config, min_steps=steps, max_steps=steps)
    shifted = dataclasses.replace(plain, translation=SHIFT)
    rows = []
    for seed in seeds:
        idx = pick_per_class(train.labels, k, seed, C)
        x_real, y_real = train.images[idx], train.labels[idx]
        log(f"augmentation gain k={k} seed={seed}: training the generator on {len(idx)} images ...")
        gen = train_fn(x_real, y_real, train.classes, seed)
        y_syn = torch.arange(C).repeat_interleave(n_synth_per_class)  # (C*n,)
        x_syn = _samples(gen, y_syn, seed)
        x_mix = torch.cat([x_real.repeat(reps, 1, 1, 1), x_syn])  # (reps*k*C + C*n, C, H, W)
        y_mix = torch.cat([y_real.repeat(reps), y_syn])
        row: dict[str, Any] = {"seed": int(seed)}
        for suffix, cfg in (("", plain), ("_shifted", shifted)) if shift_reference else (("", plain),):
            row["real_only" + suffix] = cas(x_real, y_real, test.images, test.labels, seed, C, cfg)
            row["augmented" + suffix] = cas(x_mix, y_mix, test.images, test.labels, seed, C, cfg)
            row["gain" + suffix] = row["augmented" + suffix] - row["real_only" + suffix]
        rows.append(row)

    def stat(key: str) -> dict[str, float] | None:
        if key not in rows[0]:
            return None
        return dict(zip(("mean", "std"), _mean_std([r[key] for r in rows]), strict=True))

    out: dict[str, Any] = {"k": k, "seeds": [int(s) for s in seeds]}
    for key in ("real_only", "augmented", "gain", "real_only_shifted", "augmented_shifted", "gain_shifted"):
        out[key] = stat(key)
    out["gain_pp"] = {"mean": 100 * out["gain"]["mean"], "std": 100 * out["gain"]["std"]}
    out["gain_shifted_pp"] = (
        {"mean": 100 * out["gain_shifted"]["mean"], "std": 100 * out["gain_shifted"]["std"]}
        if out["gain_shifted"]
        else None
    )
    out.update(
        per_seed=rows,
        n_synth_per_class=n_synth_per_class,
        real_repeats=reps,
        real_share=reps * k * C / (reps * k * C + n_synth),
        classifier_steps=steps,
        classifier=dataclasses.asdict(plain),
    )
    return out


# ----------------------------------------------------------------------------- the report


def _gain_text(g: Mapping[str, Any]) -> str:
    text = f"real only {g['real_only']['mean']:.4f}, with samples {g['augmented']['mean']:.4f}"
    if g.get("gain_shifted"):
        text += (
            f"; both arms with random shifts: real only {g['real_only_shifted']['mean']:.4f}, with samples "
            f"{g['augmented_shifted']['mean']:.4f}, gain {g['gain_shifted_pp']['mean']:+.2f} ± "
            f"{g['gain_shifted_pp']['std']:.2f} pp"
        )
    return text


def _svc_features(images: Tensor) -> np.ndarray:
    """[-1, 1] 8x8 grey images -> scikit-learn's digits scale 0..16, flattened (N, 64)."""
    return ((images.reshape(len(images), -1).double() + 1.0) * 8.0).numpy()


def cas_svc(fake: Tensor, fake_labels: Tensor, train: ImageDataset, test: ImageDataset) -> dict[str, float]:
    """scikit-learn's digits protocol: ``SVC(gamma=0.001)`` fit on ``fake`` (vs on the real train half),
    scored on the real test half. Inputs are 8x8 grey images in [-1, 1], mapped back to 0..16."""
    from sklearn.svm import SVC

    syn = SVC(gamma=0.001).fit(_svc_features(fake), fake_labels.numpy())
    real = SVC(gamma=0.001).fit(_svc_features(train.images), train.labels.numpy())
    x_test, y_test = _svc_features(test.images), test.labels.numpy()
    return {"synthetic": float(syn.score(x_test, y_test)), "real": float(real.score(x_test, y_test))}


def _is_digits(spec: str) -> bool:
    return spec.strip().lower() == "digits"


def _check_dataset(spec: str, ckpt, size: int) -> tuple[ImageDataset, ImageDataset]:
    train = load_dataset(spec, "train", size)
    try:
        test = load_dataset(spec, "test", size)
    except ValueError as e:
        raise ValueError(
            f"dataset {spec!r} has no test split ({e}); evaluation needs one: valid datasets: digits, "
            "shapes, mnist:ROOT, fashion-mnist:ROOT, cifar10:ROOT, imagefolder:DIR with train/ and test/"
        ) from None
    cfg = ckpt.config
    if train.channels != cfg.channels:
        raise ValueError(
            f"dataset {spec!r} has {train.channels} channel(s) but the model makes {cfg.channels}; "
            "valid: a dataset with the model's channels (see the model's model.json 'dataset')"
        )
    if list(train.classes) != list(ckpt.classes):
        raise ValueError(
            f"dataset {spec!r} classes {list(train.classes)[:12]} differ from the model's "
            f"{list(ckpt.classes)[:12]}; valid: a dataset with the model's classes"
        )
    return train, test


def _target(
    name: str, value: float | None, model_type: str, floor: float | None = None
) -> tuple[str, bool | None]:
    """Target text and whether ``value`` meets it (None when it cannot be judged)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return TARGETS_DIGITS.get(name, "-"), None
    if name == "cas_ratio":
        return ">= 0.99", value >= 0.99
    if name == "label_fidelity":
        return ">= 0.995", value >= 0.995
    if name == "fid":
        factor = FID_FLOOR_FACTOR.get(model_type, 2.0)
        if floor is None:
            return f"<= {factor}x floor", None
        return f"<= {factor}x floor = {factor * floor:.3g}", value <= factor * floor
    if name == "augmentation_gain":
        return ">= +3 pp at k=10", value >= 3.0
    if name == "memorisation":
        return "<= 0.5 %", value <= 0.005
    return "-", None


def evaluate(
    home: str | Path | None,
    model_ref: str,
    dataset: str | None = None,
    n_per_class: int = 200,
    seeds: Sequence[int] = (0, 1, 2),
    gain_k: Sequence[int] = (5, 10, 50),
    fast: bool = False,
    *,
    train_fn: TrainFn | None = None,
    classifier_config: ClassifierConfig = ClassifierConfig(),
    temperature: float = 1.0,
    write: bool = True,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Evaluate registered model ``model_ref`` on the TEST split of ``dataset`` (default: model.json's).

    Generates ``n_per_class`` samples per class for each seed (through ``jobs.generate.generate_uint8``,
    i.e. exactly the pixels a dataset job would write), computes every metric in ``METRICS`` with its
    protocol, target and pass flag, and (``write``) stores ``eval.json``, ``eval.md`` and PNGs in the
    model version directory. ``fast``: one seed, at most 50 samples per class, k=10 only, the gain's
    generator trained for 1/8 of its epochs, 1000 SVC samples: a smoke test, not a measurement.
    ``train_fn`` replaces the gain's generator training (tests).
    """
    t_start = time.perf_counter()
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 2:
        raise ValueError(f"n_per_class must be an integer >= 2, got {n_per_class!r}")
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be one or more integers >= 0, e.g. 0,1,2; got {seeds}")
    gain_k = [int(k) for k in gain_k]
    if fast:
        seeds, n_per_class = seeds[:1], min(n_per_class, 50)
        gain_k = [10] if 10 in gain_k else gain_k[:1]
    home = resolve_home(home)
    mv = Registry(home).resolve(model_ref)
    info = mv.info
    ckpt = mv.load()
    model, model_type = ckpt.model, ckpt.model_type
    spec = dataset or info.get("dataset")
    if not spec:
        raise ValueError(f"model {mv.ref} names no dataset in model.json; pass one: --dataset SPEC")
    size = int(ckpt.config.image_size)
    train, test = _check_dataset(spec, ckpt, size)
    C, classes = train.num_classes, list(train.classes)
    fewest = int(torch.bincount(train.labels, minlength=C).min())
    if gain_k and not 1 <= min(gain_k) <= max(gain_k) <= fewest:
        raise ValueError(f"gain k values {gain_k} must lie in 1..{fewest} (train images of the rarest class)")
    log(f"evaluating {mv.ref} ({model_type}) on {spec} test ({len(test)} images), seeds {seeds}")

    clf, clf_meta = feature_classifier(home, train, test, classifier_config, log)
    clf_acc = float(clf_meta["test_accuracy"])
    clf_text = (
        f"FeatureCNN (penultimate layer, {classifier_config.feature_dim}-d) trained on {spec} train "
        f"({len(train)} images, seed {classifier_config.seed}; test accuracy {clf_acc:.4f})"
    )

    labels = torch.arange(C).repeat_interleave(n_per_class)  # (C*n,)
    samples = {s: _samples(model, labels, s, temperature) for s in seeds}
    first = samples[seeds[0]]  # the sample set of the first seed feeds every single-set metric
    n_fake, n_test, n_train = len(first), len(test), len(train)
    f_train, f_test, f_fake = (extract_features(clf, x) for x in (train.images, test.images, first))
    out: dict[str, Any] = {}

    # FID and its floor.
    fid_value, floor = fid(f_fake, f_test), fid(f_train, f_test)
    target, ok = _target("fid", fid_value, model_type, floor)
    out["fid"] = {
        "value": fid_value,
        "floor": floor,
        "ratio_to_floor": fid_value / floor if floor > 0 else None,
        "target": target,
        "pass": ok,
        "protocol": f"Fréchet distance in the {clf_text}; {n_fake} samples (seed {seeds[0]}, "
        f"{n_per_class}/class) vs {n_test} real test images; floor = real train ({n_train}) vs real test",
    }

    # Precision / recall and density / coverage on equal-size sets.
    m = min(n_fake, n_test)
    sub = torch.from_numpy(np.sort(np.random.default_rng(seeds[0]).choice(n_fake, m, replace=False)))
    pr, pr_ref = precision_recall(f_test, f_fake[sub], 3), precision_recall(f_test, f_train, 3)
    dc, dc_ref = density_coverage(f_test, f_fake[sub], 5), density_coverage(f_test, f_train, 5)
    picked = f"a random subset (seed {seeds[0]}) of {m}" if m < n_fake else f"all {m}"
    sizes = f"{picked} samples vs all {n_test} real test images"
    for name, value, ref, kk, paper in (
        ("precision", pr["precision"], pr_ref["precision"], 3, "Kynkäänniemi et al. 2019"),
        ("recall", pr["recall"], pr_ref["recall"], 3, "Kynkäänniemi et al. 2019"),
        ("density", dc["density"], dc_ref["density"], 5, "Naeem et al. 2020"),
        ("coverage", dc["coverage"], dc_ref["coverage"], 5, "Naeem et al. 2020"),
    ):
        out[name] = {
            "value": value,
            "reference": ref,
            "target": "-",
            "pass": None,
            "protocol": f"{paper}, k={kk}, Euclidean in the {clf_text}; {sizes}; "
            f"reference = real train vs real test in the same space",
        }

    # Label fidelity.
    lf = label_fidelity(clf, first, labels, classes)
    target, ok = _target("label_fidelity", lf["mean"], model_type)
    out["label_fidelity"] = {
        "value": lf["mean"],
        "per_class": lf["per_class"],
        "min_class": min(lf["per_class"].values()),
        "target": target,
        "pass": ok,
        "protocol": f"share of samples the domain classifier (test accuracy {clf_acc:.4f}) assigns the "
        f"requested class; mean over {C} classes of {n_per_class} samples each (seed {seeds[0]})",
    }

    # CAS and its ratio to real data.
    cas_rows = []
    for s in seeds:
        log(f"CAS seed {s}: training a classifier on {n_fake} samples ...")
        syn = cas(samples[s], labels, test.images, test.labels, s, C, classifier_config)
        real = real_baseline(home, train, test, s, classifier_config, log)
        cas_rows.append({"seed": s, "synthetic": syn, "real": real})
    cas_mean, cas_std = _mean_std([r["synthetic"] for r in cas_rows])
    real_mean, real_std = _mean_std([r["real"] for r in cas_rows])
    ratio = cas_mean / real_mean if real_mean > 0 else float("nan")
    cas_proto = (
        f"FeatureCNN trained from scratch on {n_fake} samples ({n_per_class}/class, generation seed = "
        f"training seed) only, tested on the {n_test} real test images; mean of seeds {seeds}"
    )
    out["cas"] = {
        "value": cas_mean,
        "std": cas_std,
        "real": real_mean,
        "real_std": real_std,
        "per_seed": cas_rows,
        "target": "-",
        "pass": None,
        "protocol": cas_proto + "; 'real' = same classifier on the real train split",
    }
    target, ok = _target("cas_ratio", ratio, model_type)
    out["cas_ratio"] = {
        "value": ratio,
        "target": target,
        "pass": ok,
        "protocol": f"mean CAS / mean accuracy of the same classifier trained on the {n_train} real train "
        f"images (seeds {seeds}): {cas_mean:.4f} / {real_mean:.4f}",
    }

    # The scikit-learn digits protocol.
    if _is_digits(spec) and size == 8 and train.channels == 1:
        n_svc = 100 if fast else 500
        y_svc = torch.arange(C).repeat_interleave(n_svc)  # (C*n_svc,)
        svc = cas_svc(_samples(model, y_svc, seeds[0], temperature), y_svc, train, test)
        out["cas_svc"] = {
            "value": svc["synthetic"],
            "real": svc["real"],
            "reference_real": SVC_REAL_REFERENCE,
            "ratio": svc["synthetic"] / svc["real"] if svc["real"] > 0 else None,
            "target": "-",
            "pass": None,
            "protocol": f"sklearn SVC(gamma=0.001) fit on {len(y_svc)} samples (seed {seeds[0]}, pixels "
            f"0..16), scored on the {n_test} real test images (digits' second half); 'real' = fit on the "
            f"real first half ({svc['real']:.4f}; scikit-learn's example reports {SVC_REAL_REFERENCE})",
        }
    else:
        out["cas_svc"] = {
            "value": None,
            "target": "-",
            "pass": None,
            "protocol": "skipped: defined for 8x8 grey digits only",
        }

    # Memorisation: pixel space is the headline.
    mem_px = memorisation(first.flatten(1), train.images.flatten(1), test.images.flatten(1))
    mem_ft = memorisation(f_fake, f_train, f_test)
    target, ok = _target("memorisation", mem_px["near_copy_rate"], model_type)
    out["memorisation"] = {
        "value": mem_px["near_copy_rate"],
        "pixel": mem_px,
        "feature": mem_ft,
        "target": target,
        "pass": ok,
        "protocol": f"near-copy rate in PIXEL space (headline: a copy is a pixel-level notion; the "
        f"classifier's features are built to map different images of one class close together, so "
        f"feature-space near-copies overstate copying): share of {n_fake} samples whose nearest train "
        f"image (L2, [-1, 1] pixels) is closer than the closest any of the {n_test} real test images "
        f"gets to the train split (tau = {mem_px['threshold']:.4f}); feature-space figures reported too",
    }

    # Augmentation gain.
    recipe = LOW_DATA_RECIPES[model_type]
    if fast:
        recipe = dataclasses.replace(recipe, steps=max(1, recipe.steps // 8))
    n_synth = 200 if fast else GAIN_SYNTH_PER_CLASS
    by_k = {}
    for k in gain_k:
        by_k[str(k)] = augmentation_gain(
            spec,
            model_type,
            k,
            seeds,
            train_fn=train_fn,
            image_size=size,
            n_synth_per_class=n_synth,
            model_config=dataclasses.asdict(ckpt.config),
            recipe=recipe,
            classifier_config=dataclasses.replace(classifier_config, translation=0.0),
            shift_reference=not fast and k == 10,
            train=train,
            test=test,
            log=log,
        )
    head_k = "10" if "10" in by_k else next(iter(by_k), None)
    head = by_k[head_k]["gain_pp"]["mean"] if head_k else None
    target, ok = _target("augmentation_gain", head if head_k == "10" else None, model_type)
    gen_text = (
        "train_fn supplied by the caller"
        if train_fn is not None
        else (
            f"a {model_type} with this model's config trained in-process on those images only for "
            f"{recipe.steps} steps (lr {recipe.lr:g}"
            + (
                f", training images shifted by up to {recipe.data_translation:g} of the side"
                if recipe.data_translation
                else ""
            )
            + ")"
        )
    )
    head_g = by_k[head_k] if head_k else {}
    out["augmentation_gain"] = {
        "value": head,
        "k": int(head_k) if head_k else None,
        "std": head_g["gain_pp"]["std"] if head_k else None,
        "shifted": head_g.get("gain_shifted_pp"),
        "by_k": by_k,
        "target": target,
        "pass": ok,
        "protocol": f"percentage points of real test accuracy: FeatureCNN on k real train images/class "
        f"(repeated to ~{GAIN_REAL_SHARE:.0%} of the set) + {n_synth}/class samples of {gen_text}, minus the "
        f"same classifier (same seed and number of steps, no classical augmentation in either arm) on the "
        f"k real images only; k in {gain_k}, mean ± std (ddof=1) over seeds {seeds}; headline k={head_k}"
        + (f" ({_gain_text(head_g)})" if head_k else ""),
    }

    report: dict[str, Any] = {
        **out,
        "model": mv.ref,
        "model_type": model_type,
        "dataset": spec,
        "split": "test",
        "image_size": size,
        "n_per_class": n_per_class,
        "seeds": seeds,
        "gain_k": gain_k,
        "fast": bool(fast),
        "temperature": float(temperature),
        "classifier": {
            "test_accuracy": clf_acc,
            "path": clf_meta["path"],
            "cached": bool(clf_meta["cached"]),
            "config": dataclasses.asdict(classifier_config),
            "protocol": clf_text,
        },
        "summary": {
            name: {"value": out[name]["value"], "target": out[name]["target"], "pass": out[name]["pass"]}
            for name in METRICS
            if out[name]["target"] != "-"
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["duration_s"] = round(time.perf_counter() - t_start, 2)
    if write:
        report["figures"] = write_report(mv.location, report, first, labels, n_per_class, C)
    return report


def quick_summary(
    home: str | Path | None,
    model_ref: str,
    n_per_class: int = 200,
    seed: int = 0,
    classifier_config: ClassifierConfig = ClassifierConfig(),
    log: Log = _quiet,
) -> dict[str, Any]:
    """A cheap quality summary of a model version (seconds once the domain classifier is cached).

    If the version has an ``eval.json`` of a full ``genaug eval`` run, its figures are returned (``source``
    "eval.json").
    Otherwise: ``n_per_class`` samples per class (``seed``) against the real test split: label fidelity,
    FID in the domain classifier's features with its real floor, and the pixel near-copy rate
    (``source`` "quick"). The classifier is trained and cached on first use (about 10 s on digits).
    """
    mv = Registry(home).resolve(model_ref)
    model_type = mv.info.get("type", "")
    eval_json = mv.location.join("eval.json")
    report = eval_json.read_json() if eval_json.is_file() else None
    if report is not None and not report.get("fast"):  # a --fast smoke run is not a measurement
        fid_m, gain = report.get("fid") or {}, report.get("augmentation_gain") or {}
        return {
            "model": mv.ref,
            "source": "eval.json",
            "label_fidelity": (report.get("label_fidelity") or {}).get("value"),
            "fid": fid_m.get("value"),
            "fid_floor": fid_m.get("floor"),
            "near_copies": (report.get("memorisation") or {}).get("value"),
            "cas_ratio": (report.get("cas_ratio") or {}).get("value"),
            "gain_pp": gain.get("value"),
            "fid_factor": FID_FLOOR_FACTOR.get(model_type, 2.0),
        }
    ckpt = mv.load()
    spec = mv.info.get("dataset")
    if not spec:
        raise ValueError(f"model {mv.ref} names no dataset in model.json")
    train, test = _check_dataset(spec, ckpt, int(ckpt.config.image_size))
    clf, _ = feature_classifier(home, train, test, classifier_config, log)
    labels = torch.arange(train.num_classes).repeat_interleave(n_per_class)  # (C*n,)
    fake = _samples(ckpt.model, labels, seed)
    f_train, f_test, f_fake = (extract_features(clf, x) for x in (train.images, test.images, fake))
    mem = memorisation(fake.flatten(1), train.images.flatten(1), test.images.flatten(1))
    return {
        "model": mv.ref,
        "source": "quick",
        "label_fidelity": label_fidelity(clf, fake, labels)["mean"],
        "fid": fid(f_fake, f_test),
        "fid_floor": fid(f_train, f_test),
        "near_copies": mem["near_copy_rate"],
        "cas_ratio": None,
        "gain_pp": None,
        "fid_factor": FID_FLOOR_FACTOR.get(model_type, 2.0),
        "protocol": f"{len(labels)} samples (seed {seed}) vs the {len(test)} real test images; FID in the "
        f"domain classifier's features, floor = real train vs real test",
    }


def summary_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines of a small text table of ``quick_summary`` results, targets beside the values."""

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    out = [f"{'model':<18} {'label fidelity':>14} {'FID (floor)':>16} {'near-copies':>11}  source"]
    for r in rows:
        fid_text = f"{num(r['fid'], '.2f')} ({num(r['fid_floor'], '.2f')})"
        out.append(
            f"{r['model']:<18} {num(r['label_fidelity'], '.4f'):>14} {fid_text:>16} "
            f"{'-' if r['near_copies'] is None else format(100 * r['near_copies'], '.2f') + ' %':>11}  "
            f"{r['source']}"
        )
    factors = sorted({r["fid_factor"] for r in rows})
    out.append(
        "targets: label fidelity >= 0.995; FID <= "
        + " / ".join(f"{f:g}x" for f in factors)
        + " the floor (cgan / cvae); near-copies <= 0.5 %. Full report: genaug eval --model NAME"
    )
    return out


# ----------------------------------------------------------------------------- files


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """[metric, value, target, met, protocol] rows for the table (CLI and eval.md)."""
    rows = []
    for name in METRICS:
        m = report.get(name)
        if not isinstance(m, Mapping):
            continue
        value = _fmt(m.get("value"))
        if name == "fid":
            value += f" (floor {_fmt(m.get('floor'))})"
        elif name == "augmentation_gain" and m.get("value") is not None:
            value = f"{m['value']:+.2f} ± {m.get('std') or 0:.2f} pp (k={m.get('k')})"
            if m.get("shifted"):
                value += f"; both arms shifted: {m['shifted']['mean']:+.2f} ± {m['shifted']['std']:.2f} pp"
        elif name == "memorisation" and m.get("value") is not None:
            value = f"{100 * m['value']:.2f} %"
        elif name == "cas_svc" and m.get("value") is not None:
            value += f" (real {_fmt(m.get('real'))})"
        elif name in ("precision", "recall", "density", "coverage"):
            value += f" (ref {_fmt(m.get('reference'))})"
        met = {True: "yes", False: "NO", None: ""}[m.get("pass")]
        rows.append([name, value, str(m.get("target", "-")), met, str(m.get("protocol", ""))])
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    """``eval.md``: a header and a metric | value | target | met | protocol table."""
    lines = [
        f"# Evaluation of {report['model']} ({report['model_type']})",
        "",
        f"Dataset `{report['dataset']}`, test split; {report['n_per_class']} samples per class; seeds "
        f"{report['seeds']}; {'FAST smoke run (not a measurement); ' if report['fast'] else ''}"
        f"{report['duration_s']:.0f} s; {report['created_at']}.",
        f"Domain classifier: {report['classifier']['protocol']}.",
        "Targets were set on digits.",
        "",
        "| metric | value | target | met | protocol |",
        "|---|---|---|---|---|",
    ]
    for r in report_rows(report):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    figures = report.get("figures") or {}
    if figures:
        lines += ["", "Figures:", ""] + [f"- `{k}`: {v}" for k, v in figures.items()]
    return "\n".join(lines) + "\n"


def _png_grid(images: Tensor, nrow: int) -> bytes:
    from torchvision.utils import make_grid

    scale = max(1, 32 // images.shape[-1])
    up = F.interpolate(images, scale_factor=scale, mode="nearest")  # (N, C, H*s, W*s)
    grid = make_grid((up + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)  # (C', H', W')
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H', W', 3)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _matplotlib_png(draw: Callable[[Any], None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 4.5), dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _draw_curves(history: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        keys = sorted({k for h in history for k in h if k not in ("epoch", "images_per_s")})
        for key in keys:
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("training curves (history.json)")
        ax.legend()

    return draw


def _draw_metrics(report: Mapping[str, Any]) -> Callable[[Any], None]:
    names = [
        n
        for n in ("precision", "recall", "density", "coverage", "label_fidelity", "cas_ratio", "cas_svc")
        if isinstance(report.get(n, {}).get("value"), float)
    ]

    def draw(fig) -> None:
        ax = fig.add_subplot(1, 2, 1)
        ax.bar(names, [report[n]["value"] for n in names])
        ax.set_ylim(0, max(1.05, *[report[n]["value"] for n in names]) if names else 1.05)
        ax.tick_params(axis="x", rotation=45)
        ax.set_title(report["model"])
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.bar(["FID", "floor"], [report["fid"]["value"], report["fid"]["floor"]], color=["C1", "C7"])
        ax2.set_title("FID in the domain feature space")

    return draw


def write_report(
    version_dir: Path | Location | str,
    report: dict[str, Any],
    samples: Tensor,
    labels: Tensor,
    n_per_class: int,
    num_classes: int,
) -> dict[str, str]:
    """Write eval PNGs, ``eval.json`` and ``eval.md`` atomically into ``version_dir``; return figure notes."""
    version_dir = location(version_dir)  # a local folder or an object-store prefix
    figures: dict[str, str] = {}
    per_row = min(10, n_per_class)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_row] for c in range(num_classes)])
    write_bytes_atomic(version_dir / "eval_samples.png", _png_grid(samples[idx], per_row))
    figures["eval_samples.png"] = (
        f"{per_row} samples per class, one row per class (seed {report['seeds'][0]})"
    )
    have_mpl = importlib.util.find_spec("matplotlib") is not None
    history_path = version_dir / "history.json"
    if not history_path.is_file():
        figures["eval_curves.png"] = "skipped: the version has no history.json"
    elif not have_mpl:
        figures["eval_curves.png"] = "skipped: matplotlib is not installed"
    else:
        history = json.loads(history_path.read_text())
        write_bytes_atomic(version_dir / "eval_curves.png", _matplotlib_png(_draw_curves(history)))
        figures["eval_curves.png"] = "losses per epoch from history.json"
    if have_mpl:
        write_bytes_atomic(version_dir / "eval_metrics.png", _matplotlib_png(_draw_metrics(report)))
        figures["eval_metrics.png"] = "metric bars and FID vs its floor"
    else:
        figures["eval_metrics.png"] = "skipped: matplotlib is not installed"
    report["figures"] = figures
    write_json_atomic(version_dir / "eval.json", _jsonable(report))
    write_bytes_atomic(version_dir / "eval.md", render_markdown(report).encode())
    return figures


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- CLI


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"{flag} {text!r} is not a comma-separated list of integers; example: 0,1,2"
        ) from None
    if not values:
        raise ValueError(f"{flag} is empty; example: 0,1,2")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``genaug eval`` flags (shared by ``python -m jobs.evaluate``)."""
    p.add_argument(
        "--model", required=True, help="NAME[:VERSION] of a registered model (latest if no version)"
    )
    p.add_argument("--dataset", default=None, help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--fast", action="store_true", help="smoke run: 1 seed, 50 samples/class, k=10 only")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--per-class", type=int, default=200, help="samples per class per seed (default 200)")
    p.add_argument("--gain-k", default="5,10,50", help="real images per class for the gain (default 5,10,50)")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report into the version directory, print the table (missed targets: still 0)."""
    report = evaluate(
        getattr(args, "home", None),
        args.model,
        dataset=args.dataset,
        n_per_class=args.per_class,
        seeds=_int_list(args.seeds, "--seeds"),
        gain_k=_int_list(args.gain_k, "--gain-k"),
        fast=args.fast,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    rows = [r[:4] for r in report_rows(report)]
    header = ["METRIC", "VALUE", "TARGET", "MET"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(
        f"{report['model']} on {report['dataset']} test ({'FAST, ' if report['fast'] else ''}"
        f"{report['duration_s']:.0f} s; classifier test accuracy {report['classifier']['test_accuracy']:.4f})"
    )
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    path = Registry(getattr(args, "home", None)).resolve(report["model"]).location
    print(f"report: {path / 'eval.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.evaluate --model NAME[:VER] [--dataset SPEC] [--fast] [--seeds 0,1,2]``"""
    p = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--home", default=None, help=HOME_HELP)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
