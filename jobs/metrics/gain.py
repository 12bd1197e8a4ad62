"""Augmentation gain: k real images per class vs the same plus samples of a generator trained on those k only.

The generator is trained in process (``train_generator``, ``LOW_DATA_RECIPES``), the classifier is
the domain CNN without hand-made augmentation, and the classical-augmentation reference trains both arms
with random crops (shifts) and, where a mirror keeps the label, flips (``classical_augmentation``); each
figure is a mean ± std over seeds."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from jobs.data.images import ImageDataset, class_balanced_sampler
from jobs.data.spec import load_dataset, parse_spec
from jobs.metrics.classifier import GAIN_CLASSIFIER, ClassifierConfig, Log, deterministic, mean_std, quiet
from jobs.metrics.fidelity import cas
from jobs.tasks import Call, run_calls
from models.blocks import diff_augment
from models.cgan import d_loss, g_loss
from models.checkpoint import build_model
from models.sampling import generate_uint8, normalize_uint8

# ----------------------------------------------------------------------------- augmentation gain

TrainFn = Callable[[Tensor, Tensor, Sequence[str], int], nn.Module]


@dataclass(frozen=True)
class LowDataRecipe:
    """How the augmentation-gain protocol trains a generator on k images per class (in process).

    Counted in optimiser steps, not epochs: with k = 10 a digits epoch is a single batch, so the full-data
    epoch count (``models.recipes``) would leave the generator nearly untrained (100 CVAE / 300
    CGAN steps: that was the cause of the negative gains first measured).
    """

    steps: int  # optimiser steps (CGAN: one D and one G step each)
    lr: float  # Adam learning rate (CGAN: G and D alike, betas (0, 0.9), as jobs.train)
    data_translation: float = 0.0  # random shift of the generator's training images (fraction of the side)
    batch_size: int = 64  # min(batch_size, N) images per step, drawn without replacement per pass
    kl_warmup: float = 0.3  # CVAE: KL weight linear 0 -> 1 over this share of the steps
    # Each batch draws classes uniformly (images with replacement, weight 1 / own class's count) instead
    # of in proportion to the data: on a long-tailed set the rare classes' labels are otherwise almost
    # never trained (60 of 42,180 images: ~0.09 per batch of 64).
    class_balanced: bool = False
    diffaug: bool | None = None  # CGAN: DiffAugment on D's inputs; None keeps the model config's


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

    if model_type not in LOW_DATA_RECIPES:
        raise ValueError(f"unknown model type {model_type!r}; valid: {', '.join(LOW_DATA_RECIPES)}")
    r = recipe or LOW_DATA_RECIPES[model_type]
    cfg = {**dict(model_config or {}), "image_size": images.shape[-1], "channels": images.shape[1]}
    cfg["num_classes"] = len(classes)
    if model_type == "cgan" and r.diffaug is not None:
        cfg["diffaug"] = r.diffaug
    n = len(images)
    batch = min(r.batch_size, n)
    with deterministic(seed, 1):
        model = build_model(model_type, cfg)
        order = torch.Generator().manual_seed(seed)
        model.train()
        if model_type == "cvae":
            opt = torch.optim.Adam(model.parameters(), lr=r.lr)
        else:
            opt_g = torch.optim.Adam(model.generator.parameters(), lr=r.lr, betas=(0.0, 0.9))
            opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=r.lr, betas=(0.0, 0.9))
        warm = max(1, int(r.kl_warmup * r.steps))
        batches = batch_indices(labels, batch, r.class_balanced, order)
        for step in range(r.steps):
            idx = next(batches)
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
        if model_type == "cgan":  # as jobs.train at every checkpoint: the EMA G's BatchNorm statistics
            model.standing_stats(seed=seed)
        if getattr(model.config, "prior", "standard") != "standard":  # few images: shrunk towards N(0, I)
            copies = 8 if r.data_translation else 1  # the prior covers the shifts the model was trained on
            shifted = [
                diff_augment(images, r.data_translation) if copies > 1 else images for _ in range(copies)
            ]
            model.fit_prior(torch.cat(shifted), labels.repeat(copies))
    return model.eval()


def batch_indices(labels: Tensor, batch: int, class_balanced: bool, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless (batch,) index draws into ``labels`` (N,): passes over a fresh permutation each (no image
    twice in a batch), or with ``class_balanced`` every image drawn with weight 1 / its class's count (with
    replacement), so each present class fills about the same share of every batch."""
    n = len(labels)
    if class_balanced:
        sampler = class_balanced_sampler(labels, batch, gen)
        while True:
            yield torch.tensor(list(sampler))
    while True:
        perm = torch.randperm(n, generator=gen)
        for pos in range(0, n - batch + 1, batch):
            yield perm[pos : pos + batch]


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


def sample_images(model: nn.Module, labels: Tensor, seed: int, temperature: float = 1.0) -> Tensor:
    """Generated images (N, C, H, W) in [-1, 1], through the uint8 path datasets are written with."""
    u8 = generate_uint8(model, labels.numpy().astype(np.int64), seed, temperature)  # (N, H, W, C)
    return normalize_uint8(u8)  # (N, C, H, W)


GAIN_SYNTH_PER_CLASS = 1000  # generated images per class added to the k real ones


# The k real images are repeated to make about this share of the augmented set. Measured with the CVAE
# recipe at k = 10 (3 seeds): 1000/class at a real share of 0.2 / 0.33 / 0.5 gave +2.6 / +2.8 / +3.2 pp,
# 2000/class at 0.2 +3.3 pp; half real, half synthetic is the cheaper of the two best.
GAIN_REAL_SHARE = 0.5


SHIFT = 0.1  # the classical-augmentation comparison: random shifts (crops) of up to 10 % of the side
# Sources whose labels survive a horizontal mirror (a mirrored digit is another glyph; a mirrored shoe,
# shape or truck is still one): the classical reference flips these too.
FLIP_SAFE = ("fashion-mnist", "cifar10", "shapes")


def classical_augmentation(spec: str, config: ClassifierConfig = GAIN_CLASSIFIER) -> ClassifierConfig:
    """``config`` with the classical augmentation of the dataset ``spec``: random shifts of up to ``SHIFT``
    of the side (a random crop of an edge-padded image), plus horizontal flips for ``FLIP_SAFE`` sources."""
    return dataclasses.replace(config, translation=SHIFT, hflip=parse_spec(spec)[0] in FLIP_SAFE)


def classical_text(config: ClassifierConfig) -> str:
    """``random shifts of up to 10 % of the side + horizontal flips`` (what ``config`` augments with)."""
    return f"random shifts of up to {config.translation:.0%} of the side" + (
        " + horizontal flips" if config.hflip else ""
    )


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
    classical_reference: bool = True,
    train: ImageDataset | None = None,
    test: ImageDataset | None = None,
    workers: int = 1,
    log: Log = quiet,
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
    ``classical_reference`` repeats both arms with the dataset's classical augmentation
    (``classical_augmentation``: random crops, flips where safe) on every batch: the gain over a
    classifier that already uses classical augmentation (``*_classical``). Returns per-seed numbers and
    mean/std (ddof=1) over seeds, accuracies in [0, 1], gains also in pp. The seeds are independent calls
    (``gain_row``): ``workers`` > 1 runs that many at once as Ray tasks (``jobs.tasks.run_calls``; the same
    figures).
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
    plan = gain_plan(
        spec, k, train.num_classes, n_synth_per_class, real_share, classifier_config, classical_reference
    )
    log(f"augmentation gain k={k}, seeds {list(seeds)}: a generator on {k} images per class each ...")
    rows = run_calls(gain_calls(plan, seeds, train, test, train_fn), workers, progress=log)
    return gain_summary(plan, list(rows.values()))


def gain_calls(
    plan: GainPlan, seeds: Sequence[int], train: ImageDataset, test: ImageDataset, train_fn: TrainFn
) -> dict[str, Call]:
    """``gain_row`` of each seed as a named call for ``jobs.tasks.run_calls`` (in seed order)."""
    return {
        f"gain k={plan.k} seed {s}": Call(
            gain_row, dict(plan=plan, seed=s, train=train, test=test, train_fn=train_fn)
        )
        for s in seeds
    }


@dataclass(frozen=True)
class GainPlan:
    """What ``augmentation_gain`` does at one k, the same for every seed (``gain_plan``)."""

    spec: str
    k: int
    num_classes: int
    n_synth_per_class: int
    real_repeats: int  # the k real images are repeated this often in the augmented set
    plain: ClassifierConfig  # both arms, no classical augmentation; min_steps = max_steps = the step count
    classical: ClassifierConfig | None  # both arms again with classical augmentation (None: not run)


def gain_plan(
    spec: str,
    k: int,
    num_classes: int,
    n_synth_per_class: int = GAIN_SYNTH_PER_CLASS,
    real_share: float = GAIN_REAL_SHARE,
    classifier_config: ClassifierConfig = GAIN_CLASSIFIER,
    classical_reference: bool = True,
) -> GainPlan:
    """The set sizes and the classifier schedule of ``augmentation_gain`` at ``k``."""
    n_synth = num_classes * n_synth_per_class
    reps = real_repeats(k * num_classes, n_synth, real_share)
    steps = classifier_config.steps_for(reps * k * num_classes + n_synth)
    plain = dataclasses.replace(classifier_config, min_steps=steps, max_steps=steps)
    classical = classical_augmentation(spec, plain) if classical_reference else None
    return GainPlan(spec, k, num_classes, n_synth_per_class, reps, plain, classical)


def gain_row(
    plan: GainPlan, seed: int, train: ImageDataset, test: ImageDataset, train_fn: TrainFn
) -> dict[str, Any]:
    """One seed of ``augmentation_gain``: accuracies of both arms (and of the classical pair) and gains."""
    C, k = plan.num_classes, plan.k
    idx = pick_per_class(train.labels, k, seed, C)
    x_real, y_real = train.images[idx], train.labels[idx]
    gen = train_fn(x_real, y_real, train.classes, seed)
    y_syn = torch.arange(C).repeat_interleave(plan.n_synth_per_class)  # (C*n,)
    x_syn = sample_images(gen, y_syn, seed)
    x_mix = torch.cat([x_real.repeat(plan.real_repeats, 1, 1, 1), x_syn])  # (reps*k*C + C*n, C, H, W)
    y_mix = torch.cat([y_real.repeat(plan.real_repeats), y_syn])
    row: dict[str, Any] = {"seed": int(seed)}
    arms = (("", plan.plain),) + ((("_classical", plan.classical),) if plan.classical else ())
    for suffix, cfg in arms:
        row["real_only" + suffix] = cas(x_real, y_real, test.images, test.labels, seed, C, cfg)
        row["augmented" + suffix] = cas(x_mix, y_mix, test.images, test.labels, seed, C, cfg)
        row["gain" + suffix] = row["augmented" + suffix] - row["real_only" + suffix]
    return row


def gain_summary(plan: GainPlan, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``augmentation_gain``'s result from its per-seed ``rows`` (``gain_row``): mean ± std (ddof=1)."""

    def stat(key: str) -> dict[str, float] | None:
        if key not in rows[0]:
            return None
        return dict(zip(("mean", "std"), mean_std([r[key] for r in rows]), strict=True))

    k, C = plan.k, plan.num_classes
    out: dict[str, Any] = {"k": k, "seeds": [int(r["seed"]) for r in rows]}
    for key in (
        "real_only",
        "augmented",
        "gain",
        "real_only_classical",
        "augmented_classical",
        "gain_classical",
    ):
        out[key] = stat(key)
    out["gain_pp"] = {"mean": 100 * out["gain"]["mean"], "std": 100 * out["gain"]["std"]}
    out["gain_classical_pp"] = (
        {"mean": 100 * out["gain_classical"]["mean"], "std": 100 * out["gain_classical"]["std"]}
        if out["gain_classical"]
        else None
    )
    n_real, n_synth = plan.real_repeats * k * C, C * plan.n_synth_per_class
    out.update(
        per_seed=[dict(r) for r in rows],
        n_synth_per_class=plan.n_synth_per_class,
        real_repeats=plan.real_repeats,
        real_share=n_real / (n_real + n_synth),
        classifier_steps=plan.plain.max_steps,
        classifier=dataclasses.asdict(plan.plain),
        classical=classical_text(plan.classical) if plan.classical else None,
    )
    return out


# ----------------------------------------------------------------------------- the report


def gain_text(g: Mapping[str, Any]) -> str:
    text = f"real only {g['real_only']['mean']:.4f}, with samples {g['augmented']['mean']:.4f}"
    if g.get("gain_classical"):
        text += (
            f"; both arms with {g['classical']}: real only {g['real_only_classical']['mean']:.4f}, with "
            f"samples {g['augmented_classical']['mean']:.4f}, gain {g['gain_classical_pp']['mean']:+.2f} ± "
            f"{g['gain_classical_pp']['std']:.2f} pp"
        )
    return text
