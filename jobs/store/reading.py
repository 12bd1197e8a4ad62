"""How the loaders read shards: the catalog of (file, row group) units, rank/worker splits, decoding.

Shared by ``ShardStream`` and ``AugmentedDataset``; see ``jobs.store.loader`` for the splitting rules."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from jobs.store import shards
from jobs.store.atomic import join_path
from jobs.store.manifest import read_manifest
from jobs.store.png import decode_png

_FILES_OPEN = 4  # Parquet files kept open per iterator (units of one file are often consecutive)


def _image_bytes(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The PNG bytes of an ``image`` column: struct<bytes, path> (HF layout) or plain binary."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(arr.type):
        arr = arr.field("bytes")  # accounts for the slice offset
    return arr


def decode_column(column: pa.Array | pa.ChunkedArray, where: str) -> list[np.ndarray]:
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


def png_of(value: Any) -> bytes:
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
        manifest = read_manifest(base, filesystem=fs)
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


class Catalog:
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


class Reader:
    """Reads units, keeping a few Parquet files open (LRU); close() when done."""

    def __init__(self, catalog: Catalog) -> None:
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


def worker_slot() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def split_range(n: int, parts: int, i: int) -> tuple[int, int]:
    """Part ``i`` of ``range(n)`` cut into ``parts`` contiguous pieces whose sizes differ by at most 1."""
    return i * n // parts, (i + 1) * n // parts


def seeded_rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def unit_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return seeded_rng(seed, epoch, 0).permutation(n) if shuffle else np.arange(n)


def range_pieces(order: np.ndarray, rows: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
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
class RankAware:
    """What the two datasets share: the shard catalog, seed, transform and rank bookkeeping (explicit
    overrides or re-detection in the main process)."""

    _explicit: tuple[int | None, int | None]
    rank: int
    world_size: int

    def _init_reading(
        self,
        uris: str | os.PathLike | Sequence[str | os.PathLike],
        seed: int,
        transform: Callable[[Any], Any] | None,
        filesystem: pafs.FileSystem | None,
        allow_incomplete: bool,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed {seed!r} invalid; valid: an integer >= 0")
        self.catalog = Catalog(uris, filesystem, allow_incomplete)
        self.seed = int(seed)
        self.transform = transform
        self._explicit = (rank, world_size)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.epoch = 0

    def _refresh_rank(self) -> None:
        """Re-detect the rank in the main process (torch.distributed may be initialised after __init__)."""
        if torch.utils.data.get_worker_info() is None:
            self.rank, self.world_size = resolve_rank(*self._explicit)

    def __getstate__(self) -> dict[str, Any]:
        self._refresh_rank()  # pickled in the main process for spawned workers: carry the rank along
        return self.__dict__.copy()


def iter_rows(
    catalog: Catalog,
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
    reader = Reader(catalog)
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
                images = decode_column(table.column("image"), reader.where(piece[0]))
            else:
                images = _image_bytes(table.column("image")).to_pylist()
            extras = {c: table.column(c).to_pylist() for c in extra_names}
            for i in idx.tolist():
                yield images[i], labels[i], {c: v[i] for c, v in extras.items()}
    finally:
        reader.close()


def buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
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
