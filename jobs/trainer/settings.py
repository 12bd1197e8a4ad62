"""What one training run is: ``TrainSettings`` (JSON-serialisable, so a run resumes as it was), the
default recipe applied to them (``models.recipes``), the model config they build, and time budgets."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from jobs.data.spec import load_dataset, parse_spec
from jobs.store.location import validate_name
from models.checkpoint import MODEL_TYPES
from models.recipes import Recipe, default_recipe


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs; JSON-serialisable so a run can be resumed as it was."""

    model: str  # "cvae" | "cgan"
    dataset: str  # dataset spec, see jobs.data.DATASET_FORMS
    name: str  # registry name for the result
    epochs: int = 0  # 0: the recipe's (models.recipes); with a time budget, a cap
    batch_size: int = 0  # global batch (split over workers); 0: the recipe's
    lr: float = 0.0  # 0: the recipe's
    workers: int = 2  # Ray Train workers (DDP world size)
    gpu: bool = False  # one GPU per worker, NCCL, bf16 autocast, channels_last, pinned memory
    compile: bool = False  # torch.compile the (DDP-wrapped) networks
    seed: int = 0  # weights init, data order and noise all derive from it
    image_size: int | None = None  # resize the dataset to this size
    checkpoint_every: int = 0  # epochs between checkpoints; 0: the recipe's
    time_budget_s: float = 0.0  # > 0: train until this much wall time has passed, then checkpoint
    shuffle: bool = True  # shuffle training data each epoch (tests turn it off)
    class_balance: bool = False  # draw batches class-balanced (long-tailed data): jobs.data.images
    limit_batches: int | None = None  # stop each epoch after this many batches (tests)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    inject_failure_at_epoch: int | None = None  # fault-injection hook for tests: one worker raises once
    inject_failure_kill: bool = False  # ... and then SIGKILLs its own process instead of raising

    def __post_init__(self) -> None:
        if self.model not in MODEL_TYPES:
            raise ValueError(f"unknown model type {self.model!r}; valid: {', '.join(MODEL_TYPES)}")
        parse_spec(self.dataset)
        validate_name(self.name, "model name")
        for key in ("epochs", "batch_size", "checkpoint_every"):  # 0: not given yet, the recipe's
            if getattr(self, key) < 0:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.batch_size and self.batch_size % self.workers:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a positive multiple of --workers {self.workers} "
                "(the global batch is split evenly over workers)"
            )
        if self.lr and not (0 < self.lr < 1):
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")
        if not (0 <= self.time_budget_s < math.inf):
            raise ValueError(f"--time-budget must be > 0 seconds, got {self.time_budget_s}")

    @property
    def resolved(self) -> bool:
        """Whether the recipe has filled every default (``with_recipe``)."""
        return bool(self.epochs and self.batch_size and self.lr and self.checkpoint_every)

    def with_recipe(
        self, image_size: int, num_images: int, channels: int = 1
    ) -> tuple[TrainSettings, Recipe]:
        """These settings with every unset field taken from the default recipe for the data, and it."""
        r = default_recipe(self.model, image_size, channels)
        epochs = self.epochs or r.epochs_for(num_images)
        filled = dataclasses.replace(
            self,
            epochs=epochs,
            batch_size=self.batch_size or r.batch_size,
            lr=self.lr or r.lr,
            checkpoint_every=self.checkpoint_every or r.checkpoint_every(epochs),
            model_config={**r.model_config, **self.model_config},
        )
        return filled, r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_config(s: TrainSettings, ds) -> dict[str, Any]:
    """The model config a run builds: the data's shape and classes, then ``s.model_config``."""
    shape = {"image_size": ds.image_size, "channels": ds.channels, "num_classes": ds.num_classes}
    return {**shape, **s.model_config}


def budget_reserve_s(budget_s: float) -> float:
    """Seconds of a time budget kept for Ray Train's start, the last checkpoint and the registration."""
    return min(30.0, 0.1 * budget_s)


def resolve_settings(settings: TrainSettings, ds=None) -> tuple[TrainSettings, Recipe, int]:
    """``settings`` with the default recipe for its dataset filled in, the recipe and the dataset size."""
    ds = ds if ds is not None else load_dataset(settings.dataset, "train", settings.image_size)
    filled, recipe = settings.with_recipe(ds.image_size, len(ds), ds.channels)
    return filled, recipe, len(ds)


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``600``, ``90s``, ``10m``, ``1h30m`` (ValueError naming the bad value)."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    seconds = sum(float(v) * k for v, k in zip(m.groups(), (3600, 60, 1), strict=True) if v) if m else 0.0
    if seconds <= 0:
        raise ValueError(
            f"--time-budget {text!r} is not a duration; valid: > 0 seconds as 600, 90s, 10m, 1h30m"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
