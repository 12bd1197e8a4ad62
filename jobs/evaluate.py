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
thread count."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.data.images import ImageDataset
from jobs.data.spec import load_dataset
from jobs.entry import job_main
from jobs.metrics.classifier import (
    ClassifierConfig,
    Log,
    extract_features,
    feature_classifier,
    mean_std,
    quiet,
    real_accuracy,
    store_real_accuracy,
)
from jobs.metrics.distances import density_coverage, fid, precision_recall
from jobs.metrics.fidelity import SVC_REAL_REFERENCE, cas, cas_svc, label_fidelity, memorisation
from jobs.metrics.gain import (
    GAIN_REAL_SHARE,
    GAIN_SYNTH_PER_CLASS,
    LOW_DATA_RECIPES,
    GainPlan,
    LowDataRecipe,
    TrainFn,
    gain_calls,
    gain_plan,
    gain_summary,
    gain_text,
    sample_images,
    train_generator,
)
from jobs.metrics.longtail import (
    LONG_TAIL_RECIPES,
    RARE_CLASSES,
    RARE_KEEP,
    long_tail_calls,
    long_tail_summary,
)
from jobs.metrics.report import METRICS, report_rows, write_report
from jobs.metrics.targets import FID_FLOOR_FACTOR, GAIN_DEFAULT_K, GAIN_HEAD_K, domain
from jobs.metrics.targets import target as target_of
from jobs.store.location import cache_dir, resolve_home
from jobs.store.registry import Registry
from jobs.tasks import Call, run_calls


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


def evaluate(
    home: str | Path | None,
    model_ref: str,
    dataset: str | None = None,
    n_per_class: int = 200,
    seeds: Sequence[int] = (0, 1, 2),
    gain_k: Sequence[int] | None = None,
    fast: bool = False,
    *,
    cas_per_class: int | None = None,
    long_tail: bool | None = None,
    train_fn: TrainFn | None = None,
    classifier_config: ClassifierConfig = ClassifierConfig(),
    temperature: float = 1.0,
    workers: int = 1,
    resume: bool = True,
    write: bool = True,
    log: Log = quiet,
) -> dict[str, Any]:
    """Evaluate registered model ``model_ref`` on the TEST split of ``dataset`` (default: model.json's).

    Generates ``n_per_class`` samples per class for each seed (through ``jobs.generate.generate_uint8``,
    i.e. exactly the pixels a dataset job would write), computes every metric in ``METRICS`` with its
    protocol, target and pass flag, and (``write``) stores ``eval.json``, ``eval.md`` and PNGs in the
    model version directory. ``fast``: one seed, at most 50 samples per class, k=10 only, the gain's
    generator trained for 1/8 of its epochs, 1000 SVC samples: a smoke test, not a measurement.
    ``train_fn`` replaces the generator training of the gain and long-tail protocols (tests).
    ``cas_per_class`` (None: ``n_per_class``, raised to the real train split's mean class size, so that the
    CAS classifier sees as many samples as its real reference sees images, as Ravuri & Vinyals train it;
    ``fast``: ``n_per_class``) sets the synthetic training set of the CAS row.
    ``gain_k`` defaults to 5,10,50 on digits and 10,50,200 elsewhere; ``long_tail`` (None: on when every
    class has >= 500 train images, so that 1 % of a class is >= 5 images) runs ``long_tail_gain``.
    Targets: ``jobs.metrics.targets`` (digits' table on digits, the real-data table elsewhere).

    The classifier trainings of the CAS, gain and long-tail protocols (one per seed, and k) are
    independent calls (``jobs.tasks.run_calls``): ``workers`` > 1 runs them as Ray tasks of one CPU each,
    that many at once, with the same figures (each is seeded and pinned to one thread). ``resume`` keeps
    each call's result in ``<cache>/eval-calls/`` as it finishes and reuses it when the same call (same
    model weights, data, protocol and code) is asked again: an interrupted evaluation, or one with more
    k values, redoes only what is missing.
    """
    t_start = time.perf_counter()
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 2:
        raise ValueError(f"n_per_class must be an integer >= 2, got {n_per_class!r}")
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be one or more integers >= 0, e.g. 0,1,2; got {seeds}")
    if cas_per_class is not None and (
        isinstance(cas_per_class, bool) or not isinstance(cas_per_class, int) or cas_per_class < 2
    ):
        raise ValueError(f"cas_per_class must be an integer >= 2 or None (auto), got {cas_per_class!r}")
    if fast:
        seeds, n_per_class = seeds[:1], min(n_per_class, 50)
    home = resolve_home(home)
    mv = Registry(home).resolve(model_ref)
    info = mv.info
    ckpt = mv.load()
    model, model_type = ckpt.model, ckpt.model_type
    spec = dataset or info.get("dataset")
    if not spec:
        raise ValueError(f"model {mv.ref} names no dataset in model.json; pass one: --dataset SPEC")
    kind = domain(spec)
    gain_k = [int(k) for k in (gain_k if gain_k is not None else GAIN_DEFAULT_K[kind])]
    if fast:
        gain_k = [10] if 10 in gain_k else gain_k[:1]
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
    first = sample_images(model, labels, seeds[0], temperature)  # feeds every single-set metric
    n_fake, n_test, n_train = len(first), len(test), len(train)
    f_train, f_test, f_fake = (extract_features(clf, x) for x in (train.images, test.images, first))
    out: dict[str, Any] = {}

    # FID and its floor.
    fid_value, floor = fid(f_fake, f_test), fid(f_train, f_test)
    target, ok = target_of("fid", fid_value, model_type, kind, floor=floor)
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
    target, ok = target_of("label_fidelity", lf["mean"], model_type, kind, reference=clf_acc)
    out["label_fidelity"] = {
        "value": lf["mean"],
        "per_class": lf["per_class"],
        "min_class": min(lf["per_class"].values()),
        "target": target,
        "pass": ok,
        "protocol": f"share of samples the domain classifier (test accuracy {clf_acc:.4f}) assigns the "
        f"requested class; mean over {C} classes of {n_per_class} samples each (seed {seeds[0]})",
    }

    # The protocols that train classifiers (CAS, gain, long tail): independent calls, longest first.
    if fast:
        n_cas = n_per_class
    else:
        n_cas = cas_per_class if cas_per_class is not None else max(n_per_class, -(-n_train // C))
    cas_labels = torch.arange(C).repeat_interleave(n_cas)  # (C*n_cas,)
    if long_tail is None:
        long_tail = not fast and fewest >= 500
    gain = _gain_plans(model_type, ckpt, spec, C, gain_k, fast, train_fn, classifier_config)
    lt_fn = train_fn or functools.partial(
        train_generator,
        model_type,
        model_config=dataclasses.asdict(ckpt.config),
        recipe=LONG_TAIL_RECIPES[model_type],
    )
    lt_config = dataclasses.replace(classifier_config, translation=0.0)
    known_real = dict(clf_meta.get("real_accuracy_by_seed") or {})  # real references already trained
    calls: dict[str, Call] = {}
    lt_calls = long_tail_calls(train, test, seeds, lt_fn, lt_config) if long_tail else {}
    calls.update(lt_calls)
    by_k_calls = {k: gain_calls(gain.plans[k], seeds, train, test, gain.train_fn) for k in gain_k}
    for k in sorted(gain_k, reverse=True):  # the longest first
        calls.update(by_k_calls[k])
    for s in seeds:
        calls[f"cas seed {s}"] = Call(
            cas_of_samples,
            dict(
                home=home.uri,
                model_ref=mv.ref,
                checkpoint_sha256=info.get("checkpoint_sha256"),
                labels=cas_labels,
                seed=s,
                temperature=temperature,
                test=test,
                config=classifier_config,
            ),
        )
        if str(s) not in known_real:
            calls[f"real seed {s}"] = Call(
                real_accuracy, dict(train=train, test=test, seed=s, config=classifier_config)
            )
    log(
        f"{len(calls)} classifier protocols (CAS, gain, long tail) on {workers} worker(s)"
        + (f"; finished ones kept in {_calls_cache(home)}" if resume else "")
    )
    done = run_calls(
        calls,
        workers,
        on_done=lambda name, acc: (
            store_real_accuracy(home, train, int(name.split()[-1]), acc) if name.startswith("real") else None
        ),
        progress=log,
        cache=_calls_cache(home) if resume else None,
    )
    cas_rows = [
        {
            "seed": s,
            "synthetic": done[f"cas seed {s}"],
            "real": float(done.get(f"real seed {s}", known_real.get(str(s)))),
        }
        for s in seeds
    ]
    cas_mean, cas_std = mean_std([r["synthetic"] for r in cas_rows])
    real_mean, real_std = mean_std([r["real"] for r in cas_rows])
    ratio = cas_mean / real_mean if real_mean > 0 else float("nan")
    cas_proto = (
        f"FeatureCNN trained from scratch on {C * n_cas} samples ({n_cas}/class, generation seed = "
        f"training seed; {classifier_config.steps_for(C * n_cas)} steps) only, tested on the {n_test} real "
        f"test images; mean of seeds {seeds}"
    )
    out["cas"] = {
        "value": cas_mean,
        "std": cas_std,
        "real": real_mean,
        "real_std": real_std,
        "per_seed": cas_rows,
        "target": "-",
        "pass": None,
        "protocol": cas_proto + f"; 'real' = same classifier on the real train split "
        f"({classifier_config.steps_for(n_train)} steps)",
        "samples_per_class": n_cas,
    }
    target, ok = target_of("cas_ratio", ratio, model_type, kind)
    out["cas_ratio"] = {
        "value": ratio,
        "target": target,
        "pass": ok,
        "protocol": f"mean CAS / mean accuracy of the same classifier trained on the {n_train} real train "
        f"images (seeds {seeds}): {cas_mean:.4f} / {real_mean:.4f}",
    }

    # The scikit-learn digits protocol.
    if kind == "digits" and size == 8 and train.channels == 1:
        n_svc = 100 if fast else 500
        y_svc = torch.arange(C).repeat_interleave(n_svc)  # (C*n_svc,)
        svc_rows = [cas_svc(sample_images(model, y_svc, s, temperature), y_svc, train, test) for s in seeds]
        svc_mean, svc_std = mean_std([r["synthetic"] for r in svc_rows])
        real = svc_rows[0]["real"]  # the real-trained SVC is deterministic: the same for every seed
        out["cas_svc"] = {
            "value": svc_mean,
            "std": svc_std,
            "per_seed": [r["synthetic"] for r in svc_rows],
            "real": real,
            "reference_real": SVC_REAL_REFERENCE,
            "ratio": svc_mean / real if real > 0 else None,
            "target": "-",
            "pass": None,
            "protocol": f"sklearn SVC(gamma=0.001) fit on {len(y_svc)} samples per seed (seeds {seeds}, "
            f"mean ± std; pixels 0..16), scored on the {n_test} real test images (digits' second half); "
            f"'real' = fit on the real first half ({real:.4f}; scikit-learn's example reports "
            f"{SVC_REAL_REFERENCE})",
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
    target, ok = target_of("memorisation", mem_px["near_copy_rate"], model_type, kind)
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

    # Augmentation gain, plain and over classical augmentation; long-tailed balancing.
    by_k = {str(k): gain_summary(gain.plans[k], [done[n] for n in by_k_calls[k]]) for k in gain_k}
    out.update(_gain_sections(kind, model_type, gain, by_k, seeds, gain_k, train_fn))
    lt = long_tail_summary([done[n] for n in lt_calls]) if long_tail else None
    out["long_tail_gain"] = _long_tail_section(model_type, kind, len(test), seeds, lt, train_fn)

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
        "targets": kind,
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


def cas_of_samples(
    home: str,
    model_ref: str,
    checkpoint_sha256: str | None,
    labels: torch.Tensor,
    seed: int,
    temperature: float,
    test: ImageDataset,
    config: ClassifierConfig,
) -> float:
    """CAS of the samples of registered ``model_ref`` (its checkpoint hash checked) for ``labels``
    (generation seed = training seed) on the real ``test`` split. Loads the model itself: a Ray task's
    argument is pickled, and spectrally normalised modules pickle only through their state dict."""
    mv = Registry(home).resolve(model_ref)
    if mv.info.get("checkpoint_sha256") != checkpoint_sha256:
        raise ValueError(
            f"model {model_ref} in {home} has checkpoint {mv.info.get('checkpoint_sha256')!r}, "
            f"expected {checkpoint_sha256!r}: the version changed during the evaluation"
        )
    x = sample_images(mv.load().model, labels, seed, temperature)  # (N, C, H, W)
    return cas(x, labels, test.images, test.labels, seed, test.num_classes, config)


def _calls_cache(home: str | Path | None) -> Path:
    """Where ``evaluate(resume=True)`` keeps each finished protocol call (local, beside the classifiers)."""
    return cache_dir(home) / "eval-calls"


@dataclasses.dataclass(frozen=True)
class _Gain:
    """The gain protocols of one evaluation: the generator recipe and each k's plan."""

    recipe: LowDataRecipe
    n_synth: int
    train_fn: TrainFn
    plans: dict[int, GainPlan]


def _gain_plans(
    model_type: str,
    ckpt,
    spec: str,
    num_classes: int,
    gain_k: Sequence[int],
    fast: bool,
    train_fn: TrainFn | None,
    classifier_config: ClassifierConfig,
) -> _Gain:
    """The generator recipe (``fast``: 1/8 of its steps), its training function and each k's ``gain_plan``."""
    recipe = LOW_DATA_RECIPES[model_type]
    if fast:
        recipe = dataclasses.replace(recipe, steps=max(1, recipe.steps // 8))
    n_synth = 200 if fast else GAIN_SYNTH_PER_CLASS
    fn = train_fn or functools.partial(
        train_generator, model_type, model_config=dataclasses.asdict(ckpt.config), recipe=recipe
    )
    config = dataclasses.replace(classifier_config, translation=0.0)
    plans = {
        int(k): gain_plan(spec, int(k), num_classes, n_synth, GAIN_REAL_SHARE, config, not fast)
        for k in gain_k
    }
    return _Gain(recipe, n_synth, fn, plans)


def _gain_sections(
    kind: str,
    model_type: str,
    gain: _Gain,
    by_k: dict[str, dict[str, Any]],
    seeds: Sequence[int],
    gain_k: Sequence[int],
    train_fn: TrainFn | None,
) -> dict[str, Any]:
    """``augmentation_gain`` (no classical augmentation in either arm) and ``gain_over_classical`` (both
    arms with the dataset's classical augmentation) at every k in ``gain_k`` (``by_k``: ``gain_summary``)."""
    recipe, n_synth = gain.recipe, gain.n_synth
    want = str(GAIN_HEAD_K[kind])
    head_k = want if want in by_k else next(iter(by_k), None)
    head_g = by_k[head_k] if head_k else {}
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
    arms = (
        f"FeatureCNN on k real train images/class (repeated to ~{GAIN_REAL_SHARE:.0%} of the set) + "
        f"{n_synth}/class samples of {gen_text}, minus the same classifier (same seed and number of steps) "
        f"on the k real images only; k in {list(gain_k)}, mean ± std (ddof=1) over seeds {list(seeds)}"
    )
    sections = {}
    for name, key, with_classical in (
        ("augmentation_gain", "gain_pp", "no classical augmentation in either arm"),
        ("gain_over_classical", "gain_classical_pp", "both arms with classical augmentation"),
    ):
        head = (head_g.get(key) or {}).get("mean") if head_k else None
        judged = head if head_k == want else None
        target, ok = target_of(name, judged, model_type, kind)
        classical = head_g.get("classical") if name == "gain_over_classical" else None
        sections[name] = {
            "value": head,
            "k": int(head_k) if head_k else None,
            "std": (head_g.get(key) or {}).get("std") if head_k else None,
            "by_k": {k: g.get(key) for k, g in by_k.items()},
            "target": target,
            "pass": ok,
            "protocol": f"percentage points of real test accuracy: {arms}; {with_classical}"
            + (f" ({classical})" if classical else "")
            + f"; headline k={head_k}"
            + (f" ({gain_text(head_g)})" if head_k and name == "augmentation_gain" else ""),
        }
    sections["augmentation_gain"]["details"] = by_k
    return sections


def _long_tail_section(
    model_type: str,
    kind: str,
    n_test: int,
    seeds: Sequence[int],
    lt: dict[str, Any] | None,
    train_fn: TrainFn | None,
) -> dict[str, Any]:
    """``long_tail_gain``'s report entry from its summary ``lt`` (None: skipped, with the reason)."""
    if lt is None:
        return {
            "value": None,
            "target": target_of("long_tail_gain", None, model_type, kind)[0],
            "pass": None,
            "protocol": "skipped: needs >= 500 train images in every class (--long-tail on forces it)",
        }
    target, ok = target_of("long_tail_gain", lt["gain_pp"]["mean"], model_type, kind)
    recipe = LONG_TAIL_RECIPES[model_type]
    generator = (
        "train_fn supplied by the caller"
        if train_fn is not None
        else f"{recipe.steps} steps, lr {recipe.lr:g}, class-balanced batches"
        + (", DiffAugment" if recipe.diffaug else "")
    )
    return {
        "value": lt["gain_pp"]["mean"],
        "std": lt["gain_pp"]["std"],
        "oversampled": lt["oversampled"],
        "topped_up": lt["topped_up"],
        "mixed": lt["mixed"],
        "gain_mixed_pp": lt["gain_mixed_pp"],
        "full_real": lt["full_real"],
        "ceiling_pp": lt["ceiling_pp"],
        "per_seed": lt["per_seed"],
        "target": target,
        "pass": ok,
        "protocol": f"balanced accuracy (mean per-class recall) on the {n_test} real test images, in pp: "
        f"{RARE_CLASSES} classes (chosen by seed) cut to {RARE_KEEP:.0%} of their train images; a "
        f"{model_type} with this model's config trained in-process on that long-tailed set only "
        f"({generator}); FeatureCNN on the set topped up with samples of "
        f"the rare classes to the largest class's size, minus the same classifier (same seed, steps and "
        f"{lt['classical']}) on the set with the rare classes oversampled to that size; mean ± std "
        f"(ddof=1) over seeds {list(seeds)}. gain_mixed_pp: the same with each rare class's real images "
        f"cycled to {lt['real_share']:.0%} of that size and samples for the rest. ceiling_pp: the same "
        f"classifier on the whole train split (every rare image real) minus oversampling, the most a top-up "
        f"of real-quality images could buy",
    }


def quick_summary(
    home: str | Path | None,
    model_ref: str,
    n_per_class: int = 200,
    seed: int = 0,
    classifier_config: ClassifierConfig = ClassifierConfig(),
    log: Log = quiet,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """A cheap quality summary of a model version (seconds once the domain classifier is cached).

    If the version has an ``eval.json`` of a full ``genaug eval`` run, its figures are returned (``source``
    "eval.json").
    Otherwise: ``n_per_class`` samples per class (``seed``) against the real test split: label fidelity,
    FID in the domain classifier's features with its real floor, and the pixel near-copy rate
    (``source`` "quick"). The classifier is trained and cached on first use (about 10 s on digits).
    ``temperature`` multiplies the model's own sampling scale, as a request's does.
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
    fake = sample_images(ckpt.model, labels, seed, temperature)
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
        "protocol": f"{len(labels)} samples (seed {seed}, temperature {temperature:g}) vs the {len(test)} "
        "real test images; FID in the "
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


def _gain_k(text: str | None) -> list[int] | None:
    """``--gain-k``: None (the domain's default), ``none`` (no gain protocols) or a comma-separated list."""
    if text is None:
        return None
    return [] if text.strip().lower() == "none" else _int_list(text, "--gain-k")


def _workers(text: str) -> int:
    """``--workers``: ``auto`` (this machine's CPUs) or an integer >= 1."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers {text!r} is not valid; valid: auto or an integer >= 1")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``genaug eval`` flags (shared by ``python -m jobs.evaluate``)."""
    p.add_argument(
        "--model", required=True, help="NAME[:VERSION] of a registered model (latest if no version)"
    )
    p.add_argument("--dataset", default=None, help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--fast", action="store_true", help="smoke run: 1 seed, 50 samples/class, k=10 only")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--per-class", type=int, default=200, help="samples per class per seed (default 200)")
    p.add_argument(
        "--cas-per-class",
        type=int,
        default=None,
        help="samples per class the CAS classifier trains on (default: --per-class, at least the real "
        "train split's images per class, as Ravuri & Vinyals)",
    )
    p.add_argument(
        "--gain-k",
        default=None,
        help="real images per class for the gain (default 5,10,50 on digits, 10,50,200 elsewhere; "
        "'none' skips the gain protocols)",
    )
    p.add_argument(
        "--long-tail",
        choices=("auto", "on", "off"),
        default="auto",
        help="long-tailed balancing protocol (auto: on when every class has >= 500 train images)",
    )
    p.add_argument(
        "--workers",
        default="auto",
        help="classifier protocols (CAS, gain, long tail) run at once, as Ray tasks of one CPU each; "
        "the figures do not depend on it (auto: this machine's CPUs; 1: in this process, no Ray)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="recompute every protocol (default: reuse those an earlier run of the same model, data, "
        "protocol and code finished; kept in <home>/cache/eval-calls/)",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report into the version directory, print the table (missed targets: still 0)."""
    report = evaluate(
        getattr(args, "home", None),
        args.model,
        dataset=args.dataset,
        n_per_class=args.per_class,
        cas_per_class=args.cas_per_class,
        seeds=_int_list(args.seeds, "--seeds"),
        gain_k=_gain_k(args.gain_k),
        fast=args.fast,
        long_tail={"auto": None, "on": True, "off": False}[args.long_tail],
        workers=_workers(args.workers),
        resume=not args.fresh,
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
    return job_main("python -m jobs.evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    # Run the importable module, not __main__, so Ray pickles its functions by reference.
    from jobs.evaluate import main as _main

    sys.exit(_main())
