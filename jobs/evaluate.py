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
import math
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
    real_baseline,
)
from jobs.metrics.distances import density_coverage, fid, precision_recall
from jobs.metrics.fidelity import SVC_REAL_REFERENCE, cas, cas_svc, label_fidelity, memorisation
from jobs.metrics.gain import (
    GAIN_REAL_SHARE,
    GAIN_SYNTH_PER_CLASS,
    LOW_DATA_RECIPES,
    TrainFn,
    augmentation_gain,
    gain_text,
    sample_images,
)
from jobs.metrics.report import METRICS, report_rows, write_report
from jobs.store.location import resolve_home
from jobs.store.registry import Registry

FID_FLOOR_FACTOR = {"cgan": 1.5, "cvae": 2.0}  # target: FID <= factor x real-train-vs-real-test floor


TARGETS_DIGITS = {  # the project's quality targets, set on digits; shown for every dataset
    "cas_ratio": ">= 0.99",
    "label_fidelity": ">= 0.995",
    "fid": "<= 1.5x floor (cgan) / 2x floor (cvae)",
    "augmentation_gain": ">= +3 pp at k=10",
    "memorisation": "<= 0.5 % near-copies",
}


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
    log: Log = quiet,
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
    samples = {s: sample_images(model, labels, s, temperature) for s in seeds}
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
    cas_mean, cas_std = mean_std([r["synthetic"] for r in cas_rows])
    real_mean, real_std = mean_std([r["real"] for r in cas_rows])
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
        svc = cas_svc(sample_images(model, y_svc, seeds[0], temperature), y_svc, train, test)
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
        + (f" ({gain_text(head_g)})" if head_k else ""),
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
    log: Log = quiet,
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
    fake = sample_images(ckpt.model, labels, seed)
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
    return job_main("python -m jobs.evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
