"""Tests for jobs.store.shards: PNG encoder, schema, planner, atomic writer, finalisation, readers, verify."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jobs.store import atomic, shards
from jobs.store.manifest import (
    cleanup_temp,
    finalize_dataset,
    mark_success,
    read_manifest,
    verify_dataset,
    write_manifest,
)
from jobs.store.png import encode_png, encode_pngs
from jobs.store.shards import (
    SHARD_SCHEMA,
    allocate_prefix,
    build_shard_table,
    iter_shard_class_counts,
    plan_shards,
    shard_class_counts,
    shard_labels,
    shard_schema,
    shard_seed,
    write_shard,
)

CLASSES = ["zero", "one", "two"]
MODEL = "digits-cvae:v3"

# ----------------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("size", [8, 28, 64])
@pytest.mark.parametrize("layout", ["hw", "hw1", "hw3"])
def test_png_round_trip_with_pil(size: int, layout: str) -> None:
    rng = np.random.default_rng(size)
    shape = {"hw": (size, size), "hw1": (size, size, 1), "hw3": (size, size, 3)}[layout]
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[0, 0] = 0  # make sure both extremes occur
    img[-1, -1] = 255
    decoded = Image.open(io.BytesIO(encode_png(img)))
    assert decoded.mode == ("RGB" if layout == "hw3" else "L")
    assert decoded.size == (size, size)
    np.testing.assert_array_equal(np.asarray(decoded).reshape(shape), img)


def test_png_non_square_and_batch_matches_single() -> None:
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (5, 7, 13, 3), dtype=np.uint8)  # (N, H, W, C)
    pngs = encode_pngs(batch)
    assert pngs == [encode_png(im) for im in batch]
    assert encode_pngs(batch, threads=2) == pngs  # thread pool: same bytes, same order
    for png, im in zip(pngs, batch, strict=True):
        decoded = Image.open(io.BytesIO(png))
        assert decoded.size == (13, 7)  # PIL: (W, H)
        np.testing.assert_array_equal(np.asarray(decoded), im)
    grey = rng.integers(0, 256, (3, 4, 6), dtype=np.uint8)  # (N, H, W)
    for png, im in zip(encode_pngs(grey), grey, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), im)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8), np.float32),
        np.zeros((8, 8, 2), np.uint8),
        np.zeros((8,), np.uint8),
        np.zeros((0, 8), np.uint8),
    ],
)
def test_png_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid"):
        encode_png(bad)


# -------------------------------------------------------------------------------------- schema


def test_schema_is_exactly_the_contract() -> None:
    schema = shard_schema(CLASSES)
    assert schema.names == ["image", "label", "label_name", "key", "model", "seed", "is_synthetic", "sha256"]
    image = schema.field("image").type
    assert image == pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    assert image.field("path").type == pa.string()  # typed, not null (REFERENCE pitfall)
    assert [schema.field(n).type for n in schema.names[1:]] == [
        pa.int64(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.int64(),
        pa.bool_(),
        pa.string(),
    ]
    assert schema.equals(SHARD_SCHEMA, check_metadata=False)
    meta = json.loads(schema.metadata[b"huggingface"])
    features = meta["info"]["features"]
    assert list(features) == schema.names
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": CLASSES, "_type": "ClassLabel"}
    assert features["label_name"] == {"dtype": "string", "_type": "Value"}
    assert features["seed"] == {"dtype": "int64", "_type": "Value"}
    assert features["is_synthetic"] == {"dtype": "bool", "_type": "Value"}


def test_hf_features_from_schema_matches_its_own_encoding() -> None:
    datasets = pytest.importorskip("datasets")
    schema = shard_schema(CLASSES)
    feats = datasets.Features.from_arrow_schema(schema)
    assert isinstance(feats["image"], datasets.Image)
    assert isinstance(feats["label"], datasets.ClassLabel) and feats["label"].names == CLASSES
    # Our metadata is exactly what datasets itself would write for these features.
    assert json.loads(feats.arrow_schema.metadata[b"huggingface"]) == json.loads(
        schema.metadata[b"huggingface"]
    )
    assert feats.arrow_schema.equals(schema, check_metadata=False)


def test_schema_rejects_bad_classes() -> None:
    with pytest.raises(ValueError, match="unique"):
        shard_schema(["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        shard_schema([])


# ------------------------------------------------------------------------------------- planner


def _check_plan(counts: list[int], shard_rows: int) -> list[np.ndarray]:
    total, c = sum(counts), len(counts)
    n = plan_shards(counts, shard_rows)
    assert n == -(-total // shard_rows)
    per_shard = list(iter_shard_class_counts(counts, shard_rows))
    assert len(per_shard) == n
    np.testing.assert_array_equal(np.sum(per_shard, axis=0), counts)  # exact per class
    sizes = [int(s.sum()) for s in per_shard]
    assert sizes[:-1] == [shard_rows] * (n - 1)
    assert sizes[-1] == total - shard_rows * (n - 1)
    assert all((s >= 0).all() for s in per_shard)
    share = np.asarray(counts) / total
    for k, s in enumerate(per_shard):
        np.testing.assert_array_equal(s, shard_class_counts(counts, shard_rows, k))  # computable alone
        # Proven bound: each prefix is within 1/2 + C n_c / (2T) of its quota, so a shard within twice that.
        assert (np.abs(s - sizes[k] * share) <= 1 + c * share + 1e-9).all(), (k, s, sizes[k] * share)
    return per_shard


def _check_monotone(counts: list[int], ts: list[int]) -> None:
    for t in ts:
        a, b = allocate_prefix(counts, t), allocate_prefix(counts, t + 1)
        step = b - a
        assert step.sum() == 1 and step.min() >= 0, (t, a, b)  # one more row, no class loses one


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 3000), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    shard_rows=st.integers(1, 1500),
    data=st.data(),
)
def test_plan_exact_sizes_even_and_monotone(counts: list[int], shard_rows: int, data: st.DataObject) -> None:
    total = sum(counts)
    if total // shard_rows > 400:  # keep the example fast; tiny shard_rows are covered below
        shard_rows = total // 400 + 1
    _check_plan(counts, shard_rows)
    ts = data.draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=50))
    _check_monotone(counts, ts)
    np.testing.assert_array_equal(allocate_prefix(counts, total), counts)
    assert allocate_prefix(counts, 0).sum() == 0


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8).filter(lambda c: sum(c) > 0))
def test_allocation_monotone_at_every_position(counts: list[int]) -> None:
    _check_monotone(counts, list(range(sum(counts))))
    _check_plan(counts, 1)
    _check_plan(counts, 7)


def test_plan_sparse_imbalanced_example() -> None:
    counts = [0] * 10
    counts[0], counts[3], counts[9] = 1, 10001, 250
    per_shard = _check_plan(counts, 1000)
    assert len(per_shard) == 11
    assert [int(s.sum()) for s in per_shard] == [1000] * 10 + [252]
    ones = [k for k, s in enumerate(per_shard) if s[0]]
    assert len(ones) == 1 and 1 <= ones[0] <= 9  # the single class-0 row sits mid-dataset, not first
    assert all(975 <= s[3] <= 976 and 24 <= s[9] <= 25 for s in per_shard[:10])
    assert (per_shard[-1][[3, 9]] == [246, 6]).all()
    _check_monotone(counts, list(range(0, 10252, 37)))


def test_plan_balanced_classes_are_interleaved_not_class_major() -> None:
    per_shard = _check_plan([1000] * 10, 1000)
    assert all((s == 100).all() for s in per_shard)


def test_plan_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="sum to 0"):
        plan_shards([0, 0], 10)
    with pytest.raises(ValueError, match="integers >= 0"):
        plan_shards([3, -1], 10)
    with pytest.raises(ValueError, match="shard_rows"):
        plan_shards([3], 0)
    with pytest.raises(ValueError, match=r"valid: 0\.\.1"):
        shard_class_counts([3, 4], 5, 2)


def test_shard_seed_and_labels_are_deterministic() -> None:
    s0 = shard_seed(42, 0)
    assert s0 == shard_seed(42, 0)
    expected = int(np.random.SeedSequence([42, 0]).generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)
    assert s0 == expected
    seeds = {shard_seed(42, k) for k in range(100)} | {shard_seed(43, 0)}
    assert len(seeds) == 101 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="job_seed"):
        shard_seed(-1, 0)

    counts = np.array([5, 0, 7, 3])
    labels = shard_labels(counts, s0)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=4), counts)
    np.testing.assert_array_equal(labels, shard_labels(counts, s0))
    assert not np.array_equal(labels, np.sort(labels))  # permuted
    assert not np.array_equal(labels, shard_labels(counts, shard_seed(42, 1)))


# -------------------------------------------------------------------------------------- writer


def _shard_inputs(k: int, class_counts, c: int = 1, size: int = 8):
    seed = shard_seed(7, k)
    labels = shard_labels(class_counts, seed)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), size, size, c), dtype=np.uint8)  # (N, H, W, C)
    return encode_pngs(images), labels, seed, images


def test_write_shard_contents_and_info(tmp_path: Path) -> None:
    pngs, labels, seed, images = _shard_inputs(2, [4, 3, 5])
    info = write_shard(tmp_path, 2, 5, pngs, labels, CLASSES, MODEL, seed)
    path = tmp_path / "data" / "train-00002-of-00005.parquet"
    data = path.read_bytes()
    assert info["path"] == "data/train-00002-of-00005.parquet"
    assert info == {
        "shard": 2,
        "path": "data/train-00002-of-00005.parquet",
        "rows": 12,
        "bytes": len(data),
        "uncompressed_bytes": info["uncompressed_bytes"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "class_counts": {"zero": 4, "one": 3, "two": 5},
        "seed": seed,
    }
    assert info["uncompressed_bytes"] > 0
    assert shards.describe_shard(tmp_path, 2, 5) == info  # re-described from disk, e.g. on resume
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [path.name]  # no temp left
    table = pq.read_table(path)
    assert table.schema.equals(shard_schema(CLASSES), check_metadata=True)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [f"00002-{i:07d}" for i in range(12)]
    assert [r["label"] for r in rows] == labels.tolist()
    assert [r["label_name"] for r in rows] == [CLASSES[i] for i in labels]
    assert {r["model"] for r in rows} == {MODEL} and {r["seed"] for r in rows} == {seed}
    assert all(r["is_synthetic"] for r in rows)
    for r, png, im in zip(rows, pngs, images, strict=True):
        assert r["image"] == {"bytes": png, "path": None}
        assert r["sha256"] == hashlib.sha256(png).hexdigest()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))), im[..., 0])
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_describe_shard_rejects_missing_and_damaged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-00000-of-00002"):
        shards.describe_shard(tmp_path, 0, 2)
    pngs, labels, seed, _ = _shard_inputs(0, [2, 2, 2])
    write_shard(tmp_path, 0, 2, pngs, labels, CLASSES, MODEL, seed)
    path = tmp_path / "data" / "train-00000-of-00002.parquet"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="unreadable"):
        shards.describe_shard(tmp_path, 0, 2)


def test_row_groups_at_most_1000_rows() -> None:
    pngs, labels, seed, _ = _shard_inputs(0, [900, 900, 700])
    buf = shards.table_to_parquet_bytes(build_shard_table(pngs, labels, CLASSES, MODEL, seed, 0))
    meta = pq.ParquetFile(pa.BufferReader(buf)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]


def test_write_shard_is_byte_identical_when_regenerated(tmp_path: Path) -> None:
    a = write_shard(tmp_path / "a", 0, 1, *_shard_inputs(0, [3, 3, 3])[:2], CLASSES, MODEL, shard_seed(7, 0))
    b = write_shard(tmp_path / "b", 0, 1, *_shard_inputs(0, [3, 3, 3])[:2], CLASSES, MODEL, shard_seed(7, 0))
    again = write_shard(
        tmp_path / "a", 0, 1, *_shard_inputs(0, [3, 3, 3])[:2], CLASSES, MODEL, shard_seed(7, 0)
    )
    assert a["sha256"] == b["sha256"] == again["sha256"]
    name = "data/train-00000-of-00001.parquet"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = write_shard(
        tmp_path / "c", 0, 1, *_shard_inputs(1, [3, 3, 3])[:2], CLASSES, MODEL, shard_seed(7, 1)
    )
    assert other["sha256"] != a["sha256"]


def test_write_shard_table_matches_write_shard_and_rejects_foreign_tables(tmp_path: Path) -> None:
    pngs, labels, seed, _ = _shard_inputs(1, [3, 4, 2])
    a = write_shard(tmp_path / "a", 1, 3, pngs, labels, CLASSES, MODEL, seed)
    table = build_shard_table(pngs, labels, CLASSES, MODEL, seed, 1)
    b = shards.write_shard_table(tmp_path / "b", 1, 3, table)
    assert a == b
    name = "data/train-00001-of-00003.parquet"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError, match="shard schema"):
        shards.write_shard_table(tmp_path / "c", 0, 1, pa.table({"x": [1]}))
    mixed = pa.concat_tables([table, build_shard_table(pngs, labels, CLASSES, MODEL, seed + 1, 1)])
    with pytest.raises(ValueError, match="exactly one shard seed"):
        shards.write_shard_table(tmp_path / "c", 0, 1, mixed)
    with pytest.raises(ValueError, match=r"valid: 0\.\.0"):
        shards.write_shard_table(tmp_path / "c", 1, 1, table)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("shard", [0, 7, 99_999, 123_456])
def test_row_keys_match_their_plain_python_form(shard: int) -> None:
    n = 1234
    assert shards._row_keys(shard, n).to_pylist() == [f"{shard:05d}-{row:07d}" for row in range(n)]
    assert shards._row_keys(shard, 0).to_pylist() == []


def test_write_shard_rejects_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    pngs, labels, seed, _ = _shard_inputs(0, [2, 2, 2])
    with pytest.raises(ValueError, match="one label per image"):
        write_shard(tmp_path, 0, 1, pngs[:-1], labels, CLASSES, MODEL, seed)
    with pytest.raises(ValueError, match=r"valid: integers 0\.\.1"):
        write_shard(tmp_path, 0, 1, pngs, labels, CLASSES[:2], MODEL, seed)
    with pytest.raises(ValueError, match="name:vK"):
        write_shard(tmp_path, 0, 1, pngs, labels, CLASSES, "digits", seed)
    with pytest.raises(ValueError, match=r"valid: 0\.\.1"):
        write_shard(tmp_path, 2, 2, pngs, labels, CLASSES, MODEL, seed)
    assert list(tmp_path.iterdir()) == []


def _local_fsspec_fs(fail_move: bool = False) -> pafs.FileSystem:
    """A non-native pyarrow filesystem (PyFileSystem over fsspec's local one), optionally failing moves."""
    fsspec = pytest.importorskip("fsspec")

    class Handler(pafs.FSSpecHandler):
        def move(self, src: str, dest: str) -> None:
            if fail_move:
                raise OSError("simulated upload failure")
            super().move(src, dest)

    return pafs.PyFileSystem(Handler(fsspec.filesystem("file")))


def test_failed_move_leaves_no_temp_and_no_final_file(tmp_path: Path) -> None:
    pngs, labels, seed, _ = _shard_inputs(0, [2, 2, 2])
    fs = _local_fsspec_fs(fail_move=True)
    with pytest.raises(OSError, match="simulated"):
        write_shard(str(tmp_path), 0, 1, pngs, labels, CLASSES, MODEL, seed, filesystem=fs)
    assert list((tmp_path / "data").iterdir()) == []


def test_failed_rename_on_local_disk_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def boom(src, dst):  # the commit's rename fails
        seen.append(src)
        assert Path(src).stat().st_size > 0  # the temp file was fully written ...
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    pngs, labels, seed, _ = _shard_inputs(0, [2, 2, 2])
    with pytest.raises(OSError, match="disk full"):
        write_shard(tmp_path, 0, 3, pngs, labels, CLASSES, MODEL, seed)
    assert len(seen) == 1 and Path(seen[0]).name.startswith(".tmp-train-00000-of-00003.parquet.")
    assert list((tmp_path / "data").iterdir()) == []  # ... and removed again


# ----------------------------------------------------------------------------- finalized dataset

COUNTS = [7, 5, 4]
SHARD_ROWS = 6


def _make_dataset(out: Path, filesystem: pafs.FileSystem | None = None) -> dict:
    n = plan_shards(COUNTS, SHARD_ROWS)
    infos = []
    for k, cc in enumerate(iter_shard_class_counts(COUNTS, SHARD_ROWS)):
        pngs, labels, seed, _ = _shard_inputs(k, cc, c=3)
        infos.append(write_shard(str(out), k, n, pngs, labels, CLASSES, MODEL, seed, filesystem=filesystem))
    request = {"model": "digits-cvae", "counts": COUNTS, "seed": 7, "shard_rows": SHARD_ROWS}
    lineage = {
        "model": "digits-cvae",
        "version": 3,
        "checkpoint_sha256": "ab" * 32,
        "train_fingerprint": "cd" * 8,
    }
    return finalize_dataset(str(out), request, lineage, infos[::-1], CLASSES, 2.0, filesystem=filesystem)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "job-1"
    _make_dataset(out)
    return out


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "job-1"
    shutil.copytree(dataset, dst)
    return dst


def test_finalize_writes_manifest_card_success(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["README.md", "_SUCCESS", "data", "manifest.json"]
    names = sorted(p.name for p in (dataset / "data").iterdir())
    assert names == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    m = read_manifest(dataset)
    assert m["format_version"] == shards.FORMAT_VERSION
    assert [s["shard"] for s in m["shards"]] == [0, 1, 2]  # sorted although given reversed
    assert m["totals"]["rows"] == 16 and m["totals"]["shards"] == 3
    assert m["totals"]["per_class"] == {"zero": 7, "one": 5, "two": 4}
    assert m["totals"]["bytes"] == sum((dataset / s["path"]).stat().st_size for s in m["shards"])
    assert [s["rows"] for s in m["shards"]] == [6, 6, 4]
    assert m["rows_per_s"] == pytest.approx(8.0)
    assert m["lineage"]["checkpoint_sha256"] == "ab" * 32 and m["request"]["counts"] == COUNTS
    assert m["created_at"].endswith("+00:00")
    manifest_sha = hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()
    assert (dataset / "_SUCCESS").read_text().strip() == manifest_sha


def test_finalize_order_is_manifest_card_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order = []
    real = atomic.put_atomic

    def record(fs, path, data):
        order.append(path.rsplit("/", 1)[1])
        return real(fs, path, data)

    monkeypatch.setattr(atomic, "put_atomic", record)
    _make_dataset(tmp_path / "out")
    assert order[-3:] == ["manifest.json", "README.md", "_SUCCESS"]
    assert all(name.endswith(".parquet") for name in order[:-3])


def test_finalize_refuses_gaps_duplicates_and_missing_files(tmp_path: Path) -> None:
    infos = []
    for k, cc in enumerate(iter_shard_class_counts(COUNTS, SHARD_ROWS)):
        pngs, labels, seed, _ = _shard_inputs(k, cc)
        infos.append(write_shard(tmp_path, k, 3, pngs, labels, CLASSES, MODEL, seed))
    args = ({}, {}, CLASSES, 1.0)
    with pytest.raises(ValueError, match=r"gaps \[1\]"):
        finalize_dataset(tmp_path, {}, {}, [infos[0], infos[2]], CLASSES, 1.0)
    with pytest.raises(ValueError, match=r"duplicates \[1\]"):
        finalize_dataset(tmp_path, {}, {}, [infos[0], infos[1], infos[1], infos[2]], CLASSES, 1.0)
    with pytest.raises(ValueError, match="empty"):
        finalize_dataset(tmp_path, args[0], args[1], [], CLASSES, 1.0)
    (tmp_path / infos[1]["path"]).unlink()
    with pytest.raises(FileNotFoundError, match="train-00001-of-00003"):
        finalize_dataset(tmp_path, {}, {}, infos, CLASSES, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing committed


def test_read_back_with_pyarrow_pandas_duckdb(dataset: Path) -> None:
    table = pq.read_table(dataset / "data")
    assert table.num_rows == 16
    assert table.schema.field("image").type.field("path").type == pa.string()
    df = table.to_pandas()
    assert df["label"].value_counts().sort_index().tolist() == COUNTS
    assert df["key"].is_unique and df["sha256"].is_unique
    duckdb = pytest.importorskip("duckdb")
    glob = str(dataset / "data" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT label, count(*) FROM read_parquet('{glob}') GROUP BY label ORDER BY label"
    ).fetchall()
    assert rows == [(0, 7), (1, 5), (2, 4)]


def _hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var, val in {
        "HF_HOME": tmp_path / "hf",
        "HF_DATASETS_CACHE": tmp_path / "hf" / "datasets",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(var, str(val))
    return pytest.importorskip("datasets")


def test_read_back_with_hf_datasets(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = _hf_offline(tmp_path, monkeypatch)
    cache = str(tmp_path / "hf" / "datasets")
    ds = datasets.load_dataset(
        "parquet", data_files=str(dataset / "data" / "*.parquet"), split="train", cache_dir=cache
    )
    assert len(ds) == 16
    assert ds.features["label"].names == CLASSES
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[0]
    assert (
        isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (8, 8)
    )
    assert row["label_name"] == CLASSES[row["label"]]
    assert sorted(np.bincount(ds["label"]).tolist()) == sorted(COUNTS)

    # The folder itself is self-describing through README.md's YAML (configs + dataset_info).
    folder = datasets.load_dataset(str(dataset), split="train", cache_dir=cache)
    assert len(folder) == 16 and folder.features["label"].names == CLASSES


def test_card_yaml_parses_as_hf_dataset_info(dataset: Path) -> None:
    datasets = pytest.importorskip("datasets")
    yaml = pytest.importorskip("yaml")
    text = (dataset / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    info = datasets.DatasetInfo._from_yaml_dict(header["dataset_info"])
    assert info.features["label"].names == CLASSES
    assert info.splits["train"].num_examples == 16  # a malformed splits entry would raise
    assert info.splits["train"].num_bytes == read_manifest(dataset)["totals"]["uncompressed_bytes"] > 0
    assert "ab" * 32 in text and "digits-cvae" in text  # lineage


# -------------------------------------------------------------------------------------- verify


def test_verify_passes_on_clean_data(dataset: Path) -> None:
    report = verify_dataset(dataset)
    assert report.ok, str(report)
    assert report.shards_checked == 3 and report.rows == 16


def test_verify_catches_flipped_byte(copy: Path) -> None:
    path = copy / "data" / "train-00001-of-00003.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_dataset(copy)
    assert not report.ok
    assert "sha256_mismatch" in report.kinds() and "size_mismatch" not in report.kinds()
    assert all(p["path"].endswith("train-00001-of-00003.parquet") for p in report.problems)
    assert verify_dataset(copy, check_hash=False).kinds() <= {"unreadable"}  # quick mode skips hashing


def test_verify_catches_deleted_shard(copy: Path) -> None:
    (copy / "data" / "train-00002-of-00003.parquet").unlink()
    report = verify_dataset(copy)
    assert report.kinds() == {"missing_shard"} and report.shards_checked == 2


def test_verify_catches_extra_file(copy: Path) -> None:
    shutil.copy(
        copy / "data" / "train-00000-of-00003.parquet", copy / "data" / "train-00003-of-00004.parquet"
    )
    report = verify_dataset(copy)
    assert report.kinds() == {"extra_file"}
    assert report.problems[0]["path"].endswith("train-00003-of-00004.parquet")


def test_verify_catches_truncated_file(copy: Path) -> None:
    path = copy / "data" / "train-00000-of-00003.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    report = verify_dataset(copy)
    assert {"size_mismatch", "sha256_mismatch", "unreadable"} <= report.kinds()


def test_verify_catches_row_count_and_missing_markers(copy: Path) -> None:
    m = read_manifest(copy)
    m["shards"][0]["rows"] += 1
    digest = write_manifest(copy, m)
    mark_success(copy, digest)
    assert verify_dataset(copy).kinds() == {"row_count_mismatch", "totals_mismatch"}

    (copy / "manifest.json").write_text(json.dumps(read_manifest(copy)))  # edited after _SUCCESS
    assert "success_mismatch" in verify_dataset(copy).kinds()
    (copy / "_SUCCESS").unlink()
    assert "missing_success" in verify_dataset(copy).kinds()
    (copy / "manifest.json").unlink()
    assert verify_dataset(copy).kinds() == {"missing_manifest"}
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(copy)


def test_verify_reports_and_cleanup_removes_temp_files(copy: Path) -> None:
    tmp = copy / "data" / ".tmp-train-00001-of-00003.parquet.0123abcd"
    tmp.write_bytes(b"partial")
    (copy / ".tmp-manifest.json.feed").write_bytes(b"{")
    report = verify_dataset(copy)
    assert report.kinds() == {"temp_file"} and len(report.problems) == 2
    assert cleanup_temp(copy, min_age_s=3600) == []  # too fresh: may belong to a live writer
    removed = cleanup_temp(copy)
    assert sorted(Path(p).name for p in removed) == [".tmp-manifest.json.feed", tmp.name]
    assert verify_dataset(copy).ok


def test_whole_flow_through_a_non_native_filesystem(tmp_path: Path) -> None:
    fs = _local_fsspec_fs()
    manifest = _make_dataset(tmp_path / "out", filesystem=fs)
    assert manifest["totals"]["rows"] == 16
    assert verify_dataset(str(tmp_path / "out"), filesystem=fs).ok
    assert verify_dataset(f"file://{tmp_path / 'out'}").ok  # URI with a scheme -> FileSystem.from_uri


def test_verify_reports_a_malformed_manifest_without_raising(copy: Path) -> None:
    (copy / "manifest.json").write_text(
        '{"shards": [{"path": "data/x.parquet"}], "classes": [], "totals": {}}'
    )
    report = verify_dataset(copy)
    assert report.kinds() == {"bad_manifest"} and not report.ok
    assert "bad_manifest" in str(report)
