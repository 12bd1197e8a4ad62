"""The optional quality filter of generation: ``filter: "label"`` keeps only samples that the domain
classifier assigns to the class they were asked for (rejection sampling), with exact counts.

The domain classifier is the cached ``FeatureCNN`` of ``jobs.evaluate`` for the model's training data
(``<home>/cache/classifiers/<training-data fingerprint>.pt``); it is trained (deterministically) and
cached on first use when ``genaug eval`` has not built it yet.

Sampling protocol, per class c asked for n_c times with seed s:

- candidates come in blocks of ``BLOCK`` rows; block b's noise is drawn from a CPU generator seeded by
  (s, c, b), so the candidate stream of a class depends only on (model, s, c, temperature);
- every candidate is rendered exactly as it will be written (uint8) and classified; the rows kept are
  the first n_c candidates of the stream classified as c, in stream order. The same request therefore
  always gives the same pixels, and asking for fewer rows gives a prefix of them;
- at most ``max(MIN_TRIES, MAX_TRIES_FACTOR * n_c)`` candidates are examined per class (an acceptance
  rate of at least 1/MAX_TRIES_FACTOR). A class that runs out raises ``FilterRejected``: counts are
  never short and never topped up with rejected samples;
- the statistics record, per class, the rows asked for (= accepted, kept) and the candidates examined
  up to the last kept one; acceptance rate = kept / examined."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jobs.data.spec import load_dataset
from jobs.metrics.classifier import feature_classifier
from jobs.store.location import resolve_home
from jobs.store.registry import Registry
from models.sampling import denormalize_uint8, normalize_uint8

FILTERS = ("label",)


BLOCK = 512  # candidates per noise block (fixed: the stream must not depend on the request size)


MAX_TRIES_FACTOR = 20  # at most 20 candidates per kept row (acceptance rate >= 5 %) ...


MIN_TRIES = 4 * BLOCK  # ... and never fewer than this many per class


class FilterRejected(RuntimeError):
    """A class's acceptance rate fell below the bound: the filter cannot deliver exact counts."""


def check_filter(value: Any) -> str | None:
    """``None`` or ``"label"``; anything else raises ValueError naming the valid values."""
    if value is None or (isinstance(value, str) and value in FILTERS):
        return value
    raise ValueError(f"unknown filter {value!r}; valid: {', '.join(FILTERS)} (or no filter)")


def block_seed(seed: int, label: int, block: int) -> int:
    """A 63-bit torch seed for noise block ``block`` of class ``label`` under request seed ``seed``."""
    words = np.random.SeedSequence([int(seed), int(label), int(block), 0x5EED]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF


# ----------------------------------------------------------------------------- the classifier


_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached_classifier(home: str, spec: str, image_size: int, fingerprint: str) -> nn.Module:

    try:
        train = load_dataset(spec, "train", image_size)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(
            f"the label filter needs the model's domain classifier; it is not cached and the training "
            f"data {spec!r} cannot be loaded to train it ({e})"
        ) from None
    if train.fingerprint != fingerprint:
        raise ValueError(
            f"the training data {spec!r} changed since the model was trained (fingerprint "
            f"{train.fingerprint[:12]} vs {fingerprint[:12]}); the label filter needs a classifier of "
            "the model's own training data"
        )
    net, _ = feature_classifier(home, train)
    return net.eval()


def classifier_for(home: str | Path | None, data: Mapping[str, Any], classes: Sequence[str]) -> nn.Module:
    """The domain classifier of a model's training data (``data.json`` facts): cached or trained now.

    Kept in memory per (home, data); the file cache is ``jobs.metrics.classifier.feature_classifier``'s.
    """

    spec, fingerprint = data.get("spec"), data.get("fingerprint")
    shape = data.get("image_shape") or [None, None, None]
    if not spec or not fingerprint or not shape[-1]:
        raise ValueError(
            "the model's data.json lacks spec/fingerprint/image_shape; the label filter needs them"
        )
    with _lock:  # one replica thread trains it; the others wait and reuse it
        net = _cached_classifier(str(resolve_home(home)), str(spec), int(shape[-1]), str(fingerprint))
    if net.head.out_features != len(classes):
        raise ValueError(
            f"the domain classifier knows {net.head.out_features} classes; the model has {len(classes)}"
        )
    return net


def model_classifier(home: str | Path | None, model_ref: str) -> nn.Module:
    """``classifier_for`` of a registered model version ``NAME[:VERSION]``."""

    info = Registry(home).resolve(model_ref).info
    return classifier_for(home, info.get("data") or {}, info.get("classes") or [])


# ----------------------------------------------------------------------------- rejection sampling


@torch.no_grad()
def filtered_uint8(
    model: nn.Module,
    classifier: nn.Module,
    labels: np.ndarray,
    seed: int,
    temperature: float = 1.0,
    *,
    block: int = BLOCK,
    max_tries_factor: float = MAX_TRIES_FACTOR,
    min_tries: int = MIN_TRIES,
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Samples for ``labels`` (N,) as uint8 (N, H, W, C), each one classified as its own label.

    Row i holds the j-th kept sample of class ``labels[i]`` where j counts earlier rows of that class.
    Returns the images and per-class statistics ``{class index: {"kept", "examined"}}`` (classes
    present only). Raises ``FilterRejected`` when a class needs more than its bound of candidates.
    """

    labels = np.asarray(labels, dtype=np.int64)
    device = next(model.parameters()).device
    classifier = classifier.eval()
    out: np.ndarray | None = None
    stats: dict[str, dict[str, int]] = {}
    for c in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == c)
        need = len(rows)
        budget = max(int(min_tries), int(math.ceil(max_tries_factor * need)))
        kept: list[np.ndarray] = []
        n_kept, examined, b = 0, 0, 0
        while n_kept < need:
            if examined >= budget:
                raise FilterRejected(
                    f"label filter: class {c} kept {n_kept} of {examined} candidates "
                    f"({n_kept / max(examined, 1):.1%}), below the bound of 1 in {max_tries_factor:g}; "
                    f"{need} were asked for. The model rarely makes this class as the domain classifier "
                    "sees it: retrain it, or ask without the filter"
                )
            g = torch.Generator().manual_seed(block_seed(seed, c, b))
            noise = torch.randn(block, model.noise_dim, generator=g)  # (block, D)
            y = torch.full((block,), c, dtype=torch.long)
            u8 = denormalize_uint8(
                model.sample(y.to(device), temperature=temperature, noise=noise.to(device))
            )
            ok = (classifier(normalize_uint8(u8)).argmax(1) == c).numpy()  # (block,)
            hits = np.flatnonzero(ok)[: need - n_kept]
            if len(hits) == need - n_kept:  # the last kept row ends the examination
                examined += int(hits[-1]) + 1
            else:
                examined += block
            kept.append(u8[hits])
            n_kept += len(hits)
            b += 1
        images = np.concatenate(kept)
        if out is None:
            out = np.empty((len(labels), *images.shape[1:]), dtype=np.uint8)
        out[rows] = images
        stats[str(c)] = {"kept": need, "examined": examined}
    if out is None:  # no rows asked for
        c_h_w = (model.config.image_size, model.config.image_size, model.config.channels)
        out = np.zeros((0, *c_h_w), dtype=np.uint8)
    return out, stats


def summarize(per_shard: Sequence[Mapping[str, Mapping[str, int]]], classes: Sequence[str]) -> dict[str, Any]:
    """Sum per-shard ``{class index: {kept, examined}}`` into the manifest's per-class acceptance."""
    per_class: dict[str, dict[str, Any]] = {}
    for stats in per_shard:
        for c, s in stats.items():
            name = str(classes[int(c)])
            acc = per_class.setdefault(name, {"kept": 0, "examined": 0})
            acc["kept"] += int(s["kept"])
            acc["examined"] += int(s["examined"])
    for acc in per_class.values():
        acc["acceptance_rate"] = acc["kept"] / acc["examined"] if acc["examined"] else None
    kept = sum(a["kept"] for a in per_class.values())
    examined = sum(a["examined"] for a in per_class.values())
    return {
        "filter": "label",
        "per_class": per_class,
        "kept": kept,
        "examined": examined,
        "acceptance_rate": kept / examined if examined else None,
        "protocol": (
            "rejection sampling: a row is kept only if the domain classifier (jobs.evaluate FeatureCNN "
            "of the training data) assigns it the requested class; candidates per class drawn in blocks "
            f"of {BLOCK} from seed (shard seed, class, block); at most max({MIN_TRIES}, "
            f"{MAX_TRIES_FACTOR} x rows) candidates per class and shard; acceptance = kept / examined"
        ),
    }
