"""genaug's dataset-on-disk contract: shard format, planner, writer, manifest, card and verification.

A finished dataset is a folder (local path or any URI pyarrow.fs understands, e.g. ``s3://``)::

    data/train-00000-of-00010.parquet   one Parquet file per shard, published by an atomic move
    ...
    manifest.json                       request, lineage, every shard's rows/bytes/sha256, totals
    README.md                           Hugging Face dataset card (YAML header: configs, dataset_info)
    _SUCCESS                            written LAST; its presence means "complete and consistent"

The layout follows the conventions downstream tools already read (REFERENCE.md, "Parquet shard
conventions"): Hugging Face ``datasets`` shard names ``data/{split}-{i:05d}-of-{n:05d}.parquet``, an image
column ``struct<bytes: binary, path: string>`` and the ``huggingface`` schema metadata key so that
``load_dataset("parquet", ...)`` decodes PIL images and ``ClassLabel`` names; img2dataset's ``key`` and
``sha256`` columns; and, unlike Ray Data's ``write_parquet``, temp-name-then-rename writes plus a manifest
and ``_SUCCESS`` written last, so a crashed job never leaves a file that looks committed.

Callers (the generation job) hand in uint8 images and labels; nothing here imports Ray or models.

Typical use (one shard per task, then one finalize)::

    n = plan_shards(counts, shard_rows)
    for k, class_counts in enumerate(iter_shard_class_counts(counts, shard_rows)):
        seed = shard_seed(job_seed, k)
        labels = shard_labels(class_counts, seed)
        images = sample(model, labels, seed)                    # (N, H, W, C) uint8, caller's code
        infos.append(write_shard(out, k, n, encode_pngs(images), labels, classes, "digits:v3", seed))
    finalize_dataset(out, request, lineage, infos, classes, duration_s)
    assert verify_dataset(out).ok
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import storage
from jobs.storage import join_path, validate_name

FORMAT_VERSION = 1
SPLIT = "train"
DATA_DIR = "data"
MANIFEST = "manifest.json"
CARD = "README.md"
SUCCESS = "_SUCCESS"
TEMP_PREFIX = storage.TEMP_PREFIX  # temporary names (".tmp-..."), never committed
ROW_GROUP_ROWS = 1000  # rows per Parquet row group (<< HF's 100 MB guidance even for 64x64 RGB PNGs)
DEFAULT_SHARD_ROWS = 10_000  # img2dataset's default samples per shard
MAX_SEED = 2**63 - 1
_MODEL_RE = re.compile(r"^(?P<name>[^:]+):v(?P<version>\d+)$")

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

# Column types and order, without class names. ``path`` is typed string although always null: an
# inferred ``struct<bytes, path: null>`` makes HF datasets ignore the metadata (REFERENCE.md pitfall).
# Every field stays nullable: HF only applies a metadata feature whose arrow field equals the file's.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int64()),
        pa.field("label_name", pa.string()),
        pa.field("key", pa.string()),
        pa.field("model", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("is_synthetic", pa.bool_()),
        pa.field("sha256", pa.string()),
    ]
)


def _validate_classes(classes: Sequence[str]) -> list[str]:
    names = list(classes)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"classes {names!r} invalid; valid: a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError(f"classes {names!r} contain duplicates; valid: unique names")
    return names


def hf_features(classes: Sequence[str]) -> dict[str, Any]:
    """The Hugging Face ``datasets`` feature JSON for the shard columns (``Features.to_dict()`` form)."""
    names = _validate_classes(classes)
    string = {"dtype": "string", "_type": "Value"}
    return {
        "image": {"_type": "Image"},
        "label": {"names": names, "_type": "ClassLabel"},
        "label_name": dict(string),
        "key": dict(string),
        "model": dict(string),
        "seed": {"dtype": "int64", "_type": "Value"},
        "is_synthetic": {"dtype": "bool", "_type": "Value"},
        "sha256": dict(string),
    }


def shard_schema(classes: Sequence[str]) -> pa.Schema:
    """``SHARD_SCHEMA`` plus the ``huggingface`` metadata key naming the classes."""
    meta = {"info": {"features": hf_features(classes)}}
    return SHARD_SCHEMA.with_metadata({b"huggingface": json.dumps(meta).encode()})


# --------------------------------------------------------------------------------------------------
# PNG encoding (hot path)
# --------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_IDAT_CRC0 = zlib.crc32(b"IDAT")
PNG_LEVEL = 6  # zlib level, PIL's default; on digit-like images levels 1 and 9 gave sizes within 2 %


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _png_header(height: int, width: int, channels: int) -> bytes:
    color_type = 0 if channels == 1 else 2  # 0: greyscale, 2: truecolour RGB
    # bit depth 8, compression 0 (deflate), filter method 0, no interlace
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr)


def _as_nhwc(images: np.ndarray, batched: bool) -> np.ndarray:
    arr = np.asarray(images)
    want = "(N, H, W), (N, H, W, 1) or (N, H, W, 3)" if batched else "(H, W), (H, W, 1) or (H, W, 3)"
    base = 3 if batched else 2
    if arr.dtype != np.uint8:
        raise ValueError(f"image dtype {arr.dtype} invalid; valid: uint8")
    if arr.ndim == base:
        arr = arr[..., None]  # (..., H, W, 1)
    if arr.ndim != base + 1 or arr.shape[-1] not in (1, 3) or arr.shape[-2] == 0 or arr.shape[-3] == 0:
        raise ValueError(f"image shape {arr.shape} invalid; valid: {want} with H, W >= 1")
    return arr if batched else arr[None]  # (N, H, W, C)


def _encode_raw(header: bytes, scanlines: np.ndarray, level: int) -> bytes:
    data = zlib.compress(scanlines, level)  # releases the GIL while deflating
    return b"".join(
        (
            header,
            struct.pack(">I", len(data)),
            b"IDAT",
            data,
            struct.pack(">I", zlib.crc32(data, _IDAT_CRC0)),
            _IEND,
        )
    )


def encode_pngs(images: np.ndarray, *, level: int = PNG_LEVEL, threads: int = 1) -> list[bytes]:
    """Encode ``images`` (N, H, W[, C]) uint8, C in {1, 3}, to 8-bit grey/RGB PNG bytes, one per image.

    A minimal writer (signature, IHDR, one IDAT with filter byte 0 per row, IEND): about 2-4x faster
    than PIL's ``Image.save`` at 8x8..64x64 with files of similar size (PIL's adaptive filters make
    smooth grey images ~15 % smaller). ``threads > 1`` runs the deflate calls in a thread pool (zlib
    releases the GIL); on the 2-core dev machine that did not help, so the default is 1.
    """
    arr = _as_nhwc(images, batched=True)
    n, h, w, c = arr.shape
    raw = np.zeros((n, h, 1 + w * c), dtype=np.uint8)  # (N, H, 1 + W*C): filter byte 0, then the row
    raw[:, :, 1:] = arr.reshape(n, h, w * c)  # (N, H, W*C)
    header = _png_header(h, w, c)
    if threads <= 1 or n < 2:
        return [_encode_raw(header, raw[i], level) for i in range(n)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: _encode_raw(header, raw[i], level), range(n)))


def encode_png(img: np.ndarray, *, level: int = PNG_LEVEL) -> bytes:
    """Encode one (H, W), (H, W, 1) or (H, W, 3) uint8 image as 8-bit grey or RGB PNG bytes."""
    arr = _as_nhwc(img, batched=False)  # (1, H, W, C)
    return encode_pngs(arr, level=level, threads=1)[0]


# --------------------------------------------------------------------------------------------------
# Planning: exact per-class counts per shard, computable for any shard alone
# --------------------------------------------------------------------------------------------------


def _validate_counts(counts: Sequence[int]) -> list[int]:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu" or (arr < 0).any():
        raise ValueError(f"counts {counts!r} invalid; valid: a non-empty 1-D list of integers >= 0")
    values = [int(c) for c in arr.tolist()]
    if sum(values) == 0:
        raise ValueError(f"counts {values!r} sum to 0; valid: at least one row requested")
    return values


def _validate_shard_rows(shard_rows: int) -> int:
    if isinstance(shard_rows, bool) or int(shard_rows) != shard_rows or shard_rows < 1:
        raise ValueError(f"shard_rows {shard_rows!r} invalid; valid: an integer >= 1")
    return int(shard_rows)


def plan_shards(counts: Sequence[int], shard_rows: int) -> int:
    """Number of shards for ``counts`` rows per class at ``shard_rows`` rows per shard (last one shorter)."""
    return math.ceil(sum(_validate_counts(counts)) / _validate_shard_rows(shard_rows))


def allocate_prefix(counts: Sequence[int], t: int) -> np.ndarray:
    """Per-class rows among the first ``t`` global row positions of the dataset.

    Row ``j`` (1-based) of class ``c`` sits at the ideal position ``(j - 1/2) / n_c`` of the unit
    interval (Webster / Sainte-Lague order); all rows are sorted by (position, class). The first ``t``
    rows of that fixed total order are counted, so the result is monotone in ``t`` by construction (no
    Alabama paradox, unlike largest-remainder), sums to ``t``, equals ``counts`` at ``t = total`` and
    stays within ``1/2 + C * n_c / (2 * total)`` of the proportional share ``t * n_c / total``.
    Cost O(C log C), independent of ``t``.
    """
    n = _validate_counts(counts)
    total = sum(n)
    if isinstance(t, bool) or int(t) != t or not 0 <= t <= total:
        raise ValueError(f"position {t} invalid; valid: 0..{total}")
    # Rows with position <= t/total: #{j >= 1: (2j - 1) / (2 n_c) <= t / total} = floor(t n_c / total + 1/2).
    t = int(t)
    a = [min(nc, (2 * t * nc + total) // (2 * total)) for nc in n]
    have = sum(a)
    if have < t:  # take the next rows in (position, class) order
        heap = [(Fraction(2 * a[c] + 1, 2 * nc), c) for c, nc in enumerate(n) if a[c] < nc]
        heapq.heapify(heap)
        for _ in range(t - have):
            _, c = heapq.heappop(heap)
            a[c] += 1
            if a[c] < n[c]:
                heapq.heappush(heap, (Fraction(2 * a[c] + 1, 2 * n[c]), c))
    elif have > t:  # drop the last rows in (position, class) order
        heap = [(-Fraction(2 * a[c] - 1, 2 * nc), -c) for c, nc in enumerate(n) if a[c] > 0]
        heapq.heapify(heap)
        for _ in range(have - t):
            _, neg_c = heapq.heappop(heap)
            c = -neg_c
            a[c] -= 1
            if a[c] > 0:
                heapq.heappush(heap, (-Fraction(2 * a[c] - 1, 2 * n[c]), -c))
    return np.asarray(a, dtype=np.int64)


def shard_class_counts(counts: Sequence[int], shard_rows: int, shard: int) -> np.ndarray:
    """Per-class rows (int64, length C) of shard ``shard``: A((k+1)R) - A(kR) of ``allocate_prefix``.

    Shards sum to exactly ``counts``; every shard has ``shard_rows`` rows except the last; classes are
    interleaved evenly (not class-major). Computed for one shard alone, without materialising rows.
    """
    num = plan_shards(counts, shard_rows)
    if isinstance(shard, bool) or int(shard) != shard or not 0 <= shard < num:
        raise ValueError(f"shard {shard!r} invalid; valid: 0..{num - 1}")
    values, rows = _validate_counts(counts), int(shard_rows)
    total = sum(values)
    lo, hi = int(shard) * rows, min((int(shard) + 1) * rows, total)
    return allocate_prefix(values, hi) - allocate_prefix(values, lo)


def iter_shard_class_counts(counts: Sequence[int], shard_rows: int) -> Iterator[np.ndarray]:
    """Yield ``shard_class_counts`` for shards 0, 1, ... lazily (one prefix allocation per shard)."""
    num = plan_shards(counts, shard_rows)
    values, rows = _validate_counts(counts), int(shard_rows)
    total = sum(values)
    prev = np.zeros(len(values), dtype=np.int64)
    for k in range(num):
        cur = allocate_prefix(values, min((k + 1) * rows, total))
        yield cur - prev
        prev = cur


def shard_seed(job_seed: int, shard: int) -> int:
    """The seed (0 <= s < 2**63) that reproduces shard ``shard`` of a job: SeedSequence([job_seed, shard])."""
    for name, v in (("job_seed", job_seed), ("shard", shard)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ValueError(f"{name} {v!r} invalid; valid: an integer >= 0")
    state = np.random.SeedSequence([int(job_seed), int(shard)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & MAX_SEED


def shard_labels(class_counts: Sequence[int], seed: int) -> np.ndarray:
    """The labels (int64) of one shard: class c repeated class_counts[c] times, permuted by ``seed``.

    The permutation uses ``np.random.default_rng(seed)``, so the same counts and seed give the same order.
    """
    cc = np.asarray(class_counts)
    if cc.ndim != 1 or cc.size == 0 or not np.issubdtype(cc.dtype, np.integer) or (cc < 0).any():
        raise ValueError(f"class_counts {cc.tolist()!r} invalid; valid: a 1-D list of integers >= 0")
    labels = np.repeat(np.arange(cc.size, dtype=np.int64), cc)
    return np.random.default_rng(int(seed)).permutation(labels)


# --------------------------------------------------------------------------------------------------
# Filesystem helpers (pyarrow.fs throughout, so s3:// works like a local path)
# --------------------------------------------------------------------------------------------------


def resolve_output(
    output: str | os.PathLike | storage.Location, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for ``output``: a local path, a URI or Location (``jobs.storage.location``).

    With an explicit ``filesystem``, ``output`` is a path inside it (a ``scheme://`` prefix is dropped).
    """
    if filesystem is not None:
        raw = output.path if isinstance(output, storage.Location) else os.fspath(output)
        if "://" in raw:
            raw = raw.split("://", 1)[1]
        if isinstance(filesystem, pafs.LocalFileSystem):
            raw = os.path.abspath(raw)
        return filesystem, raw.rstrip("/") or "/"
    loc = storage.location(output)
    return loc.fs, loc.path.rstrip("/") or "/"


def shard_path(shard: int, num_shards: int) -> str:
    """The shard's path relative to the dataset folder: ``data/train-{i:05d}-of-{n:05d}.parquet``."""
    return f"{DATA_DIR}/{SPLIT}-{shard:05d}-of-{num_shards:05d}.parquet"


def _temp_path(path: str) -> str:
    return storage.temp_path(path)


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    storage._delete_quietly(fs, path)


def _put_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write ``data`` so that ``path`` never holds a partial file (``jobs.storage.put_atomic``).

    Local disk: temp file beside it, fsync, atomic rename. S3/GCS: one upload to the final key, which
    becomes visible only once complete. Any other filesystem: temp object, then a move.
    """
    storage.put_atomic(fs, path, data)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    return storage.read_bytes(fs, path)


def _file_sha256(fs: pafs.FileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Shard writer
# --------------------------------------------------------------------------------------------------


def _check_model(model: str) -> str:
    m = _MODEL_RE.match(model) if isinstance(model, str) else None
    if m is None:
        raise ValueError(f"model {model!r} invalid; valid: 'name:vK', e.g. 'digits-cvae:v3'")
    validate_name(m.group("name"), "model name")
    return model


def build_shard_table(
    images_png: Sequence[bytes],
    labels: np.ndarray,
    classes: Sequence[str],
    model: str,
    seed: int,
    shard: int,
    *,
    is_synthetic: bool = True,
) -> pa.Table:
    """The Arrow table of one shard, with ``shard_schema(classes)``; keys are ``f"{shard:05d}-{row:07d}"``."""
    names = _validate_classes(classes)
    _check_model(model)
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(images_png) != lab.size:
        raise ValueError(
            f"labels shape {lab.shape} does not match {len(images_png)} images; "
            "valid: 1-D, one label per image"
        )
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= len(names)):
        raise ValueError(
            f"labels {np.unique(lab).tolist()!r} out of range; valid: integers 0..{len(names) - 1}"
        )
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed!r} invalid; valid: an integer 0..2**63-1")
    if isinstance(shard, bool) or int(shard) != shard or shard < 0:
        raise ValueError(f"shard {shard!r} invalid; valid: an integer >= 0")
    n = lab.size
    lab = lab.astype(np.int64)
    image = pa.StructArray.from_arrays(
        [pa.array(images_png, type=pa.binary()), pa.nulls(n, type=pa.string())], fields=list(IMAGE_TYPE)
    )
    label_names = pa.array(names, type=pa.string()).take(pa.array(lab))
    columns = [
        image,
        pa.array(lab, type=pa.int64()),
        label_names,
        _row_keys(int(shard), n),
        pa.array([model] * n, type=pa.string()),
        pa.array(np.full(n, int(seed), dtype=np.int64), type=pa.int64()),
        pa.array(np.full(n, bool(is_synthetic)), type=pa.bool_()),
        pa.array([hashlib.sha256(b).hexdigest() for b in images_png], type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=shard_schema(names))


def _row_keys(shard: int, n: int) -> pa.StringArray:
    """``f"{shard:05d}-{row:07d}"`` for rows 0..n-1, built as one character array (6x faster at 10k)."""
    if n >= 10**7:  # wider than 7 digits: the general (slow) form
        return pa.array([f"{shard:05d}-{row:07d}" for row in range(n)], type=pa.string())
    prefix = np.frombuffer(f"{shard:05d}-".encode(), np.uint8)
    powers = 10 ** np.arange(6, -1, -1, dtype=np.int64)  # (7,)
    digits = (np.arange(n, dtype=np.int64)[:, None] // powers) % 10 + ord("0")  # (N, 7)
    chars = np.empty((n, prefix.size + 7), np.uint8)
    chars[:, : prefix.size] = prefix
    chars[:, prefix.size :] = digits
    width = chars.shape[1]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)  # (N + 1,): fixed-width strings
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))


def table_to_parquet_bytes(table: pa.Table) -> pa.Buffer:
    """Serialise a shard table: zstd, row groups of ROW_GROUP_ROWS, no dictionary/stats on image bytes."""
    sink = pa.BufferOutputStream()
    small = [f.name for f in table.schema if f.name not in ("image", "key", "sha256")]
    pq.write_table(
        table,
        sink,
        row_group_size=ROW_GROUP_ROWS,
        compression="zstd",
        use_dictionary=small,
        write_statistics=[n for n in table.column_names if n != "image"],
    )
    return sink.getvalue()


def _uncompressed_bytes(data: bytes | pa.Buffer) -> int:
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def write_shard(
    output: str | os.PathLike,
    shard: int,
    num_shards: int,
    images_png: Sequence[bytes],
    labels: np.ndarray,
    classes: Sequence[str],
    model: str,
    seed: int,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> dict[str, Any]:
    """Write shard ``shard`` of ``num_shards`` under ``output`` atomically and return its info.

    ``build_shard_table`` then ``write_shard_table``: the file is serialised in memory, written to
    ``data/.tmp-<name>.<uuid>`` (flushed to disk on local storage) and moved to its final name; on any
    error the temp file is removed and no final file appears. Same inputs, same bytes.
    Returns ``{shard, path, rows, bytes, uncompressed_bytes, sha256, class_counts {label_name: n}, seed}``
    (``uncompressed_bytes``: the Parquet footer's total uncompressed size, the card's ``num_bytes``).
    """
    _check_shard_index(shard, num_shards)
    names = _validate_classes(classes)
    table = build_shard_table(images_png, labels, names, model, seed, shard)
    return _write_table(output, int(shard), int(num_shards), table, names, int(seed), filesystem)


def write_shard_table(
    output: str | os.PathLike,
    shard: int,
    num_shards: int,
    table: pa.Table,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> dict[str, Any]:
    """Commit a ``build_shard_table`` table as shard ``shard`` of ``num_shards``; see ``write_shard``."""
    _check_shard_index(shard, num_shards)
    try:
        classes = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    except (TypeError, KeyError, ValueError):
        raise ValueError("table has no genaug shard schema; valid: a build_shard_table result") from None
    want = shard_schema(classes)
    if not table.schema.equals(want, check_metadata=True):
        raise ValueError(f"table schema {table.schema} invalid; valid: shard_schema(classes)")
    seeds = np.unique(table.column("seed").to_numpy()).tolist()
    if len(seeds) > 1:
        raise ValueError(f"table has seeds {seeds[:5]}; valid: exactly one shard seed")
    seed = seeds[0] if seeds else 0
    return _write_table(output, int(shard), int(num_shards), table, classes, seed, filesystem)


def _check_shard_index(shard: int, num_shards: int) -> None:
    if isinstance(num_shards, bool) or int(num_shards) != num_shards or num_shards < 1:
        raise ValueError(f"num_shards {num_shards!r} invalid; valid: an integer >= 1")
    if isinstance(shard, bool) or int(shard) != shard or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard!r} invalid; valid: 0..{num_shards - 1}")


def _write_table(
    output: str | os.PathLike,
    shard: int,
    num_shards: int,
    table: pa.Table,
    classes: list[str],
    seed: int,
    filesystem: pafs.FileSystem | None,
) -> dict[str, Any]:
    buf = table_to_parquet_bytes(table)
    fs, base = resolve_output(output, filesystem)
    rel = shard_path(shard, num_shards)
    _put_atomic(fs, join_path(base, rel), buf)
    per_class = np.bincount(table.column("label").to_numpy(), minlength=len(classes))
    return {
        "shard": shard,
        "path": rel,
        "rows": table.num_rows,
        "bytes": buf.size,
        "uncompressed_bytes": _uncompressed_bytes(buf),
        "sha256": hashlib.sha256(buf).hexdigest(),
        "class_counts": {name: int(per_class[i]) for i, name in enumerate(classes)},
        "seed": int(seed),
    }


def describe_shard(
    output: str | os.PathLike, shard: int, num_shards: int, *, filesystem: pafs.FileSystem | None = None
) -> dict[str, Any]:
    """Re-describe a committed shard from its file (to resume a job): the dict ``write_shard`` returned.

    Raises ``FileNotFoundError`` when the shard is missing and ``ValueError`` when it is not a readable
    genaug shard (wrong schema, truncated, several seeds).
    """
    fs, base = resolve_output(output, filesystem)
    rel = shard_path(int(shard), int(num_shards))
    data = _read_bytes(fs, join_path(base, rel))
    try:
        table = pq.read_table(pa.BufferReader(data))
        classes = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    except Exception as e:  # noqa: BLE001 - any decode failure means "not a usable shard"
        raise ValueError(f"shard {base}/{rel} is unreadable: {type(e).__name__}: {e}") from e
    if table.schema != shard_schema(classes) or table.schema.metadata != shard_schema(classes).metadata:
        raise ValueError(f"shard {base}/{rel} has schema {table.schema}; valid: shard_schema(classes)")
    seeds = set(table.column("seed").to_pylist())
    if len(seeds) != 1:
        raise ValueError(f"shard {base}/{rel} has seeds {sorted(seeds)[:5]}; valid: exactly one shard seed")
    per_class = np.bincount(table.column("label").to_numpy(), minlength=len(classes))
    return {
        "shard": int(shard),
        "path": rel,
        "rows": table.num_rows,
        "bytes": len(data),
        "uncompressed_bytes": _uncompressed_bytes(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "class_counts": {name: int(per_class[i]) for i, name in enumerate(classes)},
        "seed": int(seeds.pop()),
    }


# --------------------------------------------------------------------------------------------------
# Finalisation: manifest.json, README.md, _SUCCESS (last)
# --------------------------------------------------------------------------------------------------


def write_manifest(
    output: str | os.PathLike, manifest: dict[str, Any], *, filesystem: pafs.FileSystem | None = None
) -> str:
    """Write ``manifest.json`` atomically; returns the sha256 of the bytes written."""
    fs, base = resolve_output(output, filesystem)
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    _put_atomic(fs, join_path(base, MANIFEST), data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(output: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None) -> dict[str, Any]:
    """Read ``manifest.json``; ``FileNotFoundError`` naming it when it is missing."""
    fs, base = resolve_output(output, filesystem)
    return json.loads(_read_bytes(fs, join_path(base, MANIFEST)))


def render_card(manifest: dict[str, Any]) -> str:
    """The dataset card text (YAML header for the Hub / ``load_dataset(folder)``, then lineage)."""
    import yaml  # PyYAML: a dependency of ray and datasets

    classes = manifest["classes"]
    totals = manifest["totals"]
    features = [
        {"name": "image", "dtype": "image"},
        {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(classes)}}}},
        {"name": "label_name", "dtype": "string"},
        {"name": "key", "dtype": "string"},
        {"name": "model", "dtype": "string"},
        {"name": "seed", "dtype": "int64"},
        {"name": "is_synthetic", "dtype": "bool"},
        {"name": "sha256", "dtype": "string"},
    ]
    header = {
        "configs": [
            {"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}
        ],
        "dataset_info": {
            "features": features,
            "splits": [
                {
                    "name": SPLIT,
                    "num_bytes": int(totals.get("uncompressed_bytes", 0)),
                    "num_examples": int(totals["rows"]),
                }
            ],
            "download_size": int(totals["bytes"]),
            "dataset_size": int(totals.get("uncompressed_bytes", 0)),
        },
        "tags": ["synthetic", "genaug"],
    }
    lineage = manifest.get("lineage", {})
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        "# Synthetic dataset generated by genaug",
        "",
        f"{totals['rows']} synthetic images in {totals['shards']} Parquet shards ({totals['bytes']} bytes), "
        f"written {manifest.get('created_at', '?')} in {manifest.get('duration_s', 0):.1f} s.",
        "",
        "## Lineage",
        "",
    ]
    lines += [f"- **{k}**: `{json.dumps(v) if not isinstance(v, str) else v}`" for k, v in lineage.items()]
    lines += [
        "",
        "Every row carries `model` (name:version) and `seed` (the shard seed that reproduces it); "
        "`sha256` is the hash of the PNG bytes. `manifest.json` lists each shard's rows, bytes and sha256.",
        "",
        "## Rows per class",
        "",
        "| label | name | rows |",
        "|---:|---|---:|",
    ]
    lines += [f"| {i} | {c} | {totals['per_class'].get(c, 0)} |" for i, c in enumerate(classes)]
    lines += ["", "## Request", "", "```json", json.dumps(manifest.get("request", {}), indent=2), "```", ""]
    return "\n".join(lines)


def write_card(
    output: str | os.PathLike, manifest: dict[str, Any], *, filesystem: pafs.FileSystem | None = None
) -> None:
    """Write the dataset card ``README.md`` atomically from a manifest."""
    fs, base = resolve_output(output, filesystem)
    _put_atomic(fs, join_path(base, CARD), render_card(manifest).encode())


def mark_success(
    output: str | os.PathLike, manifest_sha256: str = "", *, filesystem: pafs.FileSystem | None = None
) -> None:
    """Write ``_SUCCESS`` (holding the manifest's sha256, if given) atomically. Call it last."""
    fs, base = resolve_output(output, filesystem)
    _put_atomic(fs, join_path(base, SUCCESS), (manifest_sha256 + "\n").encode() if manifest_sha256 else b"")


def _check_shard_list(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not shards:
        raise ValueError("shard list is empty; valid: shard infos 0..n-1 from write_shard")
    ordered = sorted(shards, key=lambda s: int(s["shard"]))
    idx = [int(s["shard"]) for s in ordered]
    n = len(ordered)
    if idx != list(range(n)):
        dup = sorted({i for i in idx if idx.count(i) > 1})
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise ValueError(
            f"shard list has gaps {missing} / duplicates {dup}; "
            f"valid: each of shards 0..{max(max(idx), n - 1)} exactly once"
        )
    for s in ordered:
        want = shard_path(int(s["shard"]), n)
        if s["path"] != want:
            raise ValueError(f"shard path {s['path']!r} invalid for {n} shards; valid: {want!r}")
    return ordered


def finalize_dataset(
    output: str | os.PathLike,
    request: dict[str, Any],
    lineage: dict[str, Any],
    shards: list[dict[str, Any]],
    classes: Sequence[str],
    duration_s: float,
    filesystem: pafs.FileSystem | None = None,
) -> dict[str, Any]:
    """Commit a dataset: ``manifest.json``, then ``README.md``, then ``_SUCCESS`` last, each atomically.

    ``shards`` are ``write_shard`` results (any order); gaps, duplicates, wrong paths or a shard file
    missing/of the wrong size raise before anything is written. Returns the manifest.
    """
    names = _validate_classes(classes)
    ordered = _check_shard_list(shards)
    fs, base = resolve_output(output, filesystem)
    infos = fs.get_file_info([join_path(base, s["path"]) for s in ordered])
    for s, info in zip(ordered, infos, strict=True):
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"missing shard file {join_path(base, s['path'])}")
        if info.size != int(s["bytes"]):
            raise ValueError(f"shard {s['path']} has {info.size} bytes on disk; manifest says {s['bytes']}")
    per_class = {c: 0 for c in names}
    for s in ordered:
        for c, v in s["class_counts"].items():
            if c not in per_class:
                raise ValueError(f"shard {s['path']} has unknown class {c!r}; valid: {names}")
            per_class[c] += int(v)
    rows = sum(int(s["rows"]) for s in ordered)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": names,
        "request": request,
        "lineage": lineage,
        "shards": [
            {
                **{k: s[k] for k in ("shard", "path", "rows", "bytes", "sha256", "seed", "class_counts")},
                "uncompressed_bytes": int(s.get("uncompressed_bytes", 0)),
                **({"filter": s["filter"]} if s.get("filter") is not None else {}),
            }
            for s in ordered
        ],
        "totals": {
            "rows": rows,
            "shards": len(ordered),
            "bytes": sum(int(s["bytes"]) for s in ordered),
            "uncompressed_bytes": sum(int(s.get("uncompressed_bytes", 0)) for s in ordered),
            "per_class": per_class,
        },
        "duration_s": float(duration_s),
        "rows_per_s": rows / duration_s if duration_s > 0 else None,
    }
    if request.get("filter"):  # quality filter: acceptance per class, summed over shards
        from jobs.quality import summarize

        manifest["filter"] = summarize([s.get("filter") or {} for s in ordered], names)
    _delete_quietly(fs, join_path(base, SUCCESS))  # a re-finalize must not look committed half-way
    digest = write_manifest(base, manifest, filesystem=fs)
    write_card(base, manifest, filesystem=fs)
    mark_success(base, digest, filesystem=fs)
    return manifest


# --------------------------------------------------------------------------------------------------
# Verification and cleanup
# --------------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``verify_dataset`` found: ``problems`` is a list of {kind, path, detail}; ``ok`` if none."""

    output: str  # the dataset folder that was checked
    problems: list[dict[str, str]] = field(default_factory=list)  # one entry per problem found
    shards_checked: int = 0  # shard files that were opened and checked
    rows: int = 0  # rows counted in the Parquet footers of readable shards

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        """The distinct problem kinds (handy in tests and logs)."""
        return {p["kind"] for p in self.problems}

    def add(self, kind: str, path: str, detail: str) -> None:
        self.problems.append({"kind": kind, "path": path, "detail": detail})

    def __str__(self) -> str:
        if self.ok:
            return f"{self.output}: ok ({self.shards_checked} shards, {self.rows} rows)"
        lines = [f"{self.output}: {len(self.problems)} problem(s)"]
        lines += [f"  {p['kind']}: {p['path']}: {p['detail']}" for p in self.problems]
        return "\n".join(lines)


def _list_names(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=False))


def verify_dataset(
    output: str | os.PathLike, filesystem: pafs.FileSystem | None = None, *, check_hash: bool = True
) -> VerifyReport:
    """Check a dataset folder against its manifest; never raises for a damaged dataset.

    Problem kinds: missing_manifest, bad_manifest, missing_success, success_mismatch, missing_shard,
    extra_file, temp_file, size_mismatch, sha256_mismatch (skipped if ``check_hash`` is False),
    unreadable (e.g. truncated), row_count_mismatch, schema_mismatch, totals_mismatch.
    """
    fs, base = resolve_output(output, filesystem)
    report = VerifyReport(output=base)
    top = _list_names(fs, base)
    data_files = _list_names(fs, join_path(base, DATA_DIR))
    for info in top + data_files:
        if info.base_name.startswith(TEMP_PREFIX):
            report.add("temp_file", info.path, "leftover temporary file (run cleanup_temp)")
    try:
        raw_manifest = _read_bytes(fs, join_path(base, MANIFEST))
    except FileNotFoundError:
        report.add("missing_manifest", join_path(base, MANIFEST), "no manifest.json: the job did not finish")
        return report
    try:
        manifest = json.loads(raw_manifest)
        shards = manifest["shards"]
        classes = manifest["classes"]
        totals = manifest["totals"]
        for s in shards:
            (s["path"], int(s["rows"]), int(s["bytes"]), str(s["sha256"]))
        shard_schema(classes)
    except (ValueError, KeyError, TypeError) as e:
        report.add("bad_manifest", join_path(base, MANIFEST), f"unparsable manifest: {e!r}")
        return report
    try:
        success = _read_bytes(fs, join_path(base, SUCCESS)).decode().strip()
        if success and success != hashlib.sha256(raw_manifest).hexdigest():
            report.add(
                "success_mismatch",
                join_path(base, SUCCESS),
                "manifest.json changed after _SUCCESS was written",
            )
    except FileNotFoundError:
        report.add("missing_success", join_path(base, SUCCESS), "no _SUCCESS: the job did not commit")

    expected = {s["path"]: s for s in shards}
    for info in data_files:
        rel = join_path(DATA_DIR, info.base_name)
        if rel not in expected and not info.base_name.startswith(TEMP_PREFIX):
            report.add("extra_file", info.path, "not listed in manifest.json")
    on_disk = {join_path(DATA_DIR, i.base_name): i for i in data_files if i.type == pafs.FileType.File}
    want_schema = shard_schema(classes)
    rows_total = 0
    for rel, s in expected.items():
        path = join_path(base, rel)
        info = on_disk.get(rel)
        if info is None:
            report.add("missing_shard", path, f"shard {s.get('shard')} listed in manifest.json is missing")
            continue
        report.shards_checked += 1
        if info.size != s["bytes"]:
            report.add("size_mismatch", path, f"{info.size} bytes on disk, manifest says {s['bytes']}")
        if check_hash:
            digest = _file_sha256(fs, path)
            if digest != s["sha256"]:
                report.add(
                    "sha256_mismatch", path, f"sha256 {digest[:16]}..., manifest says {s['sha256'][:16]}..."
                )
        try:
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                num_rows, schema = pf.metadata.num_rows, pf.schema_arrow
        except Exception as e:  # noqa: BLE001 - any decode failure means the file is unusable
            report.add("unreadable", path, f"cannot read Parquet footer: {type(e).__name__}: {e}")
            continue
        report.rows += num_rows
        rows_total += int(s["rows"])
        if num_rows != s["rows"]:
            report.add("row_count_mismatch", path, f"{num_rows} rows in file, manifest says {s['rows']}")
        hf_meta = (schema.metadata or {}).get(b"huggingface")
        if (
            not schema.equals(want_schema, check_metadata=False)
            or hf_meta != want_schema.metadata[b"huggingface"]
        ):
            report.add("schema_mismatch", path, f"schema differs from shard_schema(classes): {schema}")
    if sum(int(s["rows"]) for s in shards) != totals.get("rows") or len(shards) != totals.get("shards"):
        report.add("totals_mismatch", join_path(base, MANIFEST), "totals do not match the shard list")
    return report


def cleanup_temp(
    output: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None, min_age_s: float = 0.0
) -> list[str]:
    """Delete leftover ``.tmp-*`` files in the dataset folder and ``data/``; returns the deleted paths.

    Do not run it while writers are active, or pass ``min_age_s`` larger than a shard's write time.
    """
    fs, base = resolve_output(output, filesystem)
    now = time.time()
    removed = []
    for info in _list_names(fs, base) + _list_names(fs, join_path(base, DATA_DIR)):
        if info.type != pafs.FileType.File or not info.base_name.startswith(TEMP_PREFIX):
            continue
        if min_age_s > 0 and info.mtime is not None and now - info.mtime.timestamp() < min_age_s:
            continue
        _delete_quietly(fs, info.path)
        removed.append(info.path)
    return removed


__all__ = [
    "CARD",
    "DEFAULT_SHARD_ROWS",
    "FORMAT_VERSION",
    "MANIFEST",
    "ROW_GROUP_ROWS",
    "SHARD_SCHEMA",
    "SUCCESS",
    "VerifyReport",
    "allocate_prefix",
    "build_shard_table",
    "cleanup_temp",
    "describe_shard",
    "encode_png",
    "encode_pngs",
    "finalize_dataset",
    "hf_features",
    "iter_shard_class_counts",
    "mark_success",
    "plan_shards",
    "read_manifest",
    "render_card",
    "resolve_output",
    "shard_class_counts",
    "shard_labels",
    "shard_path",
    "shard_schema",
    "shard_seed",
    "table_to_parquet_bytes",
    "verify_dataset",
    "write_card",
    "write_manifest",
    "write_shard",
    "write_shard_table",
]
