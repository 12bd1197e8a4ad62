"""The evaluation's value protocols on real data with a chosen generator recipe (benchmarks/QUALITY.md).

Runs ``long_tail_gain`` or the k-images-per-class ``augmentation_gain`` of ``genaug eval`` on a dataset
spec, with the ``large`` recipe's model config and the protocol's default generator recipe, changed by
``--set FIELD=VALUE`` (fields of ``jobs.metrics.gain.LowDataRecipe``), ``--config FIELD=VALUE`` (fields of
the model config, e.g. the cGAN's ``noise_scale``) and ``--classifier FIELD=VALUE`` (fields of the
classifiers' ``ClassifierConfig``, e.g. ``min_steps``). One torch thread a seed, seeded: two variants can
run side by side on two cores, or one variant's seeds at once with ``--workers 2`` (the same figures).
Prints progress and a summary; ``--json`` keeps everything.

    python -m benchmarks.real_protocols longtail cgan --set class_balanced=true --set diffaug=true
    python -m benchmarks.real_protocols gain cgan --k 50 --set diffaug=true --json /tmp/g.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import torch

from jobs.data.spec import load_dataset
from jobs.metrics.classifier import GAIN_CLASSIFIER, ClassifierConfig
from jobs.metrics.gain import LOW_DATA_RECIPES, LowDataRecipe, augmentation_gain
from jobs.metrics.longtail import LONG_TAIL_RECIPES, long_tail_gain
from models.checkpoint import MODEL_TYPES
from models.recipes import RECIPE_MODELS, default_recipe

FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"


def parse_settings(flag: str, settings: list[str], cls: type) -> dict[str, Any]:
    """``FIELD=VALUE`` items for fields of the dataclass ``cls`` (true/false, none, ints, floats; the text
    itself for a string field) as a dict; ValueError naming a bad one."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    fields = list(types)
    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"{flag} {item!r}: valid: FIELD=VALUE with FIELD one of {', '.join(fields)}")
        lowered = text.lower()
        if types[name] in (str, "str"):
            changes[name] = text
        elif lowered in ("true", "false", "none"):
            changes[name] = {"true": True, "false": False, "none": None}[lowered]
        else:
            try:
                changes[name] = float(text) if any(c in text for c in ".e") else int(text)
            except ValueError:
                raise ValueError(f"{flag} {item!r}: {text!r} is not a number, true, false or none") from None
    return changes


def recipe_with(base: LowDataRecipe, settings: list[str]) -> LowDataRecipe:
    """``base`` with ``FIELD=VALUE`` changes of ``LowDataRecipe`` fields."""
    return dataclasses.replace(base, **parse_settings("--set", settings, LowDataRecipe))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    train, test = load_dataset(args.dataset, "train", None), load_dataset(args.dataset, "test", None)
    model_config = dict(default_recipe(args.model, train.image_size, train.channels).model_config)
    model_config.update(parse_settings("--config", args.config, MODEL_TYPES[args.model][0]))
    classifier = dataclasses.replace(
        GAIN_CLASSIFIER, **parse_settings("--classifier", args.classifier, ClassifierConfig)
    )
    base = (LONG_TAIL_RECIPES if args.protocol == "longtail" else LOW_DATA_RECIPES)[args.model]
    recipe = recipe_with(base, args.set)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)

    log(f"{args.protocol} {args.model} on {args.dataset}: {recipe}; {classifier}")
    common = dict(
        model_config=model_config, recipe=recipe, classifier_config=classifier, workers=args.workers, log=log
    )
    if args.protocol == "longtail":
        out = long_tail_gain(args.model, train, test, args.seeds, **common)
        print(f"top-up {out['gain_pp']['mean']:+.2f} ± {out['gain_pp']['std']:.2f} pp, half real "
              f"{out['gain_mixed_pp']['mean']:+.2f} ± {out['gain_mixed_pp']['std']:.2f} pp, all real images "
              f"{out['ceiling_pp']['mean']:+.2f} ± {out['ceiling_pp']['std']:.2f} pp")  # fmt: skip
    else:
        out = augmentation_gain(
            args.dataset, args.model, args.k, args.seeds, train=train, test=test, **common
        )
        plain, classical = out["gain_pp"], out["gain_classical_pp"]
        print(f"k={args.k}: gain {plain['mean']:+.2f} ± {plain['std']:.2f} pp, over classical "
              f"{classical['mean']:+.2f} ± {classical['std']:.2f} pp")  # fmt: skip
    out.update(
        recipe=dataclasses.asdict(recipe),
        model_config=model_config,
        classifier_config=dataclasses.asdict(classifier),
        wall_s=time.time() - started,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", choices=("longtail", "gain"))
    p.add_argument("model", choices=RECIPE_MODELS)
    p.add_argument("--dataset", default=FASHION, help=f"dataset spec (default {FASHION})")
    p.add_argument("--k", type=int, default=50, help="gain: real images per class (default 50)")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE change of the generator recipe")
    p.add_argument("--config", action="append", default=[], help="FIELD=VALUE change of the model config")
    p.add_argument(
        "--classifier", action="append", default=[], help="FIELD=VALUE change of the classifiers' config"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="seeds run at once, as Ray tasks of one CPU (default 1: in process)",
    )
    p.add_argument("--json", default=None, help="write the whole result here")
    args = p.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
