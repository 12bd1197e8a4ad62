"""Read genaug datasets for training: a streaming PyTorch loader, a real+synthetic mixer, a Ray Data recipe.

``ShardStream`` streams the shards (format: ``jobs.store.shards``) one Parquet *row group* (<= 1000 rows) at a
time, so memory stays flat whatever the dataset size, and splits the work so that every row is read
exactly once per epoch across all DDP ranks and DataLoader workers::

    from torch.utils.data import DataLoader
    from jobs.store.loader import ShardStream

    stream = ShardStream("genaug-data/datasets/job-1", shuffle_buffer=2000, seed=0)
    loader = DataLoader(stream, batch_size=256, num_workers=2)
    for epoch in range(epochs):
        stream.set_epoch(epoch)          # before iter(loader): workers get a fresh copy per epoch
        for images, labels in loader:    # images (B, C, H, W) float32 in [-1, 1], labels (B,) int64
            ...

``AugmentedDataset`` mixes a real map-style dataset (e.g. ``jobs.data.spec.load_dataset("digits")``) with
synthetic rows: a fixed synthetic share, or a per-class top-up that balances rare classes::

    real = load_dataset("digits")
    mixed = AugmentedDataset(real, "genaug-data/datasets/job-1", synthetic_fraction=0.3)
    topup = AugmentedDataset(real, "genaug-data/datasets/job-1", per_class_target=200)

``ray_data_decode`` decodes the image column in Ray Data (see its docstring).

Conventions, as in ``jobs.data``: images are ``(C, H, W)``, ``C`` 1 (grey) or 3 (RGB), float32 in
``[-1, 1]`` (``x / 127.5 - 1``) by default or uint8 with ``image_dtype="uint8"``; labels are ints
indexing ``classes``. ``transform`` is called on that tensor (torchvision ``transforms.v2`` work on
tensors) and its result is yielded as the image.

Split units are ``(file, row_group)`` pairs. Unit ``i`` of the epoch order goes to rank ``i % R`` and,
within that rank, the ``j``-th unit (``j = i // R``) to DataLoader worker ``j % W``: round-robin over the
``R * W`` slots, so that a rank's share does not depend on its number of workers. Slots may get
different numbers of rows (row groups differ in size); DDP code that needs the same number of batches
on every rank (``drop_last`` semantics, collective ops per step) should pass ``even=True``: each rank
then gets exactly ``total // R`` rows (a contiguous range of the epoch's row order, split again over
workers) and the ``< R`` leftover rows of that epoch are skipped.

Epochs: ``set_epoch(e)`` must be called before each ``iter(loader)``; with ``persistent_workers=True``
the workers keep the epoch they started with, so do not combine the two.

Decoding: genaug's own PNGs (8-bit, filter 0, from ``jobs.store.png.encode_pngs``) are decoded by a small
zlib + numpy fast path (9x faster than PIL at 8x8 grey, 3x at 64x64 RGB); other PNGs go through PIL.
torchvision's ``decode_png`` is deprecated since torchvision 0.29, so it is not used."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from jobs.store.png import decode_png
from jobs.store.reading import (
    RankAware,
    buffer_shuffle,
    decode_column,
    iter_rows,
    png_of,
    range_pieces,
    seeded_rng,
    split_range,
    to_tensor,
    unit_order,
    worker_slot,
)

IMAGE_DTYPES = ("float", "uint8")


def ray_data_decode(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode a Ray Data batch of genaug rows: ``{"image": (N, C, H, W) float32 in [-1, 1], "label": (N,)}``.

    Recipe (Ray Data does the parallel reading; the shards' ``image`` column is struct<bytes, path>)::

        import ray
        from jobs.store.loader import ray_data_decode

        ds = ray.data.read_parquet(f"{folder}/data", columns=["image", "label"])
        ds = ds.map_batches(ray_data_decode, batch_format="numpy")
        for batch in ds.iter_torch_batches(batch_size=256):  # or ray.train.get_dataset_shard("train")
            images, labels = batch["image"], batch["label"]

    ``batch["image"]`` may be a numpy object array of ``{"bytes", "path"}`` dicts (Ray's numpy format),
    of PNG bytes, or an Arrow array. Other columns are dropped (strings do not become tensors). All
    images of a batch must have one shape; ``ValueError`` otherwise.
    """
    if "image" not in batch or "label" not in batch:
        raise ValueError(f"batch has columns {sorted(batch)}; valid: at least 'image' and 'label'")
    raw = batch["image"]
    if isinstance(raw, pa.Array | pa.ChunkedArray):
        imgs = decode_column(raw, "batch")
    else:
        imgs = [decode_png(png_of(v), f"batch row {i}") for i, v in enumerate(raw)]
    shapes = {a.shape for a in imgs}
    if len(shapes) > 1:
        raise ValueError(f"batch mixes image shapes {sorted(shapes)} (H, W, C); valid: one shape per batch")
    if imgs:
        x = np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32)  # (N, H, W, C) -> (N, C, H, W)
    else:
        x = np.zeros((0, 1, 1, 1), dtype=np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    label = batch["label"]
    label = label.to_numpy(zero_copy_only=False) if isinstance(label, pa.Array | pa.ChunkedArray) else label
    return {"image": x, "label": np.asarray(label, dtype=np.int64)}


# --------------------------------------------------------------------------------------------------
# ShardStream
# --------------------------------------------------------------------------------------------------


class ShardStream(RankAware, torch.utils.data.IterableDataset):
    """Stream a genaug dataset row group by row group, each row exactly once per epoch over all slots.

    Args:
        uris: a dataset folder (shards listed by its ``manifest.json``, else ``data/*.parquet``), a
            ``.parquet`` file, or a list of them; local paths or URIs ``pyarrow.fs`` understands.
        shuffle_buffer: 0 reads in file order. ``>= 1`` shuffles the unit order and the rows inside each
            row group (deterministic given ``seed`` and the epoch); ``> 1`` also mixes rows across row
            groups through a buffer of that many decoded uint8 rows.
        seed: the shuffle seed.
        transform: called on each image (the tensor described by ``image_dtype``; PNG bytes when
            ``decode=False``); its result is yielded.
        decode: decode PNGs (default); False yields the raw PNG bytes.
        columns: extra columns (e.g. ``["key", "seed"]``) to yield: samples become dicts.
        filesystem: a ``pyarrow.fs`` filesystem; ``uris`` are then paths inside it.
        image_dtype: ``"float"`` (float32 in [-1, 1]) or ``"uint8"`` (0..255).
        return_key: yield dicts ``{"image", "label", "key", ...}`` instead of ``(image, label)``.
        allow_incomplete: read a folder without ``_SUCCESS`` (the shards committed so far).
        even: every rank gets exactly ``num_rows // world_size`` rows (see the module docstring).
        rank, world_size: override the DDP rank detection (tests, custom launchers).
    """

    def __init__(
        self,
        uris: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        decode: bool = True,
        columns: Sequence[str] | None = None,
        filesystem: pafs.FileSystem | None = None,
        image_dtype: str = "float",
        return_key: bool = False,
        allow_incomplete: bool = False,
        even: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(shuffle_buffer, bool) or int(shuffle_buffer) != shuffle_buffer or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer {shuffle_buffer!r} invalid; valid: an integer >= 0")
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype {image_dtype!r} invalid; valid: {', '.join(IMAGE_DTYPES)}")
        self._init_reading(uris, seed, transform, filesystem, allow_incomplete, rank, world_size)
        extra = [c for c in (columns or []) if c not in ("image", "label")]
        if return_key and "key" not in extra:
            extra.append("key")
        unknown = sorted(set(extra) - set(self.catalog.columns))
        if unknown:
            raise ValueError(f"unknown columns {unknown}; valid: {self.catalog.columns}")
        self.shuffle_buffer = int(shuffle_buffer)
        self.decode = bool(decode)
        self.image_dtype = image_dtype
        self.extra_columns = extra
        self.as_dict = bool(extra)
        self.even = bool(even)

    # -- public facts -------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        """Class names from the manifest / Hugging Face metadata (None if the files carry none)."""
        return self.catalog.classes

    @property
    def num_rows(self) -> int:
        """Rows in the whole dataset (all ranks)."""
        return self.catalog.num_rows

    @property
    def num_units(self) -> int:
        """(file, row group) split units."""
        return len(self.catalog.units)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of epoch ``epoch``; call it before each ``iter(loader)``."""
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch {epoch!r} invalid; valid: an integer >= 0")
        self.epoch = int(epoch)
        self._refresh_rank()

    def __len__(self) -> int:
        """Rows this rank yields in the current epoch (all its DataLoader workers together)."""
        self._refresh_rank()
        if self.even:
            return self.num_rows // self.world_size
        rows = np.asarray([u[2] for u in self.catalog.units], dtype=np.int64)
        order = unit_order(len(rows), self.seed, self.epoch, self.shuffle_buffer > 0)
        return int(rows[order[self.rank :: self.world_size]].sum())

    # -- planning -----------------------------------------------------------------------------------

    def plan(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int, int]]:
        """The (unit, start row, stop row) pieces slot (rank, ``worker``) reads this epoch, in order."""
        rows = np.asarray([u[2] for u in self.catalog.units], dtype=np.int64)
        order = unit_order(len(rows), self.seed, self.epoch, self.shuffle_buffer > 0)
        r, world = self.rank, self.world_size
        if not self.even:
            mine = order[r + world * worker :: world * num_workers]
            return [(int(u), 0, int(rows[u])) for u in mine if rows[u] > 0]
        per_rank = int(rows.sum()) // world
        lo, hi = split_range(per_rank, num_workers, worker)
        return range_pieces(order, rows, r * per_rank + lo, r * per_rank + hi)

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = worker_slot()
        if num_workers == 1:
            self._refresh_rank()
        shuffle = self.shuffle_buffer > 0
        rng = seeded_rng(self.seed, self.epoch, 1, self.rank, worker)
        rows = iter_rows(
            self.catalog, self.plan(worker, num_workers), self._columns(), shuffle, rng, self.decode
        )
        if self.shuffle_buffer > 1:
            rows = buffer_shuffle(rows, self.shuffle_buffer, rng)
        for image, label, extra in rows:
            yield self._sample(image, label, extra)

    def _columns(self) -> list[str]:
        return ["image", "label", *self.extra_columns]

    def _sample(self, image: Any, label: int, extra: dict[str, Any]) -> Any:
        if self.decode:
            image = to_tensor(image, self.image_dtype)
        if self.transform is not None:
            image = self.transform(image)
        if self.as_dict:
            return {"image": image, "label": label, **extra}
        return image, label
