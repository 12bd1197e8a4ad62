"""jobs.store.loader: ShardStream (exactly-once split, shuffling, decoding), AugmentedDataset, Ray recipe.

Datasets are written with jobs.store.shards directly (random uint8 images); no Ray, no models.
Pandas / DuckDB read-back of the same format is covered by tests/jobs/test_shards.py.
"""

from __future__ import annotations

import io
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from jobs.data.images import ImageDataset
from jobs.data.spec import load_dataset
from jobs.store.loader import ShardStream, ray_data_decode
from jobs.store.manifest import finalize_dataset
from jobs.store.mixing import AugmentedDataset
from jobs.store.png import decode_png, encode_pngs
from jobs.store.reading import resolve_rank
from jobs.store.shards import build_shard_table, write_shard

CLASSES = ["zero", "one", "two"]
MODEL = "digits-cvae:v1"


def make_dataset(
    out: Path,
    shard_class_counts: list[list[int]],
    *,
    channels: int = 1,
    size: int = 8,
    finalize: bool = True,
) -> dict[str, np.ndarray]:
    """Write shards (shard k holds shard_class_counts[k][c] rows of class c, shuffled); return key -> data."""
    n, infos, images, labels = len(shard_class_counts), [], {}, {}
    for k, counts in enumerate(shard_class_counts):
        rng = np.random.default_rng(k)
        lab = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        shape = (len(lab), size, size) if channels == 1 else (len(lab), size, size, channels)
        imgs = rng.integers(0, 256, shape, dtype=np.uint8)
        infos.append(write_shard(out, k, n, encode_pngs(imgs), lab, CLASSES, MODEL, 100 + k))
        for row in range(len(lab)):
            key = f"{k:05d}-{row:07d}"
            images[key] = imgs[row].reshape(size, size, channels).transpose(2, 0, 1)  # (C, H, W)
            labels[key] = int(lab[row])
    if finalize:
        request = {"job_id": out.name, "model": "digits-cvae"}
        finalize_dataset(out, request, {"model": MODEL}, infos, CLASSES, 1.0)
    return {"images": images, "labels": labels}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """5 shards x 2500 rows = 15 row groups (1000, 1000, 500 per shard): not a multiple of 4 slots."""
    out = tmp_path_factory.mktemp("big") / "job-big"
    return out, make_dataset(out, [[900, 800, 800]] * 5)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rgb") / "job-rgb"
    return out, make_dataset(out, [[10, 10, 10], [5, 3, 2]], channels=3, size=16)


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """3,700 synthetic 8x8 grey rows: 3 shards, 5 row groups."""
    out = tmp_path_factory.mktemp("syn") / "job-syn"
    return out, make_dataset(out, [[500, 500, 500], [500, 500, 500], [300, 300, 100]])


def _real(counts: list[int], size: int = 8, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.permutation(np.repeat(np.arange(len(counts)), counts)))
    images = torch.from_numpy(rng.uniform(-1, 1, (len(labels), 1, size, size)).astype(np.float32))
    return ImageDataset(images=images, labels=labels, classes=tuple(CLASSES), spec="test", split="train")


def _rows(dataset, num_workers: int = 0) -> list[dict]:
    """Every sample through a DataLoader (batched: one IPC message per 500 rows, not per row)."""
    out = []
    for batch in DataLoader(dataset, batch_size=500, num_workers=num_workers):
        n = len(batch["key"])
        cols = {k: v.tolist() if isinstance(v, torch.Tensor) and v.ndim == 1 else v for k, v in batch.items()}
        out += [{k: v[i] for k, v in cols.items()} for i in range(n)]
    return out


def _keys(dataset, num_workers: int = 0) -> list[str]:
    return [row["key"] for row in _rows(dataset, num_workers)]


# ------------------------------------------------------------------------------- exactly once


def test_every_row_exactly_once_over_2_ranks_x_2_workers(big: tuple[Path, dict]) -> None:
    folder, truth = big
    streams = [ShardStream(folder, return_key=True, rank=r, world_size=2) for r in (0, 1)]
    assert streams[0].num_units == 15 and streams[0].num_rows == 12_500
    per_rank = []
    for s in streams:
        rows = _rows(s, num_workers=2)
        per_rank.append([r["key"] for r in rows])
        assert len(rows) == len(s)  # __len__ is this rank's share, whatever its worker count
        for r in rows[:50]:  # decoded values and labels match what was written
            np.testing.assert_array_equal(
                ((r["image"] + 1) * 127.5).round().numpy(), truth["images"][r["key"]]
            )
            assert r["label"] == truth["labels"][r["key"]]
    keys = per_rank[0] + per_rank[1]
    assert len(keys) == 12_500 and set(keys) == set(truth["labels"])  # union = all, no duplicates
    # round-robin over (rank, worker) slots: 15 units -> ranks get 8 and 7 units
    assert sorted(len(k) for k in per_rank) == [6000, 6500]


@pytest.mark.parametrize("shuffle_buffer", [0, 1, 300])
def test_exactly_once_per_slot_plan_and_with_shuffling(big: tuple[Path, dict], shuffle_buffer: int) -> None:
    folder, truth = big
    seen: list[str] = []
    for rank in (0, 1):
        s = ShardStream(folder, columns=["key"], decode=False, shuffle_buffer=shuffle_buffer, seed=3,
                        rank=rank, world_size=2)  # fmt: skip
        s.set_epoch(2)
        units = [s.plan(w, 2) for w in (0, 1)]
        assert len(units[0]) + len(units[1]) in (7, 8)
        seen += _keys(s, num_workers=2)
    assert len(seen) == len(set(seen)) == 12_500 and set(seen) == set(truth["labels"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_even_mode_gives_every_rank_the_same_count(big: tuple[Path, dict], world_size: int) -> None:
    folder, _ = big
    seen = []
    for rank in range(world_size):
        s = ShardStream(folder, columns=["key"], decode=False, shuffle_buffer=1, even=True,
                        rank=rank, world_size=world_size)  # fmt: skip
        keys = _keys(s, num_workers=2)
        assert len(keys) == len(s) == 12_500 // world_size
        seen += keys
    assert len(seen) == len(set(seen)) == world_size * (12_500 // world_size)  # < world_size rows skipped


# ----------------------------------------------------------------------------------- shuffling


def test_shuffle_is_deterministic_per_seed_and_epoch(big: tuple[Path, dict]) -> None:
    folder, truth = big
    plain = [r["key"] for r in ShardStream(folder, columns=["key"], decode=False, rank=0, world_size=1)]
    assert plain == sorted(truth["labels"])  # no shuffle: file order, row order
    s = ShardStream(folder, columns=["key"], decode=False, shuffle_buffer=500, seed=7, rank=0, world_size=1)
    orders = {}
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        orders.setdefault(epoch, []).append([r["key"] for r in s])
    assert orders[0][0] == orders[0][1]  # same seed + epoch -> same order
    assert orders[0][0] != orders[1][0]  # another epoch -> another order ...
    for order in (orders[0][0], orders[1][0]):
        assert sorted(order) == plain  # ... still every row exactly once
    other = ShardStream(
        folder, columns=["key"], decode=False, shuffle_buffer=500, seed=8, rank=0, world_size=1
    )
    assert [r["key"] for r in other] != orders[0][0]
    # rows are mixed inside and across row groups: few neighbours are consecutive rows of one group
    first = orders[0][0][:1000]
    group = [(k[:5], int(k[6:]) // 1000) for k in first]
    switches = sum(a != b for a, b in zip(group, group[1:], strict=False))
    assert len(set(group)) >= 2 and switches > 100  # the buffer interleaves row groups
    consecutive = sum(
        a[:5] == b[:5] and int(b[6:]) == int(a[6:]) + 1 for a, b in zip(first, first[1:], strict=False)
    )
    assert consecutive < 20


# -------------------------------------------------------------------------------- decode / input


def test_decode_grey_and_rgb_shapes_dtypes_and_values(big: tuple[Path, dict], rgb: tuple[Path, dict]) -> None:
    for (folder, truth), shape in ((big, (1, 8, 8)), (rgb, (3, 16, 16))):
        rows = list(ShardStream(folder, return_key=True))
        assert all(tuple(r["image"].shape) == shape and r["image"].dtype == torch.float32 for r in rows[:20])
        stack = torch.stack([r["image"] for r in rows])
        assert float(stack.min()) == -1.0 and float(stack.max()) == 1.0  # 0 and 255 occur
        raw = list(ShardStream(folder, return_key=True, image_dtype="uint8"))
        for r in raw[:100]:
            assert r["image"].dtype == torch.uint8 and tuple(r["image"].shape) == shape
            np.testing.assert_array_equal(r["image"].numpy(), truth["images"][r["key"]])
    # the same float values as jobs.data's parquet reader (x / 127.5 - 1)
    folder, _ = rgb
    ds = load_dataset(f"parquet:{folder}")
    images, labels = zip(*ShardStream(folder), strict=True)
    assert torch.equal(torch.stack(images), ds.images) and list(labels) == ds.labels.tolist()


def test_decode_png_falls_back_to_pil_for_other_pngs() -> None:
    rng = np.random.default_rng(0)
    grey = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))  # smooth: PIL picks non-zero filters

    def png(img: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG", **kw)
        return buf.getvalue()

    np.testing.assert_array_equal(decode_png(png(Image.fromarray(grey), optimize=True))[..., 0], grey)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(png(Image.fromarray(rgba, "RGBA"))), rgba[..., :3])
    wide = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    np.testing.assert_array_equal(
        decode_png(png(Image.fromarray(wide)))[..., 0], (wide >> 8).astype(np.uint8)
    )
    pal = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).quantize(4)
    np.testing.assert_array_equal(decode_png(png(pal)), np.asarray(pal.convert("RGB")))
    with pytest.raises(ValueError, match="row 3: not a readable PNG"):
        decode_png(b"\x89PNG\r\n\x1a\nbroken", "row 3")


def test_damaged_image_names_the_file_and_row(tmp_path: Path) -> None:
    pngs = encode_pngs(np.zeros((3, 8, 8), dtype=np.uint8))
    pngs[1] = b"not a png"
    write_shard(tmp_path, 0, 1, pngs, np.zeros(3, dtype=np.int64), CLASSES, MODEL, 1)
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet row group 0 row 1: not a readable"):
        list(ShardStream(tmp_path, allow_incomplete=True))


def test_transform_is_applied_to_the_decoded_tensor(rgb: tuple[Path, dict]) -> None:
    folder, truth = rgb

    def flip(x: torch.Tensor) -> torch.Tensor:  # what torchvision's v2.RandomHorizontalFlip(p=1) does
        return torch.flip(x, dims=[-1])

    rows = list(ShardStream(folder, transform=flip, return_key=True, image_dtype="uint8"))
    assert len(rows) == 40
    for r in rows:
        np.testing.assert_array_equal(r["image"].numpy(), truth["images"][r["key"]][..., ::-1])
    scaled = list(ShardStream(folder, transform=lambda x: x * 0 + 5))
    assert all(bool((img == 5).all()) for img, _ in scaled)
    as_bytes = list(ShardStream(folder, decode=False, transform=len))  # decode=False: transform sees bytes
    assert all(isinstance(n, int) and n > 100 for n, _ in as_bytes)


def test_refuses_incomplete_folder_unless_allowed(tmp_path: Path) -> None:
    out = tmp_path / "job-running"
    truth = make_dataset(out, [[4, 4, 4], [3, 3, 3]], finalize=False)
    (out / "data" / ".tmp-train-00002-of-00003.parquet.abc").write_bytes(b"partial")
    with pytest.raises(ValueError, match=r"no _SUCCESS.*allow_incomplete=True"):
        ShardStream(out)
    keys = [r["key"] for r in ShardStream(out, allow_incomplete=True, return_key=True)]
    assert sorted(keys) == sorted(truth["labels"])  # committed shards only, temp file ignored
    with pytest.raises(FileNotFoundError, match="no dataset or Parquet file"):
        ShardStream(tmp_path / "nope")


def test_explicit_files_uris_columns_and_class_checks(big: tuple[Path, dict], rgb: tuple[Path, dict]) -> None:
    folder, truth = rgb
    files = sorted(str(p) for p in (folder / "data").glob("*.parquet"))
    s = ShardStream(files[::-1], columns=["key", "seed", "model"])
    rows = list(s)
    assert s.classes == CLASSES and len(rows) == 40 and rows[0]["seed"] == 101 and rows[0]["model"] == MODEL
    uri = ShardStream(f"file://{folder}", filesystem=None)
    assert uri.num_rows == 40
    local = ShardStream(str(folder), filesystem=pafs.LocalFileSystem())
    assert local.num_rows == 40
    with pytest.raises(ValueError, match=r"unknown columns \['nope'\]; valid: \['image', 'label'"):
        ShardStream(folder, columns=["nope"])
    with pytest.raises(ValueError, match="image_dtype 'half' invalid; valid: float, uint8"):
        ShardStream(folder, image_dtype="half")
    # two datasets with different class names cannot be streamed together
    other = big[0].parent / "other"
    if not other.exists():
        pngs = encode_pngs(np.zeros((2, 8, 8), dtype=np.uint8))
        write_shard(other, 0, 1, pngs, np.array([0, 1]), ["cat", "dog"], MODEL, 1)
    with pytest.raises(ValueError, match=r"class names differ.*\['cat', 'dog'\]"):
        ShardStream([files[0], str(other / "data" / "train-00000-of-00001.parquet")])


def test_rank_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (2, 4)
    assert resolve_rank(1, 2) == (1, 2)  # explicit wins
    with pytest.raises(ValueError, match=r"rank 4 invalid; valid: 0\.\.3"):
        resolve_rank(4, 4)
    with pytest.raises(ValueError, match="both given or neither"):
        resolve_rank(0, None)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' invalid"):
        resolve_rank()


# ------------------------------------------------------------------------------------ Ray recipe


def test_ray_data_decode_on_arrow_and_numpy_batches(rgb: tuple[Path, dict]) -> None:
    folder, truth = rgb
    table = pq.read_table(folder / "data")  # 40 rows, shard order
    keys = table.column("key").to_pylist()
    want = np.stack([truth["images"][k] for k in keys]).astype(np.float32) / np.float32(127.5) - 1
    numpy_batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    assert isinstance(numpy_batch["image"][0], dict)  # the struct cells Ray's numpy format holds
    batches = [numpy_batch, {"image": table.column("image"), "label": table.column("label")}]
    try:  # Ray's own Arrow -> numpy batch conversion, without starting Ray
        from ray.data._internal.arrow_block import ArrowBlockAccessor

        batches.append(ArrowBlockAccessor(table).to_batch_format("numpy"))
    except ImportError:
        pass
    for batch in batches:
        out = ray_data_decode(batch)
        assert set(out) == {"image", "label"}
        assert out["image"].dtype == np.float32 and out["image"].shape == (40, 3, 16, 16)
        np.testing.assert_array_equal(out["image"], want)
        assert out["label"].dtype == np.int64 and out["label"].tolist() == table.column("label").to_pylist()
    mixed = build_shard_table(
        encode_pngs(np.zeros((1, 8, 8), dtype=np.uint8)) + encode_pngs(np.zeros((1, 4, 4), dtype=np.uint8)),
        np.array([0, 1]), CLASSES, MODEL, 1, 0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="mixes image shapes"):
        ray_data_decode({"image": mixed.column("image"), "label": mixed.column("label")})
    with pytest.raises(ValueError, match="valid: at least 'image' and 'label'"):
        ray_data_decode({"image": numpy_batch["image"]})


# ----------------------------------------------------------------------------- AugmentedDataset


def _collect(ds_factory, world_size: int = 2, num_workers: int = 2) -> list[dict]:
    rows = []
    for rank in range(world_size):
        ds = ds_factory(rank, world_size)
        got = _rows(ds, num_workers)
        assert len(got) == len(ds)
        rows += got
    return rows


def test_fraction_mode_exact_real_coverage_and_share(syn: tuple[Path, dict]) -> None:
    folder, truth = syn
    real = _real([300, 200, 100])

    def make(rank: int, world: int) -> AugmentedDataset:
        return AugmentedDataset(real, folder, synthetic_fraction=0.25, seed=1, return_key=True,
                                rank=rank, world_size=world)  # fmt: skip

    full = make(0, 1)
    assert (full.num_real, full.num_synthetic, full.epoch_length) == (600, 200, 800)  # 600 / (1 - 0.25)
    rows = _collect(make)
    real_keys = [r["key"] for r in rows if not r["is_synthetic"]]
    syn_rows = [r for r in rows if r["is_synthetic"]]
    assert sorted(real_keys) == sorted(f"real-{i}" for i in range(600))  # every real row exactly once
    assert len(syn_rows) == 200 and len({r["key"] for r in syn_rows}) == 200
    for r in syn_rows[:30] + [r for r in rows if not r["is_synthetic"]][:30]:
        if r["is_synthetic"]:
            np.testing.assert_array_equal(
                ((r["image"] + 1) * 127.5).round().numpy(), truth["images"][r["key"]]
            )
            assert r["label"] == truth["labels"][r["key"]]
        else:
            i = int(r["key"][5:])
            assert torch.equal(r["image"], real.images[i]) and r["label"] == int(real.labels[i])
    # interleaved, not appended: the synthetic share of one slot's first half is near f
    first = list(make(0, 1))[:400]
    share = sum(r["is_synthetic"] for r in first) / 400
    assert 0.18 < share < 0.32
    # deterministic per (seed, epoch); another epoch picks other rows in another order
    a = make(0, 1)
    k0 = [r["key"] for r in a]
    a.set_epoch(1)
    k1 = [r["key"] for r in a]
    assert k0 == [r["key"] for r in make(0, 1)] and k0 != k1 and sorted(k0) != sorted(k1)
    assert {k for k in k0 if k.startswith("real")} == {k for k in k1 if k.startswith("real")}


def test_fraction_mode_reuses_a_small_synthetic_set(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    make_dataset(out, [[20, 20, 10]])
    ds = AugmentedDataset(_real([40, 10, 10]), out, synthetic_fraction=0.5, return_key=True)
    rows = list(ds)
    counts = Counter(r["key"] for r in rows if r["is_synthetic"])
    assert len(rows) == 120 and sum(counts.values()) == 60
    assert sorted(set(counts.values())) == [1, 2] and len(counts) == 50  # 60 = 50 + 10 reused


def test_topup_mode_fills_rare_classes_to_exactly_t(syn: tuple[Path, dict]) -> None:
    folder, truth = syn
    real = _real([300, 40, 5])

    def make(rank: int, world: int) -> AugmentedDataset:
        return AugmentedDataset(real, folder, per_class_target=200, seed=2, return_key=True,
                                rank=rank, world_size=world)  # fmt: skip

    assert make(0, 1).need_per_class().tolist() == [0, 160, 195]
    rows = _collect(make)
    per_class = Counter(r["label"] for r in rows)
    assert per_class == {0: 300, 1: 200, 2: 200}  # classes >= T untouched, the others exactly T
    syn_rows = [r for r in rows if r["is_synthetic"]]
    assert Counter(r["label"] for r in syn_rows) == {1: 160, 2: 195}
    assert len({r["key"] for r in syn_rows}) == 355
    assert all(truth["labels"][r["key"]] == r["label"] for r in syn_rows)
    assert sorted(r["key"] for r in rows if not r["is_synthetic"]) == sorted(f"real-{i}" for i in range(345))


def test_topup_reuses_scarce_rows_and_rejects_missing_classes(tmp_path: Path) -> None:
    out = tmp_path / "scarce"
    make_dataset(out, [[50, 3, 0]])
    ds = AugmentedDataset(_real([10, 0, 10]), out, per_class_target=10, return_key=True)
    rows = [r for r in ds if r["is_synthetic"]]
    counts = Counter(r["key"] for r in rows if r["label"] == 1)
    assert len(rows) == 10 and sum(counts.values()) == 10 and len(counts) == 3  # 3 rows reused
    with pytest.raises(ValueError, match=r"classes \['two'\] need synthetic rows but .* has none"):
        AugmentedDataset(_real([10, 10, 5]), out, per_class_target=10)


def test_augmented_validation_errors(syn: tuple[Path, dict], rgb: tuple[Path, dict]) -> None:
    folder, _ = syn
    real = _real([10, 10, 10])
    with pytest.raises(ValueError, match=r"class names differ: real \['a', 'b', 'c'\] vs synthetic \['zero'"):
        AugmentedDataset(real, folder, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="exactly one of the two modes"):
        AugmentedDataset(real, folder, synthetic_fraction=0.3, per_class_target=5)
    with pytest.raises(ValueError, match="neither synthetic_fraction nor per_class_target"):
        AugmentedDataset(real, folder, synthetic_fraction=None)
    with pytest.raises(ValueError, match=r"synthetic_fraction 1.0 invalid; valid: 0 <= f < 1"):
        AugmentedDataset(real, folder, synthetic_fraction=1.0)
    with pytest.raises(ValueError, match="per_class_target 0 invalid"):
        AugmentedDataset(real, folder, per_class_target=0, synthetic_fraction=None)
    with pytest.raises(ValueError, match=r"synthetic images are \(3, 16, 16\).*real ones are \(1, 8, 8\)"):
        AugmentedDataset(real, rgb[0])
    plain = torch.utils.data.TensorDataset(real.images, real.labels)
    with pytest.raises(ValueError, match="no .classes; valid: pass classes="):
        AugmentedDataset(plain, folder)
    ok = AugmentedDataset(plain, folder, classes=CLASSES, synthetic_fraction=0.0)
    assert len(list(ok)) == 30  # f = 0: the real data only
    assert AugmentedDataset(real, folder, per_class_target=12).num_synthetic == 6  # default f ignored


def test_augmented_transform_applies_to_real_and_synthetic(syn: tuple[Path, dict]) -> None:
    folder, _ = syn
    ds = AugmentedDataset(_real([20, 20, 20]), folder, synthetic_fraction=0.5, transform=lambda x: x.sum())
    values = [img for img, _ in ds]
    assert len(values) == 120 and all(v.ndim == 0 for v in values)


def test_incomplete_synthetic_folder_refused(tmp_path: Path) -> None:
    out = tmp_path / "running"
    make_dataset(out, [[5, 5, 5]], finalize=False)
    with pytest.raises(ValueError, match="no _SUCCESS"):
        AugmentedDataset(_real([5, 5, 5]), out)
    assert len(AugmentedDataset(_real([5, 5, 5]), out, allow_incomplete=True)) == 30
    shutil.rmtree(out)


def test_rank_is_redetected_in_the_main_process_and_when_pickled(
    rgb: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    s = ShardStream(rgb[0])  # units: 30 rows (shard 0), 10 rows (shard 1)
    assert (s.rank, s.world_size, len(s)) == (0, 1, 40)
    monkeypatch.setenv("RANK", "1")  # e.g. the launcher's environment seen after construction
    monkeypatch.setenv("WORLD_SIZE", "2")
    copy = pickle.loads(pickle.dumps(s))  # what spawned DataLoader workers receive
    assert (copy.rank, copy.world_size) == (1, 2)
    assert len(copy) == 10 and len(list(copy)) == 10
