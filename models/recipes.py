"""Default training recipes: the model config, epochs, batch and learning rate a run starts from.

One table for every default, chosen by model type, image size and dataset size; ``genaug train`` prints
the recipe it picked, and any flag (``--epochs``, ``--lr``, ``--model-config``...) overrides one field.

- ``small`` (sides <= 16 px, e.g. scikit-learn's 8x8 digits): the settings that reach the digits targets
  in benchmarks/QUALITY.md (an MLP cGAN, a small conv cVAE with a per-class fitted prior).
- ``large`` (sides > 16 px: Fashion-MNIST 28x28 up to 64x64): conv networks (a
  DCGAN-style generator with conditional BatchNorm and an SN-projection discriminator, hinge loss, EMA;
  a conv cVAE with a learned Gaussian scale, a fitted per-class Gaussian mixture prior and label guidance
  when sampling), channels_last on CPU too.
- ``colour`` (sides > 16 px, 3 channels): the cGAN's is ``large`` plus MSGAN's mode-seeking term and stronger
  truncation. Without it the cGAN draws each class in one colour (shapes:32); on grey Fashion-MNIST the
  same term costs label fidelity and FID, so grey images keep ``large``. The cVAE's is ``large`` with 50
  prior components instead of 20 and label guidance 0.5 instead of 1.

Epochs follow the dataset size: a recipe fixes the number of images to show (``images``) and the run takes
``ceil(images / dataset size)`` epochs, capped at ``max_epochs`` for small sets. The digits figures (898
images: 150 cVAE / 300 cGAN epochs) are where the small recipe's numbers come from. ``--time-budget``
caps a run by wall time instead (see ``jobs.train``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from models.blocks import check_choice, check_int

RECIPE_MODELS = ("cvae", "cgan")
SMALL_MAX_SIDE = 16  # sides up to this use the small recipe


@dataclass(frozen=True)
class Recipe:
    """A default training run: what to show the model and how to optimise it."""

    name: str  # "small" | "large" | "colour"
    images: int  # images to show in total; epochs = ceil(images / dataset size)
    max_epochs: int  # cap for small datasets
    batch_size: int  # global batch, split over workers
    lr: float  # Adam learning rate (cGAN: G and D alike, betas (0, 0.9))
    checkpoints: int  # checkpoints per run (every epochs/checkpoints epochs, and at the end)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the model config defaults
    why: str = ""  # one line: where the numbers come from

    def epochs_for(self, num_images: int) -> int:
        """Epochs that show about ``images`` images from a dataset of ``num_images``."""
        check_int("num_images", num_images, 1)
        return max(1, min(self.max_epochs, math.ceil(self.images / num_images)))

    def checkpoint_every(self, epochs: int) -> int:
        """Epochs between checkpoints for a run of ``epochs``."""
        return max(1, math.ceil(epochs / self.checkpoints))

    def describe(self, num_images: int) -> str:
        """One line for the training log: the recipe, its epochs for this dataset, its model config."""
        cfg = ", ".join(f"{k}={v}" for k, v in self.model_config.items()) or "model defaults"
        return (
            f"recipe {self.name}: {self.epochs_for(num_images)} epochs (~{self.images:,} images shown), "
            f"batch {self.batch_size}, lr {self.lr:g}; {cfg}. {self.why}"
        )


# Global batch 128 (64 per worker on 2 workers): under DDP a step costs mostly communication on small
# images, so twice the batch halves the steps, and the wall time, for the same number of epochs.
RECIPES: dict[tuple[str, str], Recipe] = {
    ("cvae", "small"): Recipe(
        "small", images=134_700, max_epochs=150, batch_size=128, lr=2e-3, checkpoints=3,
        # cVAE on digits, 3 CAS seeds (benchmarks/QUALITY.md): the MLP decoder plateaus at FID ~15-16
        # (2.1x the floor); a small conv decoder reaches 14.1 with CAS ratio 0.991; the per-class
        # Gaussian prior lifts the CAS ratio (0.984 -> 0.991). prior_scale 1.0 / 0.9 / 0.8: FID 15.4 /
        # 14.5 / 14.3 (floor 7.5), label fidelity 0.994 / 0.9975 / 0.9975: 0.9 meets all four targets.
        model_config={"arch": "conv", "conv_width": 32, "prior": "class_gaussian", "prior_scale": 0.9},
        why="Tuned on digits (benchmarks/QUALITY.md).",
    ),
    ("cgan", "small"): Recipe(
        "small", images=269_400, max_epochs=300, batch_size=128, lr=4.2e-4, checkpoints=6,
        # noise_scale on digits (3 sample seeds x 2 training seeds, benchmarks/QUALITY.md): 0.9 / 0.95 / 1.0:
        # label fidelity 0.998 / 0.997 / 0.996, FID 9.4 / 9.1 / 8.9, SVC 0.958 / 0.959 / 0.961 (ref 0.957).
        # 0.95 keeps label fidelity clear of 0.995 and the SVC above its reference.
        model_config={"noise_scale": 0.95},
        why="Tuned on digits (benchmarks/QUALITY.md).",
    ),
    ("cvae", "large"): Recipe(
        "large", images=1_800_000, max_epochs=300, batch_size=128, lr=1e-3, checkpoints=5,
        # Fashion-MNIST, 10 min, 3 seeds (benchmarks/QUALITY.md): label guidance 0 / 0.5 / 1 / 1.5: label
        # fidelity 0.804 / 0.884 / 0.906 / 0.908, FID 42.3 / 15.5 / 11.3 / 12.7 (floor 0.116). Lower
        # temperatures do not help (prior_scale x 0.6: label fidelity 0.770, FID 62). The per-class mixture
        # of 20 Gaussians instead of one (same weights): label fidelity 0.907 -> 0.909, FID 12.3 -> 8.0.
        model_config={
            "arch": "conv", "conv_width": 64, "latent_dim": 32, "prior": "class_mixture",
            "prior_components": 20, "prior_scale": 0.9, "guidance": 1.0,
        },
        why="Conv encoder/decoder, learned Gaussian scale, fitted per-class Gaussian mixture prior, label "
        "guidance (benchmarks/QUALITY.md).",
    ),
    ("cgan", "large"): Recipe(
        "large", images=1_200_000, max_epochs=600, batch_size=128, lr=8e-4, checkpoints=5,
        # Fashion-MNIST, 10 min on 2 cores (4-5 epochs; benchmarks/QUALITY.md, session 15), G and D alike:
        # lr 2e-4 / 4e-4 / 8e-4: FID 15.5 / 9.9 / 5.8 (floor 0.115), label fidelity 0.895 / 0.910 / 0.907,
        # CAS ratio 0.891 / 0.918 / 0.939. noise_scale 0.9 / 1.0 / 0.7 (at 2e-4): CAS ratio 0.891 / 0.891 /
        # 0.865, label fidelity 0.895 / 0.870 / 0.937: 0.9 keeps label fidelity above the classifier's 0.885.
        model_config={"arch": "conv", "conv_width": 64, "noise_scale": 0.9},
        why="DCGAN-style G with conditional BN, SN-projection D, hinge loss, EMA (benchmarks/QUALITY.md).",
    ),
}  # fmt: skip

# shapes:32, 10 min (benchmarks/QUALITY.md): mode_seeking 0 -> 1: label fidelity 0.75 -> 0.93, FID 190 -> 99,
# each class in many colours again; noise_scale 0.9 -> 0.7: label fidelity 0.93 -> 0.96. Fashion-MNIST with
# mode_seeking 1: label fidelity 0.91 -> 0.79, FID 8.7 -> 23, so grey images keep the large recipe.
# Its lr stays 2e-4, where these were measured (the large recipe's 8e-4 was measured on grey images only).
RECIPES[("cgan", "colour")] = dataclasses.replace(
    RECIPES[("cgan", "large")],
    name="colour",
    lr=2e-4,
    model_config={**RECIPES[("cgan", "large")].model_config, "noise_scale": 0.7, "mode_seeking": 1.0},
    why="The large cGAN recipe + a mode-seeking term for colour images (benchmarks/QUALITY.md).",
)


# shapes:32, the cVAE's 300 epochs (benchmarks/QUALITY.md), 3 seeds, floor 0.892: one Gaussian per class:
# label fidelity 0.760, FID 192 (guidance 1: 0.703 / 214); a mixture of 20 / 50 Gaussians: 0.985 / 0.993, FID
# 58 / 50; 50 with guidance 0.25 / 0.5 / 1: 0.991 / 0.989 / 0.983, FID 20 / 18 / 34. A class's codes form
# one cluster per colour and shape variant, so colour images get more components and milder guidance.
RECIPES[("cvae", "colour")] = dataclasses.replace(
    RECIPES[("cvae", "large")],
    name="colour",
    model_config={**RECIPES[("cvae", "large")].model_config, "prior_components": 50, "guidance": 0.5},
    why="The large cVAE recipe with more prior components and milder label guidance for colour images "
    "(benchmarks/QUALITY.md).",
)


def default_recipe(model_type: str, image_size: int, channels: int = 1) -> Recipe:
    """The recipe for ``model_type`` at ``image_size`` px with ``channels`` (the small one up to 16 px;
    above, the colour one for 3 channels, else the large)."""
    check_choice("model type", model_type, RECIPE_MODELS)
    check_int("image_size", image_size, 1)
    check_int("channels", channels, 1)
    if image_size <= SMALL_MAX_SIDE:
        return RECIPES[(model_type, "small")]
    return RECIPES[(model_type, "colour" if channels == 3 else "large")]
