"""The domain classifier: a small CNN trained on the real train split, cached per dataset fingerprint.

Its accuracy on the real test split is the reference for label fidelity and CAS; its penultimate layer is
the feature space of FID-domain, precision/recall, density/coverage and near-copies."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.data.images import ImageDataset
from jobs.store.location import cache_dir, read_json, write_bytes_atomic, write_json_atomic
from models.blocks import diff_augment

CLASSIFIER_VERSION = 1  # bump when FeatureCNN or its training changes: old cache files are then retrained


Log = Callable[[str], None]


def quiet(_: str) -> None:
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
    hflip: bool = False  # random horizontal flips (classical augmentation where a mirror keeps the label)
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
def deterministic(seed: int, threads: int) -> Iterator[None]:
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
    (``diff_augment`` translation) on every batch and, with ``hflip``, a random half of each batch
    mirrored; one CPU thread, deterministic algorithms.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"need as many labels as images and at least one image; got {len(images)} vs {len(labels)}"
        )
    images, labels = images.float(), labels.long()
    n = len(images)
    batch = min(config.batch_size, n)
    steps = config.steps_for(n)
    with deterministic(seed, config.threads):
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
            if config.hflip:
                mirror = torch.rand(len(x)) < 0.5  # (B,)
                x = torch.where(mirror[:, None, None, None], x.flip(-1), x)  # (B, C, S, S)
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
def class_probabilities(classifier: FeatureCNN, images: Tensor, batch: int = 1024) -> Tensor:
    """Softmax class probabilities (N, num_classes) for images (N, C, S, S) in [-1, 1]."""
    classifier.eval()
    parts = [classifier(images[i : i + batch].float()).softmax(1) for i in range(0, len(images), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, classifier.head.out_features)


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

    ``<cache>`` is ``jobs.store.location.cache_dir(home)``: ``<home>/cache`` for a local root, a local folder
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
    log: Log = quiet,
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
    log: Log = quiet,
) -> float:
    """Test accuracy of the classifier trained on the real train split with ``seed`` (the CAS reference).

    Seed ``config.seed`` is the cached feature classifier; other seeds are trained once and their
    accuracy (not the weights) is cached in the classifier's json.
    """
    _, meta = feature_classifier(home, train, test, config, log)
    found = (meta.get("real_accuracy_by_seed") or {}).get(str(seed))
    if found is not None:
        return float(found)
    log(f"training the real-data reference classifier, seed {seed} ...")
    acc = real_accuracy(train, test, seed, config)
    store_real_accuracy(home, train, seed, acc)
    return acc


def real_accuracy(
    train: ImageDataset, test: ImageDataset, seed: int, config: ClassifierConfig = ClassifierConfig()
) -> float:
    """Test accuracy of a ``FeatureCNN`` trained on the whole real train split with ``seed`` (no cache)."""
    net = train_classifier(train.images, train.labels, train.num_classes, seed, config)
    return accuracy(net, test.images, test.labels)


def store_real_accuracy(home: str | Path | None, train: ImageDataset, seed: int, acc: float) -> None:
    """Add ``real_baseline``'s figure for ``seed`` to the classifier cache's json."""
    _, js = classifier_cache_paths(home, train)
    stored = read_json(js)
    stored["real_accuracy_by_seed"] = {**(stored.get("real_accuracy_by_seed") or {}), str(seed): float(acc)}
    write_json_atomic(js, stored)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
