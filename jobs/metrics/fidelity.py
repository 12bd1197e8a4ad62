"""Does a sample look like its class: label fidelity, CAS (Ravuri & Vinyals 2019), the SVC digits protocol,
and near-copies of training images (memorisation). Protocols in each docstring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from jobs.data.images import ImageDataset
from jobs.metrics.classifier import ClassifierConfig, accuracy, predict, train_classifier
from jobs.metrics.distances import nearest_distance

SVC_REAL_REFERENCE = 0.969  # REFERENCE.md: SVC(gamma=0.001) on digits' first half, scored on the second


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
