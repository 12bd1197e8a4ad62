"""Single-process quality experiments behind the training defaults (benchmarks/QUALITY.md).

Trains a model in this process (``jobs.metrics.gain.train_generator``, one thread, seeded) on digits train
with a given model config and recipe, then measures it as ``genaug eval`` does: FID in the domain
classifier's features (2,000 samples, seed 0) against the real test split, label fidelity, CAS ratio
over 3 seeds and the pixel near-copy rate. ``--gain`` runs the k = 10 augmentation-gain protocol instead,
with a chosen low-data recipe, samples per class and real share.

    python -m benchmarks.quality_sweep vae-mlp vae-conv32          # full-data rows
    python -m benchmarks.quality_sweep --gain vae-lowdata gan-lowdata
    python -m benchmarks.quality_sweep --list

Numbers vary with the training seed (about ±1 FID, ±0.003 CAS ratio on digits): compare rows of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import torch

from jobs.data.spec import load_dataset
from jobs.metrics import classifier, distances, gain
from jobs.metrics.fidelity import cas, label_fidelity, memorisation

R = gain.LowDataRecipe
FULL: dict[str, tuple[str, dict, gain.LowDataRecipe]] = {
    # name: (model type, model config, recipe on the 898 train images)
    "vae-old-default": ("cvae", {}, R(steps=1400, lr=1e-3, batch_size=64)),
    "vae-mlp": ("cvae", {}, R(steps=1050, lr=2e-3, batch_size=128)),
    "vae-mlp-classprior": ("cvae", {"prior": "class_gaussian"}, R(steps=1050, lr=2e-3, batch_size=128)),
    "vae-conv32": ("cvae", {"arch": "conv", "conv_width": 32}, R(steps=1050, lr=2e-3, batch_size=128)),
    "vae-conv32-classprior": (
        "cvae",
        {"arch": "conv", "conv_width": 32, "prior": "class_gaussian"},
        R(steps=1050, lr=2e-3, batch_size=128),
    ),
    "gan-old-default": ("cgan", {}, R(steps=4200, lr=3e-4, batch_size=64)),
    "gan-b128": ("cgan", {}, R(steps=2100, lr=4.2e-4, batch_size=128)),
    "gan-b128-1400": ("cgan", {}, R(steps=1400, lr=4.2e-4, batch_size=128)),
}
GAIN: dict[str, tuple[str, dict, gain.LowDataRecipe]] = {
    "vae-lowdata": (
        "cvae",
        {"arch": "conv", "conv_width": 32, "prior": "class_gaussian"},
        gain.LOW_DATA_RECIPES["cvae"],
    ),
    "vae-lowdata-noshift": (
        "cvae",
        {"arch": "conv", "conv_width": 32, "prior": "class_gaussian"},
        dataclasses.replace(gain.LOW_DATA_RECIPES["cvae"], data_translation=0.0),
    ),
    "gan-lowdata": ("cgan", {}, gain.LOW_DATA_RECIPES["cgan"]),
    "gan-lowdata-shift": (
        "cgan",
        {},
        dataclasses.replace(gain.LOW_DATA_RECIPES["cgan"], data_translation=0.125),
    ),
    "gan-lowdata-diffaug": ("cgan", {"diffaug": True}, gain.LOW_DATA_RECIPES["cgan"]),
    "gan-lowdata-ns0.9": ("cgan", {"noise_scale": 0.9}, gain.LOW_DATA_RECIPES["cgan"]),
    "gan-lowdata-ns0.7": ("cgan", {"noise_scale": 0.7}, gain.LOW_DATA_RECIPES["cgan"]),
    "gan-lowdata-ns0.5": ("cgan", {"noise_scale": 0.5}, gain.LOW_DATA_RECIPES["cgan"]),
    "gan-lowdata-shift-ns0.7": (
        "cgan",
        {"noise_scale": 0.7},
        dataclasses.replace(gain.LOW_DATA_RECIPES["cgan"], data_translation=0.125),
    ),
    "gan-lowdata-shift-ns0.9": (
        "cgan",
        {"noise_scale": 0.9},
        dataclasses.replace(gain.LOW_DATA_RECIPES["cgan"], data_translation=0.125),
    ),
    "old-protocol-vae": ("cvae", {}, R(steps=100, lr=1e-3)),  # what 100 epochs of 1 batch gave
    "old-protocol-gan": ("cgan", {}, R(steps=300, lr=3e-4)),
}


def full_row(name: str, home: str, seed: int) -> None:
    kind, cfg, recipe = FULL[name]
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    clf, _ = classifier.feature_classifier(home, train, test)
    t0 = time.perf_counter()
    model = gain.train_generator(
        kind, train.images, train.labels, train.classes, seed, model_config=cfg, recipe=recipe
    )
    dt = time.perf_counter() - t0
    labels = torch.arange(10).repeat_interleave(200)
    samples = {s: gain.sample_images(model, labels, s) for s in (0, 1, 2)}
    f_fake, f_test = (
        classifier.extract_features(clf, samples[0]),
        classifier.extract_features(clf, test.images),
    )
    floor = distances.fid(classifier.extract_features(clf, train.images), f_test)
    fid = distances.fid(f_fake, f_test)
    fidelity = label_fidelity(clf, samples[0], labels)["mean"]
    cas = [cas(samples[s], labels, test.images, test.labels, s, 10) for s in (0, 1, 2)]
    real = [classifier.real_baseline(home, train, test, s) for s in (0, 1, 2)]
    near = memorisation(samples[0].flatten(1), train.images.flatten(1), test.images.flatten(1))
    print(
        f"{name:24s} seed {seed}: FID {fid:6.2f} ({fid / floor:.2f}x floor {floor:.2f})  "
        f"fidelity {fidelity:.4f}  "
        f"CAS ratio {np.mean(cas) / np.mean(real):.4f}  near-copies {100 * near['near_copy_rate']:.2f} %  "
        f"train {dt:.0f} s",
        flush=True,
    )


def gain_row(name: str, seeds: list[int], n_synth: int, share: float, shift: bool) -> None:
    kind, cfg, recipe = GAIN[name]
    g = gain.augmentation_gain(
        "digits",
        kind,
        10,
        seeds,
        n_synth_per_class=n_synth,
        real_share=share,
        model_config=cfg,
        recipe=recipe,
        shift_reference=shift,
    )
    text = f"{g['gain_pp']['mean']:+.2f} ± {g['gain_pp']['std']:.2f} pp"
    if g["gain_shifted_pp"]:
        text += (
            f"; both arms shifted {g['gain_shifted_pp']['mean']:+.2f} ± {g['gain_shifted_pp']['std']:.2f} pp"
        )
    print(
        f"{name:24s} k=10 seeds {seeds} {n_synth}/class real share {g['real_share']:.2f}: real only "
        f"{g['real_only']['mean']:.4f}, with samples {g['augmented']['mean']:.4f}, gain {text}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_sweep", description=__doc__)
    p.add_argument("names", nargs="*")
    p.add_argument("--gain", action="store_true", help="run the k=10 augmentation-gain protocol")
    p.add_argument("--list", action="store_true")
    p.add_argument(
        "--home", default=os.environ.get("GENAUG_HOME", "genaug-data"), help="classifier cache root"
    )
    p.add_argument("--seed", type=int, default=1, help="training seed of full-data rows (default 1)")
    p.add_argument("--seeds", default="0,1,2", help="gain seeds")
    p.add_argument("--per-class", type=int, default=gain.GAIN_SYNTH_PER_CLASS)
    p.add_argument("--real-share", type=float, default=gain.GAIN_REAL_SHARE)
    p.add_argument("--no-shifted", action="store_true", help="skip the both-arms-shifted comparison")
    args = p.parse_args(argv)
    table = GAIN if args.gain else FULL
    if args.list or not args.names:
        print("\n".join(table))
        return 0
    unknown = [n for n in args.names if n not in table]
    if unknown:
        print(f"unknown: {unknown}; valid: {', '.join(table)}", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()}", flush=True)
    for name in args.names:
        if args.gain:
            seeds = [int(s) for s in args.seeds.split(",")]
            gain_row(name, seeds, args.per_class, args.real_share, not args.no_shifted)
        else:
            full_row(name, args.home, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
