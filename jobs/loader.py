"""Read genaug datasets for training: a streaming PyTorch loader, a real+synthetic mixer, a Ray Data recipe.

``ShardStream`` streams the shards (format: ``jobs.shards``) one Parquet *row group* (<= 1000 rows) at a
time, so memory stays flat whatever the dataset size, and splits the work so that every row is read
exactly once per epoch across all DDP ranks and DataLoader workers::

    from torch.utils.data import DataLoader
    from jobs.loader import ShardStream

    stream = ShardStream("genaug-data/datasets/job-1", shuffle_buffer=2000, seed=0)
    loader = DataLoader(stream, batch_size=256, num_workers=2)
    for epoch in range(epochs):
        stream.set_epoch(epoch)          # before iter(loader): workers get a fresh copy per epoch
        for images, labels in loader:    # images (B, C, H, W) float32 in [-1, 1], labels (B,) int64
            ...

``AugmentedDataset`` mixes a real map-style dataset (e.g. ``jobs.data.load_dataset("digits")``) with
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

Decoding: genaug's own PNGs (8-bit, filter 0, from ``jobs.shards.encode_pngs``) are decoded by a small
zlib + numpy fast path (9x faster than PIL at 8x8 grey, 3x at 64x64 RGB); other PNGs go through PIL.
torchvision's ``decode_png`` is deprecated since torchvision 0.29, so it is not used.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from jobs import shards
from jobs.storage import join_path

IMAGE_DTYPES = ("float", "uint8")
_FILES_OPEN = 4  # Parquet files kept open per iterator (units of one file are often consecutive)


# --------------------------------------------------------------------------------------------------
# PNG decoding
# --------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "F")


def _decode_fast(data: bytes) -> np.ndarray | None:
    """(H, W, C) uint8 for the PNGs ``jobs.shards.encode_pngs`` writes, else None.

    Fast path (9x faster than PIL at 8x8, 3x at 64x64 RGB): 8-bit grey or RGB, not interlaced, every
    scanline with filter type 0. zlib's adler32 still catches damaged pixel data (None: PIL reports it).
    """
    if data[:8] != _PNG_SIGNATURE:
        return None
    pos, idat, shape = 8, [], None
    while pos + 8 <= len(data):
        length, tag = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            if len(body) != 13:
                return None
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (0, 2) or interlace:
                return None
            shape = (height, width, 1 if color == 0 else 3)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    if shape is None or not idat:
        return None
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    h, w, c = shape
    if len(raw) != h * (1 + w * c):
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + w * c)  # (H, 1 + W*C): filter byte, row
    if rows[:, 0].any():
        return None
    return rows[:, 1:].reshape(h, w, c)  # (H, W, C)


def _decode_pil(data: bytes, where: str) -> np.ndarray:
    """(H, W, C) uint8, C in {1, 3}, for any image PIL reads (filtered/16-bit/palette/alpha PNGs...)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise ValueError(f"{where}: not a readable PNG ({type(e).__name__}: {e}); valid: PNG bytes") from None
    if img.mode in ("I", "I;16", "I;16B"):
        arr = (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)  # 16-bit grey: keep the high byte
    elif img.mode in _GREY_MODES:
        arr = np.asarray(img.convert("L"))
    else:
        arr = np.asarray(img.convert("RGB"))
    return arr.reshape(arr.shape[0], arr.shape[1], -1)  # (H, W, C)


def decode_png(data: bytes, where: str = "image") -> np.ndarray:
    """Decode PNG bytes to an (H, W, C) uint8 array, C 1 (grey) or 3 (RGB; alpha dropped)."""
    arr = _decode_fast(data)
    return arr if arr is not None else _decode_pil(data, where)


def _image_bytes(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The PNG bytes of an ``image`` column: struct<bytes, path> (HF layout) or plain binary."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(arr.type):
        arr = arr.field("bytes")  # accounts for the slice offset
    return arr


def _decode_column(column: pa.Array | pa.ChunkedArray, where: str) -> list[np.ndarray]:
    """Decode an Arrow ``image`` column to (H, W, C) uint8 arrays; ValueError naming bad/null rows."""
    blobs = _image_bytes(column).to_pylist()
    out = []
    for i, b in enumerate(blobs):
        if b is None:
            raise ValueError(f"{where} row {i}: null image; valid: PNG bytes in every row")
        out.append(decode_png(b, f"{where} row {i}"))
    return out


def to_tensor(img: np.ndarray, image_dtype: str = "float") -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W): float32 ``x / 127.5 - 1`` in [-1, 1] (as ``jobs.data``) or uint8."""
    chw = img.transpose(2, 0, 1)  # (C, H, W)
    if image_dtype == "uint8":
        return torch.from_numpy(np.array(chw, order="C"))
    x = chw.astype(np.float32)  # same float32 ops as jobs.data's div_(127.5).sub_(1.0): equal values
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return torch.from_numpy(x)


# --------------------------------------------------------------------------------------------------
# Ray Data recipe
# --------------------------------------------------------------------------------------------------


def _png_of(value: Any) -> bytes:
    if isinstance(value, dict):  # Ray's numpy batches hold struct cells as dicts
        value = value.get("bytes")
    if isinstance(value, pa.Scalar):
        value = value.as_py()
        value = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(
            f"image cell of type {type(value).__name__}; valid: {{'bytes': PNG, ...}} or PNG bytes"
        )
    return bytes(value)


def ray_data_decode(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode a Ray Data batch of genaug rows: ``{"image": (N, C, H, W) float32 in [-1, 1], "label": (N,)}``.

    Recipe (Ray Data does the parallel reading; the shards' ``image`` column is struct<bytes, path>)::

        import ray
        from jobs.loader import ray_data_decode

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
        imgs = _decode_column(raw, "batch")
    else:
        imgs = [decode_png(_png_of(v), f"batch row {i}") for i, v in enumerate(raw)]
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
# Catalogue: which files, which row groups, which classes
# --------------------------------------------------------------------------------------------------


def _hf_classes(schema: pa.Schema) -> list[str] | None:
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        names = json.loads(raw)["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _expand(uri: str | os.PathLike, filesystem: pafs.FileSystem | None, allow_incomplete: bool):
    """(filesystem, shard paths, manifest or None) for a dataset folder or one Parquet file."""
    fs, base = shards.resolve_output(uri, filesystem)
    kind = fs.get_file_info(base).type
    if kind == pafs.FileType.File:
        return fs, [base], None
    if kind != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no dataset or Parquet file at {os.fspath(uri)!r}; valid: a dataset folder (with "
            f"{shards.SUCCESS}), a .parquet file, or a list of them"
        )
    if not allow_incomplete and fs.get_file_info(join_path(base, shards.SUCCESS)).type != pafs.FileType.File:
        raise ValueError(
            f"dataset folder {base} has no {shards.SUCCESS}: its job did not finish (or is still running); "
            "valid: a finished dataset, or allow_incomplete=True to read the shards committed so far"
        )
    try:
        manifest = shards.read_manifest(base, filesystem=fs)
    except FileNotFoundError:
        manifest = None
    except ValueError as e:
        raise ValueError(f"{base}/{shards.MANIFEST} is not valid JSON: {e}") from None
    if manifest is not None:
        return fs, [join_path(base, s["path"]) for s in manifest["shards"]], manifest
    for folder in (join_path(base, shards.DATA_DIR), base):
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        found = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(shards.TEMP_PREFIX)
        )
        if found:
            return fs, found, None
    raise FileNotFoundError(
        f"no Parquet shards in {base}/{shards.DATA_DIR} or {base}; valid: a genaug dataset"
    )


class _Catalog:
    """The shard files of one or more datasets, their row groups (the split units) and class names."""

    def __init__(
        self,
        uris: str | os.PathLike | Sequence[str | os.PathLike],
        filesystem: pafs.FileSystem | None,
        allow_incomplete: bool,
    ) -> None:
        items = [uris] if isinstance(uris, str | os.PathLike) else list(uris)
        if not items:
            raise ValueError("no dataset given; valid: a dataset folder, a .parquet file or a list of them")
        self.files: list[tuple[pafs.FileSystem, str]] = []
        self.units: list[tuple[int, int, int]] = []  # (file index, row group, rows)
        self.manifests: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self.classes: list[str] | None = None
        source = ""
        for item in items:
            fs, paths, manifest = _expand(item, filesystem, allow_incomplete)
            if manifest is not None:
                self.manifests.append(manifest)
                source = self._merge_classes(
                    [str(c) for c in manifest["classes"]], source, f"{item} manifest"
                )
            for path in paths:
                with fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f)
                    meta, schema = pf.metadata, pf.schema_arrow
                missing = {"image", "label"} - set(schema.names)
                if missing:
                    raise ValueError(
                        f"{path} lacks columns {sorted(missing)}; valid: a genaug shard ({schema.names})"
                    )
                if not self.columns:
                    self.columns = list(schema.names)
                names = _hf_classes(schema)
                if names is not None:
                    source = self._merge_classes(names, source, path)
                k = len(self.files)
                self.files.append((fs, path))
                self.units += [(k, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]

    def _merge_classes(self, names: list[str], source: str, where: str) -> str:
        if self.classes is None:
            self.classes = names
            return where
        if names != self.classes:
            raise ValueError(f"class names differ: {source} has {self.classes}, {where} has {names}")
        return source

    @property
    def num_rows(self) -> int:
        return sum(u[2] for u in self.units)


class _Reader:
    """Reads units, keeping a few Parquet files open (LRU); close() when done."""

    def __init__(self, catalog: _Catalog) -> None:
        self.catalog = catalog
        self.open: OrderedDict[int, tuple[Any, pq.ParquetFile]] = OrderedDict()

    def read(self, unit: int, columns: list[str]) -> pa.Table:
        k, group, _ = self.catalog.units[unit]
        if k in self.open:
            self.open.move_to_end(k)
        else:
            fs, path = self.catalog.files[k]
            f = fs.open_input_file(path)
            self.open[k] = (f, pq.ParquetFile(f))
            if len(self.open) > _FILES_OPEN:
                self.open.popitem(last=False)[1][0].close()
        return self.open[k][1].read_row_group(group, columns=columns)

    def where(self, unit: int) -> str:
        k, group, _ = self.catalog.units[unit]
        return f"{self.catalog.files[k][1]} row group {group}"

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1][0].close()


# --------------------------------------------------------------------------------------------------
# Ranks, workers and epoch plans
# --------------------------------------------------------------------------------------------------


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} invalid; valid: an integer") from None


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the explicit values, else torch.distributed if initialised, else $RANK /
    $WORLD_SIZE, else (0, 1)."""
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
            if rank is None or world_size is None:
                rank, world_size = 0, 1
    if rank is None or world_size is None:
        raise ValueError(f"rank={rank!r}, world_size={world_size!r}; valid: both given or neither")
    if isinstance(world_size, bool) or int(world_size) != world_size or world_size < 1:
        raise ValueError(f"world_size {world_size!r} invalid; valid: an integer >= 1")
    if isinstance(rank, bool) or int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} invalid; valid: 0..{int(world_size) - 1}")
    return int(rank), int(world_size)


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _split(n: int, parts: int, i: int) -> tuple[int, int]:
    """Part ``i`` of ``range(n)`` cut into ``parts`` contiguous pieces whose sizes differ by at most 1."""
    return i * n // parts, (i + 1) * n // parts


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def _unit_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return _rng(seed, epoch, 0).permutation(n) if shuffle else np.arange(n)


def _range_pieces(order: np.ndarray, rows: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The (unit, start, stop) pieces covering rows [lo, hi) of the units concatenated in ``order``."""
    ends = np.cumsum(rows[order])
    pieces, first = [], int(np.searchsorted(ends, lo, side="right"))
    for j in range(first, len(order)):
        begin = int(ends[j] - rows[order[j]])
        if begin >= hi:
            break
        a, b = max(lo, begin) - begin, min(hi, int(ends[j])) - begin
        if b > a:
            pieces.append((int(order[j]), a, b))
    return pieces


# --------------------------------------------------------------------------------------------------
class _RankAware:
    """Rank bookkeeping shared by the two datasets: explicit overrides or re-detection in the main process."""

    _explicit: tuple[int | None, int | None]
    rank: int
    world_size: int

    def _refresh_rank(self) -> None:
        """Re-detect the rank in the main process (torch.distributed may be initialised after __init__)."""
        if torch.utils.data.get_worker_info() is None:
            self.rank, self.world_size = resolve_rank(*self._explicit)

    def __getstate__(self) -> dict[str, Any]:
        self._refresh_rank()  # pickled in the main process for spawned workers: carry the rank along
        return self.__dict__.copy()


# --------------------------------------------------------------------------------------------------
# ShardStream
# --------------------------------------------------------------------------------------------------


class ShardStream(_RankAware, torch.utils.data.IterableDataset):
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
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed {seed!r} invalid; valid: an integer >= 0")
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype {image_dtype!r} invalid; valid: {', '.join(IMAGE_DTYPES)}")
        self.catalog = _Catalog(uris, filesystem, allow_incomplete)
        extra = [c for c in (columns or []) if c not in ("image", "label")]
        if return_key and "key" not in extra:
            extra.append("key")
        unknown = sorted(set(extra) - set(self.catalog.columns))
        if unknown:
            raise ValueError(f"unknown columns {unknown}; valid: {self.catalog.columns}")
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.transform = transform
        self.decode = bool(decode)
        self.image_dtype = image_dtype
        self.extra_columns = extra
        self.as_dict = bool(extra)
        self.even = bool(even)
        self._explicit = (rank, world_size)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.epoch = 0

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
        order = _unit_order(len(rows), self.seed, self.epoch, self.shuffle_buffer > 0)
        return int(rows[order[self.rank :: self.world_size]].sum())

    # -- planning -----------------------------------------------------------------------------------

    def plan(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int, int]]:
        """The (unit, start row, stop row) pieces slot (rank, ``worker``) reads this epoch, in order."""
        rows = np.asarray([u[2] for u in self.catalog.units], dtype=np.int64)
        order = _unit_order(len(rows), self.seed, self.epoch, self.shuffle_buffer > 0)
        r, world = self.rank, self.world_size
        if not self.even:
            mine = order[r + world * worker :: world * num_workers]
            return [(int(u), 0, int(rows[u])) for u in mine if rows[u] > 0]
        per_rank = int(rows.sum()) // world
        lo, hi = _split(per_rank, num_workers, worker)
        return _range_pieces(order, rows, r * per_rank + lo, r * per_rank + hi)

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = _worker()
        if num_workers == 1:
            self._refresh_rank()
        shuffle = self.shuffle_buffer > 0
        rng = _rng(self.seed, self.epoch, 1, self.rank, worker)
        rows = _iter_rows(
            self.catalog, self.plan(worker, num_workers), self._columns(), shuffle, rng, self.decode
        )
        if self.shuffle_buffer > 1:
            rows = _buffer_shuffle(rows, self.shuffle_buffer, rng)
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


def _iter_rows(
    catalog: _Catalog,
    pieces: Sequence[tuple[int, int, int] | tuple[int, np.ndarray]],
    columns: list[str],
    shuffle: bool,
    rng: np.random.Generator,
    decode: bool = True,
) -> Iterator[tuple[Any, int, dict[str, Any]]]:
    """(image (H, W, C) uint8 array or PNG bytes, label, {extra column: value}) for each row of ``pieces``.

    A piece is (unit, start, stop) (rows permuted if ``shuffle``) or (unit, row indices) (taken as given).
    One row group is held in memory at a time.
    """
    reader = _Reader(catalog)
    extra_names = [c for c in columns if c not in ("image", "label")]
    try:
        for piece in pieces:
            table = reader.read(piece[0], columns)
            if len(piece) == 3:
                _, a, b = piece
                table = table.slice(a, b - a)
                idx = rng.permutation(b - a) if shuffle else np.arange(b - a)
            else:
                idx = np.asarray(piece[1])
            labels = table.column("label").to_numpy().tolist()
            if decode:
                images = _decode_column(table.column("image"), reader.where(piece[0]))
            else:
                images = _image_bytes(table.column("image")).to_pylist()
            extras = {c: table.column(c).to_pylist() for c in extra_names}
            for i in idx.tolist():
                yield images[i], labels[i], {c: v[i] for c, v in extras.items()}
    finally:
        reader.close()


def _buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``size`` items (the classic streaming shuffle)."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


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


class AugmentedDataset(_RankAware, torch.utils.data.IterableDataset):
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
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed {seed!r} invalid; valid: an integer >= 0")
        self.real = real
        self.catalog = _Catalog(synthetic, filesystem, allow_incomplete)
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
        self.seed = int(seed)
        self.transform = transform
        self.return_key = bool(return_key)
        self._explicit = (rank, world_size)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.epoch = 0
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
        return int(np.diff(_split(self.num_real, w, r))[0] + np.diff(_split(self.num_synthetic, w, r))[0])

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
        reader = _Reader(self.catalog)
        try:
            column = reader.read(unit, ["image"]).column("image").slice(0, 1)
            syn_shape = tuple(to_tensor(_decode_column(column, reader.where(unit))[0]).shape)
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
                rng = _rng(self.seed, self.epoch, 2, cycle)
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
            rng = _rng(self.seed, self.epoch, 2, cycle)
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
        rlo, rhi = _split(n, self.world_size, self.rank)
        lo, hi = _split(rhi - rlo, num_workers, worker)
        return rlo + lo, rlo + hi

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = _worker()
        if num_workers == 1:
            self._refresh_rank()
        rng = _rng(self.seed, self.epoch, 1)
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
        synthetic = _iter_rows(self.catalog, mine, columns, False, rng)
        flags = np.zeros(len(real_idx) + (shi - slo), dtype=bool)
        flags[len(real_idx) :] = True
        flags = _rng(self.seed, self.epoch, 3, self.rank, worker).permutation(flags)
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


__all__ = [
    "IMAGE_DTYPES",
    "AugmentedDataset",
    "ShardStream",
    "decode_png",
    "ray_data_decode",
    "resolve_rank",
    "to_tensor",
]
