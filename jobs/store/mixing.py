"""``AugmentedDataset``: a real map-style dataset mixed with genaug's synthetic rows, for training.

Two modes: a fixed synthetic share of every epoch (``synthetic_fraction``), or a per-class top-up that
balances rare classes (``per_class_target``). Synthetic rows stream through ``ShardStream``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from jobs.store.reading import (
    RankAware,
    Reader,
    decode_column,
    iter_rows,
    seeded_rng,
    split_range,
    to_tensor,
    worker_slot,
)

# --------------------------------------------------------------------------------------------------
# AugmentedDataset
# --------------------------------------------------------------------------------------------------


class _DefaultFraction(float):
    """The default ``synthetic_fraction`` (0.5), distinguishable from an explicit 0.5."""


_DEFAULT_FRACTION = _DefaultFraction(0.5)


def _real_labels(real: Any) -> np.ndarray:
    for attr in ("labels", "targets"):
        value = getattr(real, attr, None)
        if value is not None and len(value) == len(real):
            return np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=np.int64)
    return np.asarray([int(real[i][1]) for i in range(len(real))], dtype=np.int64)


class AugmentedDataset(RankAware, torch.utils.data.IterableDataset):
    """Real rows plus synthetic rows from genaug shards, each real row exactly once per epoch.

    Exactly one mode:

    - ``synthetic_fraction=f`` (default 0.5): an epoch is every real row once plus
      ``S = round(n_real * f / (1 - f))`` synthetic rows, so ``n_real + S ~= n_real / (1 - f)`` samples,
      interleaved in a random order: each sample is synthetic with probability ``S / (n_real + S) ~= f``
      (exactly that share per epoch). The synthetic rows are whole row groups in a random order (the last
      one partial), reused from the start (new order) only if the synthetic data has fewer than ``S`` rows.
    - ``per_class_target=T`` (leave ``synthetic_fraction`` unset or None): every real row once plus, for
      each class with ``r_c < T`` real rows, ``T - r_c`` synthetic rows of that class; classes with
      ``r_c >= T`` get none ("balance rare classes"). Needs the synthetic labels: the ``label`` column is
      read once at construction (8 bytes per synthetic row). A class with too few synthetic rows reuses
      them; a class with none raises ``ValueError``.

    ``real`` is a map-style dataset yielding ``(image, label)`` (image (C, H, W) float in [-1, 1], like
    ``jobs.data.ImageDataset``); its class names come from ``classes=`` or ``real.classes`` and must equal
    the synthetic ones (manifest / Hugging Face metadata). Synthetic images are decoded to the same
    float range. ``transform`` is applied to every image. Rows are split over DDP ranks first (each rank
    a fixed count, independent of its workers) and then over DataLoader workers; the order is random,
    deterministic given ``seed`` and ``set_epoch``. Yields ``(image, label)``, or with ``return_key`` dicts
    ``{"image", "label", "key" ("real-<index>" or the shard key), "is_synthetic"}``.
    """

    def __init__(
        self,
        real: torch.utils.data.Dataset,
        synthetic: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        synthetic_fraction: float | None = _DEFAULT_FRACTION,
        per_class_target: int | None = None,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        classes: Sequence[str] | None = None,
        filesystem: pafs.FileSystem | None = None,
        allow_incomplete: bool = False,
        return_key: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if per_class_target is not None:
            if synthetic_fraction is not None and synthetic_fraction is not _DEFAULT_FRACTION:
                raise ValueError(
                    f"synthetic_fraction={synthetic_fraction!r} and per_class_target={per_class_target!r} "
                    "both given; valid: exactly one of the two modes"
                )
            if (
                isinstance(per_class_target, bool)
                or int(per_class_target) != per_class_target
                or per_class_target < 1
            ):
                raise ValueError(f"per_class_target {per_class_target!r} invalid; valid: an integer >= 1")
            synthetic_fraction = None
        elif synthetic_fraction is None:
            raise ValueError(
                "neither synthetic_fraction nor per_class_target given; valid: exactly one of them"
            )
        elif isinstance(synthetic_fraction, bool) or not 0.0 <= float(synthetic_fraction) < 1.0:
            raise ValueError(f"synthetic_fraction {synthetic_fraction!r} invalid; valid: 0 <= f < 1")
        self.real = real
        self._init_reading(synthetic, seed, transform, filesystem, allow_incomplete, rank, world_size)
        real_classes = list(classes) if classes is not None else getattr(real, "classes", None)
        if real_classes is None:
            raise ValueError("the real dataset has no .classes; valid: pass classes=[...] (its class names)")
        real_classes = [str(c) for c in real_classes]
        if self.catalog.classes is None:
            raise ValueError("the synthetic shards name no classes (no manifest, no huggingface metadata)")
        if real_classes != self.catalog.classes:
            raise ValueError(
                f"class names differ: real {real_classes} vs synthetic {self.catalog.classes}; "
                "valid: the same names in the same order"
            )
        self.classes = real_classes
        self.real_labels = _real_labels(real)
        self.synthetic_fraction = None if synthetic_fraction is None else float(synthetic_fraction)
        self.per_class_target = None if per_class_target is None else int(per_class_target)
        self.return_key = bool(return_key)
        self.unit_labels: list[np.ndarray] | None = None
        if self.per_class_target is not None:
            self.unit_labels = self._read_unit_labels()
            have = np.bincount(np.concatenate(self.unit_labels), minlength=len(self.classes))
            empty = [self.classes[c] for c in np.flatnonzero((self.need_per_class() > 0) & (have == 0))]
            if empty:
                raise ValueError(
                    f"classes {empty} need synthetic rows but the synthetic data has none of them"
                )
        elif self.num_synthetic > 0 and self.catalog.num_rows == 0:
            raise ValueError("the synthetic data has 0 rows; valid: a non-empty dataset")
        self._check_shapes()

    # -- facts --------------------------------------------------------------------------------------

    def need_per_class(self) -> np.ndarray:
        """Synthetic rows per class in one epoch (top-up mode; zeros in fraction mode)."""
        counts = np.bincount(self.real_labels, minlength=len(self.classes))
        if self.per_class_target is None:
            return np.zeros(len(self.classes), dtype=np.int64)
        return np.maximum(self.per_class_target - counts, 0).astype(np.int64)

    @property
    def num_real(self) -> int:
        return len(self.real_labels)

    @property
    def num_synthetic(self) -> int:
        """Synthetic rows per epoch (all ranks)."""
        if self.synthetic_fraction is not None:
            f = self.synthetic_fraction
            return int(round(self.num_real * f / (1.0 - f)))
        return int(self.need_per_class().sum())

    @property
    def epoch_length(self) -> int:
        """Samples per epoch over all ranks: ``num_real + num_synthetic``."""
        return self.num_real + self.num_synthetic

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its DataLoader workers together)."""
        self._refresh_rank()
        r, w = self.rank, self.world_size
        return int(
            np.diff(split_range(self.num_real, w, r))[0] + np.diff(split_range(self.num_synthetic, w, r))[0]
        )

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and synthetic rows; call it before each ``iter(loader)``."""
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch {epoch!r} invalid; valid: an integer >= 0")
        self.epoch = int(epoch)
        self._refresh_rank()

    # -- planning -----------------------------------------------------------------------------------

    def _read_unit_labels(self) -> list[np.ndarray]:
        out = []
        for fs, path in self.catalog.files:
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                for g in range(pf.metadata.num_row_groups):
                    out.append(pf.read_row_group(g, columns=["label"]).column("label").to_numpy())
        return out

    def _check_shapes(self) -> None:
        if self.num_real == 0 or self.catalog.num_rows == 0:
            return
        real_shape = tuple(torch.as_tensor(self.real[0][0]).shape)
        unit = next(i for i, u in enumerate(self.catalog.units) if u[2] > 0)
        reader = Reader(self.catalog)
        try:
            column = reader.read(unit, ["image"]).column("image").slice(0, 1)
            syn_shape = tuple(to_tensor(decode_column(column, reader.where(unit))[0]).shape)
        finally:
            reader.close()
        if syn_shape != real_shape:
            raise ValueError(
                f"synthetic images are {syn_shape} (C, H, W) but real ones are {real_shape}; "
                "valid: the same shape (resize the real data with load_dataset(..., image_size=...))"
            )

    def synthetic_plan(self) -> list[tuple[int, np.ndarray]]:
        """This epoch's synthetic rows over all ranks, in order: (unit, row indices in the row group)."""
        rows = np.asarray([u[2] for u in self.catalog.units], dtype=np.int64)
        pieces: list[tuple[int, np.ndarray]] = []
        if self.num_synthetic == 0:
            return pieces
        if self.per_class_target is None:
            left, cycle = self.num_synthetic, 0
            while left > 0:
                rng = seeded_rng(self.seed, self.epoch, 2, cycle)
                for u in rng.permutation(len(rows)).tolist():
                    take = min(left, int(rows[u]))
                    if take:
                        pieces.append((u, rng.permutation(int(rows[u]))[:take]))
                        left -= take
                    if left == 0:
                        break
                cycle += 1
            return pieces
        assert self.unit_labels is not None
        left, cycle = self.need_per_class().copy(), 0
        while left.any():
            rng = seeded_rng(self.seed, self.epoch, 2, cycle)
            for u in rng.permutation(len(rows)).tolist():
                labels = self.unit_labels[u]
                idx = rng.permutation(len(labels))
                keep = np.zeros(len(idx), dtype=bool)
                for c in np.flatnonzero(left).tolist():  # the first left[c] rows of class c in this order
                    hits = np.flatnonzero(labels[idx] == c)[: left[c]]
                    keep[hits] = True
                    left[c] -= len(hits)
                if keep.any():
                    pieces.append((u, idx[keep]))
                if not left.any():
                    break
            cycle += 1
        return pieces

    def _slot_ranges(self, worker: int, num_workers: int, n: int) -> tuple[int, int]:
        rlo, rhi = split_range(n, self.world_size, self.rank)
        lo, hi = split_range(rhi - rlo, num_workers, worker)
        return rlo + lo, rlo + hi

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = worker_slot()
        if num_workers == 1:
            self._refresh_rank()
        rng = seeded_rng(self.seed, self.epoch, 1)
        real_order = rng.permutation(self.num_real)
        lo, hi = self._slot_ranges(worker, num_workers, self.num_real)
        real_idx = real_order[lo:hi].tolist()
        slo, shi = self._slot_ranges(worker, num_workers, self.num_synthetic)
        mine, start = [], 0
        for u, idx in self.synthetic_plan():  # keep the plan's rows in [slo, shi)
            a, b = max(slo, start), min(shi, start + len(idx))
            if b > a:
                mine.append((u, idx[a - start : b - start]))
            start += len(idx)
        columns = ["image", "label", "key"] if self.return_key else ["image", "label"]
        synthetic = iter_rows(self.catalog, mine, columns, False, rng)
        flags = np.zeros(len(real_idx) + (shi - slo), dtype=bool)
        flags[len(real_idx) :] = True
        flags = seeded_rng(self.seed, self.epoch, 3, self.rank, worker).permutation(flags)
        real_iter = iter(real_idx)
        for is_syn in flags.tolist():
            if is_syn:
                image, label, extra = next(synthetic)
                image, key = to_tensor(image), extra.get("key")
            else:
                i = next(real_iter)
                image, label = self.real[i]
                label, key = int(label), f"real-{i}"
            if self.transform is not None:
                image = self.transform(image)
            if self.return_key:
                yield {"image": image, "label": label, "key": key, "is_synthetic": is_syn}
            else:
                yield image, label
