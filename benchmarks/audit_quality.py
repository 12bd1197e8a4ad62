"""How good the cVAE audit is (issue 18, deliverable 5): outliers, label errors and denoising on a test split.

Launch (the run behind ``benchmarks/QUALITY.md``, "Audit on Fashion-MNIST")::

    python -m benchmarks.audit_quality --home /tmp/fmq/home --model fm-cvae:v1 \\
        --cache /tmp/audit-quality --samples 16 --threads 1 --seeds 0,1,2 \\
        --json benchmarks/audit_quality.json

Protocol. The model is a registered cVAE; the images are the **test** split of its training data (or
``--dataset``), N images with their labels, in [-1, 1]. The audit's scores are those of ``models.audit``
with K = ``--samples`` importance samples and noise seed ``--audit-seed`` (fixed across the seeds below, so
the spread over seeds is that of the injections, flips and noise, not of the importance sampling).

- **Outlier reference**: nll(x | y) of the first ``REFERENCE_PER_CLASS`` (1,000) train images of
  each class, fitted with ``OutlierReference.fit``, exactly what ``genaug audit`` uses by default.
- **Outliers**, one kind at a time: round(2 % of N) injected images are added to the N clean test images,
  each with a label drawn uniformly at random. Kinds: ``digits`` (scikit-learn's 1,797 digits, both splits,
  resized to the model's side with ``jobs.data`` antialiased bilinear resizing, drawn without replacement),
  ``noise`` (every pixel uniform in [-1, 1]) and ``inverted`` (test images drawn without replacement, their
  pixels negated: 1 - x on the [0, 1] scale). Score: the audit's outlier percentile (nll(x | y) against
  class y's reference); AUROC of injected vs clean. The percentile is flat at 100 beyond a class's largest
  reference score, so ties there count one half (``jobs.metrics.ranking.auroc``). Baseline: the Euclidean
  distance to the k-th nearest train image (all of the train split, ``--knn`` = 5) in the domain
  classifier's feature space (``jobs.metrics.classifier``, the cached CNN of ``genaug eval``).
- **Label errors**: round(5 % of N) test images drawn without replacement get a label drawn uniformly from
  the other classes. Score: the audit's label-error score 1 - p(y | x) (uniform class prior) with the flipped
  labels; AUROC over all N and precision at the top 5 % (= the number flipped; ties at the cut-off count at
  their mean). Baseline: the domain classifier's own 1 - p(y | x) (confident learning). ``recovered``: share
  of flipped images whose suggested label (argmax p(c | x)) is the true one.
- **Denoising**: Gaussian noise of std sigma on the [0, 1] pixel scale (2 sigma on the model's [-1, 1]
  scale) is added to every test image and the result clipped to the valid range (a noisy image as it would
  be stored). PSNR (dB, on [0, 1], data range 1, mean over images) of the noisy input and of
  ``models.audit.reconstruct(noisy, y)`` with the true labels, against the clean image. References in the
  same run: a 5x5 Gaussian blur (std 1 px) of the noisy image, and ``reconstruct`` of the clean image (the
  model's own ceiling).

Seeds (``--seeds``) drive the injections, flips and noise; every figure is the mean ± sample std over
them. Wall time: the whole run, with each phase, on the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.auditor.spec import REFERENCE_PER_CLASS, load_images
from jobs.data.images import ImageDataset
from jobs.data.spec import load_dataset
from jobs.metrics.classifier import (
    FeatureCNN,
    class_probabilities,
    classifier_cache_paths,
    extract_features,
    feature_classifier,
    mean_std,
)
from jobs.metrics.distances import kth_nearest_distance
from jobs.metrics.ranking import auroc, precision_at
from jobs.metrics.restoration import psnr
from jobs.store.registry import Registry
from models.audit import (
    AuditConfig,
    OutlierReference,
    check_cvae,
    class_nll,
    code_nll,
    given_nll,
    reference_scores,
)
from models.audit import reconstruct as audit_reconstruct
from models.cvae import CVAE

OUTLIER_KINDS = ("digits", "noise", "inverted")
TARGETS = {  # issue 18's acceptance
    "outlier_auroc": ">= 0.95 per kind",
    "label_auroc": ">= 0.90",
    "label_precision": ">= 0.6",
    "psnr_gain": ">= +4 dB at sigma 0.4",
}
BLUR_KERNEL, BLUR_STD = 5, 1.0  # the classical denoising reference: 5x5 Gaussian blur, std 1 px
CHUNK = 500  # images per reconstruct / classifier call (memory only)

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generator(seed: int, *tags: int) -> torch.Generator:
    """A CPU generator for one purpose of one seed: independent streams per (seed, tags)."""
    words = np.random.SeedSequence([int(seed), *map(int, tags)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32 | int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF)


# ----------------------------------------------------------------------------- scores


def fit_reference(
    model: CVAE, train: ImageDataset, config: AuditConfig, per_class: int = REFERENCE_PER_CLASS
) -> OutlierReference:
    """The outlier reference of ``genaug audit``: nll and code nll of the first ``per_class`` train images
    per class."""
    keep = torch.cat([torch.nonzero(train.labels == c)[:per_class, 0] for c in range(train.num_classes)])
    labels = train.labels[keep]
    scores = reference_scores(model, train.images[keep], labels, config)  # (R, 2)
    return OutlierReference.from_scores(scores, labels, train.num_classes, config)


def off_domain(kind: str, count: int, test: ImageDataset, gen: torch.Generator) -> Tensor:
    """``count`` injected images (count, C, H, W) in [-1, 1] of one kind (``OUTLIER_KINDS``)."""
    c, side = test.channels, test.image_size
    if kind == "digits":
        pool = torch.cat([load_dataset("digits", s, image_size=side).images for s in ("train", "test")])
        if count > len(pool):
            raise ValueError(f"{count} digits asked for; valid: at most {len(pool)}")
        return pool[torch.randperm(len(pool), generator=gen)[:count]].expand(-1, c, -1, -1).contiguous()
    if kind == "noise":
        return torch.rand(count, c, side, side, generator=gen) * 2 - 1
    if kind == "inverted":
        return -test.images[torch.randperm(len(test), generator=gen)[:count]]
    raise ValueError(f"unknown outlier kind {kind!r}; valid: {', '.join(OUTLIER_KINDS)}")


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], images: Tensor, labels: Tensor) -> Tensor:
    return torch.cat([fn(images[i : i + CHUNK], labels[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])


def reconstruct(model: CVAE, images: Tensor, labels: Tensor) -> Tensor:
    """``models.audit.reconstruct`` in chunks, on the CPU."""
    return _chunked(lambda x, y: audit_reconstruct(model, x, y).cpu(), images, labels)


def gaussian_blur(images: Tensor) -> Tensor:
    """The classical reference denoiser: a ``BLUR_KERNEL`` square Gaussian blur of std ``BLUR_STD`` px."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    return blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_STD, BLUR_STD])


def psnr01(estimate: Tensor, clean: Tensor) -> float:
    """Mean PSNR (dB) over images, both in [-1, 1], measured on the [0, 1] scale (data range 1)."""
    return float(psnr((estimate.clamp(-1, 1) + 1) / 2, (clean + 1) / 2, data_range=1.0).mean())


# ----------------------------------------------------------------------------- the run


@dataclass
class Fixed:
    """Everything that does not depend on the injection seed, computed once."""

    model: CVAE
    test: ImageDataset
    config: AuditConfig
    reference: OutlierReference
    classifier: FeatureCNN
    train_feats: Tensor  # (N_train, F) domain-classifier features of the whole train split
    test_class_nll: Tensor  # (N, C) nll(x | c) of every test image and class
    test_code: Tensor  # (N,) code_nll of every test image with its own label
    test_knn: Tensor  # (N,) k-th nearest train distance of every test image
    test_probs: Tensor  # (N, C) the domain classifier's p(c | x)
    knn: int


def audit_order(outlier_score: Tensor, nll: Tensor) -> Tensor:
    """The rank (N,) of each image in ``audit.md``'s outlier order: by outlier score, ties by nll (0 = least
    suspect). The score is flat at 100 beyond a class's largest reference scores; nll breaks ties."""
    order = np.lexsort((nll.numpy(), outlier_score.numpy()))  # ascending: last key first
    ranks = torch.empty(len(order), dtype=torch.float64)
    ranks[torch.from_numpy(order)] = torch.arange(len(order), dtype=torch.float64)
    return ranks


def outlier_figures(fx: Fixed, seed: int, share: float) -> dict[str, float]:
    """AUROC per injected kind: the audit's outlier score (alone, and in audit.md's order), each of its two
    percentiles alone, the raw nll(x | y) and the kNN baseline."""
    n, y = len(fx.test), fx.test.labels
    count = max(1, round(share * n))
    ref = fx.reference
    clean_nll = fx.test_class_nll.gather(1, y[:, None])[:, 0]
    clean_pct, clean_code = ref.percentile(clean_nll, y), ref.code_percentile(fx.test_code, y)
    clean_score = ref.outlier_score(clean_pct, clean_code)
    flags = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
    out = {"outlier/clean_at_100": float((clean_score >= 100).double().mean())}
    for i, kind in enumerate(OUTLIER_KINDS):
        images = off_domain(kind, count, fx.test, generator(seed, 1, i))
        labels = torch.randint(0, fx.test.num_classes, (count,), generator=generator(seed, 2, i))
        nll = torch.cat([clean_nll, given_nll(fx.model, images, labels, fx.config)])
        pct = torch.cat([clean_pct, ref.percentile(nll[n:], labels)])
        code = torch.cat([clean_code, ref.code_percentile(code_nll(fx.model, images, labels), labels)])
        outlier_score = ref.outlier_score(pct, code)
        knn = kth_nearest_distance(extract_features(fx.classifier, images), fx.train_feats, fx.knn)
        out[f"outlier/{kind}/audit"] = auroc(outlier_score, flags)
        out[f"outlier/{kind}/audit_order"] = auroc(audit_order(outlier_score, nll), flags)
        out[f"outlier/{kind}/nll_percentile"] = auroc(pct, flags)
        out[f"outlier/{kind}/code_percentile"] = auroc(code, flags)
        out[f"outlier/{kind}/raw_nll"] = auroc(nll, flags)
        out[f"outlier/{kind}/knn"] = auroc(torch.cat([fx.test_knn, knn]), flags)
    return out


def label_error_figures(fx: Fixed, seed: int, share: float) -> dict[str, float]:
    """AUROC and precision at the flipped share for the audit's and the classifier's 1 - p(y | x), and for
    the audit's -log p(y | x) (same order, unsaturated)."""
    n, c, y = len(fx.test), fx.test.num_classes, fx.test.labels
    count = max(1, round(share * n))
    flipped = torch.randperm(n, generator=generator(seed, 3))[:count]
    given = y.clone()
    given[flipped] = (y[flipped] + torch.randint(1, c, (count,), generator=generator(seed, 4))) % c
    flags = torch.zeros(n, dtype=torch.bool)
    flags[flipped] = True
    posterior = torch.softmax(-fx.test_class_nll, dim=1)  # uniform class prior, as models.audit.score
    # per scorer, a (N, C) table of "how suspect is label c": lowest = the class it reads
    suspect = {
        "audit": 1.0 - posterior,  # the audit's label_error column
        # the same ranking without float64 saturation: 1 - p rounds to exactly 1.0 once p < 1e-16
        "audit_logp": -torch.log_softmax(-fx.test_class_nll, dim=1),
        "classifier": 1.0 - fx.test_probs.double(),
    }
    out: dict[str, float] = {}
    for name, table in suspect.items():
        score = table.gather(1, given[:, None])[:, 0]
        out[f"label/auroc/{name}"] = auroc(score, flags)
        out[f"label/precision/{name}"] = precision_at(score, flags, count)
        out[f"label/recovered/{name}"] = float((table[flipped].argmin(1) == y[flipped]).double().mean())
        if name != "audit_logp":  # a probability score: how many sit at exactly 1.0 (tied)
            out[f"label/saturated/{name}"] = float((score >= 1.0).double().mean())
    return out


def denoise_figures(fx: Fixed, seed: int, sigmas: Sequence[float]) -> dict[str, float]:
    """PSNR of the noisy input, the reconstruction and the blur at each sigma (on the [0, 1] scale)."""
    x, y = fx.test.images, fx.test.labels
    out: dict[str, float] = {}
    for i, sigma in enumerate(sigmas):
        noise = torch.randn(x.shape, generator=generator(seed, 5, i))
        noisy = (x + 2.0 * sigma * noise).clamp(-1.0, 1.0)  # sigma on [0, 1] = 2 sigma on [-1, 1]
        out[f"denoise/{sigma:g}/noisy"] = psnr01(noisy, x)
        out[f"denoise/{sigma:g}/reconstruct"] = psnr01(reconstruct(fx.model, noisy, y), x)
        out[f"denoise/{sigma:g}/blur"] = psnr01(gaussian_blur(noisy), x)
        out[f"denoise/{sigma:g}/gain"] = (
            out[f"denoise/{sigma:g}/reconstruct"] - out[f"denoise/{sigma:g}/noisy"]
        )
    return out


def _timed(timing: dict[str, float], phase: str, log: Log, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    timing[phase] = round(time.perf_counter() - t0, 1)
    log(f"{phase}: {timing[phase]:.1f} s")
    return result


def _classifier_home(home: str, cache: str | None, train: ImageDataset, log: Log) -> str:
    """Where the domain classifier's cache goes: ``cache`` (seeded with a copy of ``home``'s cached
    classifier when it has one and ``cache`` does not), so that ``home`` is only read."""
    if cache is None:
        return home
    for src, dst in zip(
        classifier_cache_paths(home, train), classifier_cache_paths(cache, train), strict=True
    ):
        if src.is_file() and not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            log(f"copied {src} -> {dst}")
    return cache


def run(args: argparse.Namespace, log: Log = _log) -> dict[str, Any]:
    """The whole protocol; returns the JSON-ready result (protocol, timing, per-seed and summary figures)."""
    started = time.perf_counter()
    timing: dict[str, float] = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    mv = Registry(args.home).resolve(args.model)
    if mv.info.get("type") != "cvae":
        raise ValueError(f"audit quality needs a cvae model; {mv.ref} is a {mv.info.get('type')}")
    model = check_cvae(mv.load().model).eval()
    classes, shape = tuple(mv.info["classes"]), tuple(int(d) for d in mv.info["image_shape"])
    spec = args.dataset or (mv.info.get("data") or {}).get("spec")
    if not spec:
        raise ValueError(f"{mv.ref} does not record its training data spec; pass --dataset SPEC")
    train = load_images(spec, "train", shape, classes)
    test = load_images(spec, "test", shape, classes)
    if args.limit:
        test = ImageDataset(test.images[: args.limit], test.labels[: args.limit], classes, test.spec, "test")
    config = AuditConfig(samples=args.samples, seed=args.audit_seed, batch_size=args.batch_size)
    log(f"{mv.ref} on {spec}: {len(test)} test images, K={config.samples}, seeds {args.seeds}")

    cls_home = _classifier_home(args.home, args.cache, train, log)
    net, meta = _timed(timing, "domain classifier", log, lambda: feature_classifier(cls_home, train, test))
    train_feats = _timed(timing, "train features", log, lambda: extract_features(net, train.images))
    test_feats = extract_features(net, test.images)
    test_knn = _timed(
        timing, "test kNN", log, lambda: kth_nearest_distance(test_feats, train_feats, args.knn)
    )
    reference = _timed(
        timing,
        "outlier reference",
        log,
        lambda: fit_reference(model, train, config, args.reference_per_class),
    )
    test_nll = _timed(timing, "test class nll", log, lambda: class_nll(model, test.images, config).double())
    test_code = _timed(timing, "test code nll", log, lambda: code_nll(model, test.images, test.labels))
    fx = Fixed(
        model=model,
        test=test,
        config=config,
        reference=reference,
        classifier=net,
        train_feats=train_feats,
        test_class_nll=test_nll,
        test_code=test_code,
        test_knn=test_knn,
        test_probs=class_probabilities(net, test.images),
        knn=args.knn,
    )
    ceiling = psnr01(reconstruct(model, test.images, test.labels), test.images)
    per_seed = []
    for seed in args.seeds:
        figures = {"seed": seed}
        figures |= _timed(
            timing, f"seed {seed} outliers", log, lambda s=seed: outlier_figures(fx, s, args.outlier_share)
        )
        figures |= _timed(
            timing,
            f"seed {seed} label errors",
            log,
            lambda s=seed: label_error_figures(fx, s, args.flip_share),
        )
        figures |= _timed(
            timing, f"seed {seed} denoising", log, lambda s=seed: denoise_figures(fx, s, args.sigmas)
        )
        per_seed.append(figures)
    names = [k for k in per_seed[0] if k != "seed"]
    summary = {k: dict(zip(("mean", "std"), mean_std([f[k] for f in per_seed]), strict=True)) for k in names}
    timing["total"] = round(time.perf_counter() - started, 1)
    return {
        "model": mv.ref,
        "dataset": spec,
        "protocol": {
            "test_images": len(test),
            "importance_samples_K": config.samples,
            "audit_seed": config.seed,
            "seeds": list(args.seeds),
            "outlier_share": args.outlier_share,
            "injected_per_kind": max(1, round(args.outlier_share * len(test))),
            "flip_share": args.flip_share,
            "flipped": max(1, round(args.flip_share * len(test))),
            "sigmas_01_scale": list(args.sigmas),
            "knn_k": args.knn,
            "reference_per_class": list(reference.counts),
            "classifier_test_accuracy": meta.get("test_accuracy"),
            "reconstruct_clean_psnr_db": ceiling,
            "torch_threads": torch.get_num_threads(),
        },
        "targets": TARGETS,
        "timing_s": timing,
        "per_seed": per_seed,
        "summary": summary,
    }


# ----------------------------------------------------------------------------- report


def _ms(summary: dict[str, dict[str, float]], key: str, digits: int = 3, unit: str = "") -> str:
    if key not in summary:  # a figure an older run did not measure
        return "-"
    s = summary[key]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{unit}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def render_markdown(result: dict[str, Any]) -> str:
    """The result as the markdown tables of ``QUALITY.md``."""
    s, p, t = result["summary"], result["protocol"], result["timing_s"]
    seeds = ", ".join(map(str, p["seeds"]))
    lines = [
        f"{result['model']} on {result['dataset']} test ({p['test_images']:,} images), K = "
        f"{p['importance_samples_K']} importance samples (audit seed {p['audit_seed']}), seeds {seeds}; "
        f"mean ± std over seeds. Wall time {t['total']:.0f} s.",
        "",
        _row(
            f"outliers: AUROC ({p['injected_per_kind']} injected per kind)",
            "audit outlier score",
            f"baseline: kNN distance (k = {p['knn_k']})",
            "target",
            "audit.md order (score, then nll)",
            "nll percentile alone",
            "code percentile alone",
            "raw nll(x \\| y)",
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in OUTLIER_KINDS:
        pre = f"outlier/{kind}/"
        lines.append(
            _row(
                kind,
                _ms(s, pre + "audit"),
                _ms(s, pre + "knn"),
                TARGETS["outlier_auroc"],
                _ms(s, pre + "audit_order"),
                _ms(s, pre + "nll_percentile"),
                _ms(s, pre + "code_percentile"),
                _ms(s, pre + "raw_nll"),
            )
        )
    lines += [
        "",
        _row(
            f"label errors ({p['flipped']} flipped)",
            "audit 1 - p(y \\| x)",
            "baseline: classifier 1 - p(y \\| x)",
            "target",
            "audit -log p(y \\| x)",
        ),
        "|---|---|---|---|---|",
    ]
    for what, key, target in (
        ("AUROC", "auroc", TARGETS["label_auroc"]),
        ("precision at top 5 %", "precision", TARGETS["label_precision"]),
        ("true label recovered (argmax)", "recovered", "-"),
        ("share of images whose score is exactly 1.0", "saturated", "-"),
    ):
        audit, classifier, logp = (_ms(s, f"label/{key}/{n}") for n in ("audit", "classifier", "audit_logp"))
        lines.append(_row(what, audit, classifier, target, logp))
    lines += [
        "",
        _row(
            "denoising, sigma on [0, 1]",
            "PSNR noisy input",
            "PSNR reconstruct",
            "gain",
            "reference: 5x5 blur",
            "target",
        ),
        "|---|---|---|---|---|---|",
    ]
    for sigma in p["sigmas_01_scale"]:
        pre = f"denoise/{sigma:g}/"
        lines.append(
            _row(
                f"{sigma:g}",
                *(_ms(s, pre + k, 2, " dB") for k in ("noisy", "reconstruct", "gain", "blur")),
                TARGETS["psnr_gain"] if math.isclose(sigma, 0.4) else "-",
            )
        )
    acc = p["classifier_test_accuracy"]
    lines += [
        "",
        f"Clean test images with an outlier score of 100 (tied with every saturated outlier): "
        f"{100 * s['outlier/clean_at_100']['mean']:.2f} %.",
        f"Reconstruction of the clean test images: {p['reconstruct_clean_psnr_db']:.2f} dB (the model's "
        "ceiling)." + (f" Domain classifier test accuracy: {acc:.4f}." if acc is not None else ""),
        "Phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total") + ".",
    ]
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming a bad flag value and what is valid."""
    for name in ("outlier_share", "flip_share"):
        if not 0 < getattr(args, name) <= 0.5:
            raise ValueError(
                f"--{name.replace('_', '-')} {getattr(args, name)!r}; valid: a share in (0, 0.5]"
            )
    if not args.seeds or min(args.seeds) < 0:
        raise ValueError(f"--seeds {args.seeds!r}; valid: one or more seeds >= 0, e.g. 0,1,2")
    if not args.sigmas or min(args.sigmas) <= 0:
        raise ValueError(f"--sigmas {args.sigmas!r}; valid: noise stds > 0 on the [0, 1] scale, e.g. 0.2,0.4")
    for name in ("knn", "reference_per_class", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value!r}; valid: an integer >= 1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.audit_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--home", required=True, help="storage root holding the model (only read)")
    p.add_argument("--model", required=True, help="NAME[:VERSION] of a registered cVAE")
    p.add_argument("--dataset", default=None, help="dataset spec (default: the model's training data)")
    p.add_argument(
        "--cache",
        default=None,
        help="root whose cache/classifiers holds the domain classifier (default --home; seeded from --home)",
    )
    p.add_argument("--samples", type=int, default=AuditConfig().samples, help="K importance samples")
    p.add_argument("--audit-seed", type=int, default=0, help="seed of the K shared noise draws")
    p.add_argument("--batch-size", type=int, default=AuditConfig().batch_size, help="images per audit chunk")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="injection / flip / noise seeds (0,1,2)")
    p.add_argument("--outlier-share", type=float, default=0.02, help="injected images per kind, share of N")
    p.add_argument("--flip-share", type=float, default=0.05, help="flipped labels, share of N")
    p.add_argument("--sigmas", type=_floats, default=[0.2, 0.4], help="noise std on the [0, 1] scale")
    p.add_argument("--knn", type=int, default=5, help="k of the kNN outlier baseline (default 5)")
    p.add_argument(
        "--reference-per-class", type=int, default=REFERENCE_PER_CLASS, help="outlier reference size"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images (rate checks)")
    p.add_argument("--json", default=None, help="write the result here as JSON")
    p.add_argument("--markdown", default=None, help="write the tables here")
    args = p.parse_args(argv)
    check_args(args)
    result = run(args)
    text = render_markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
