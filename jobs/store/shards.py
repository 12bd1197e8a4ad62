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
    assert verify_dataset(out).ok"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.store import atomic, location
from jobs.store.atomic import join_path
from jobs.store.location import validate_name

FORMAT_VERSION = 1


SPLIT = "train"


DATA_DIR = "data"


MANIFEST = "manifest.json"


CARD = "README.md"


SUCCESS = "_SUCCESS"


TEMP_PREFIX = atomic.TEMP_PREFIX  # temporary names (".tmp-..."), never committed


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


def validate_classes(classes: Sequence[str]) -> list[str]:
    names = list(classes)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"classes {names!r} invalid; valid: a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError(f"classes {names!r} contain duplicates; valid: unique names")
    return names


def hf_features(classes: Sequence[str]) -> dict[str, Any]:
    """The Hugging Face ``datasets`` feature JSON for the shard columns (``Features.to_dict()`` form)."""
    names = validate_classes(classes)
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
    output: str | os.PathLike | location.Location, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for ``output``: a local path, a URI or a ``Location``.

    With an explicit ``filesystem``, ``output`` is a path inside it (a ``scheme://`` prefix is dropped).
    """
    if filesystem is not None:
        raw = output.path if isinstance(output, location.Location) else os.fspath(output)
        if "://" in raw:
            raw = raw.split("://", 1)[1]
        if isinstance(filesystem, pafs.LocalFileSystem):
            raw = os.path.abspath(raw)
        return filesystem, raw.rstrip("/") or "/"
    loc = location.location(output)
    return loc.fs, loc.path.rstrip("/") or "/"


def shard_path(shard: int, num_shards: int) -> str:
    """The shard's path relative to the dataset folder: ``data/train-{i:05d}-of-{n:05d}.parquet``."""
    return f"{DATA_DIR}/{SPLIT}-{shard:05d}-of-{num_shards:05d}.parquet"


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
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
    names = validate_classes(classes)
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
    names = validate_classes(classes)
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
    atomic.put_atomic(fs, join_path(base, rel), buf)
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
    data = atomic.read_bytes(fs, join_path(base, rel))
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
