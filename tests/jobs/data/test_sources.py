"""jobs.data: every spec form, from real digits, generated shapes and fake files in tmp_path."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import datasets as tvd

from jobs.data.images import ImageDataset
from jobs.data.shapes import SHAPE_CLASSES
from jobs.data.spec import DATASET_FORMS, load_dataset, parse_spec
from models.sampling import denormalize_uint8

# --- helpers writing real on-disk formats -----------------------------------------------------------


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in the big-endian IDX format MNIST uses (magic 0x0000080N)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fake_mnist(root, folder: str, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[prefix] = (x, y)
    return out


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_cifar(root, per_batch: int = 4, n_test: int = 5, seed: int = 0) -> dict:
    """Write cifar-10-batches-py like the real archive: pickled dicts, data (N, 3072) uint8 in CHW order."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f)
        out[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return out


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Fake CIFAR files cannot match the published MD5s; keep torchvision's file names, drop the sums."""
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f, None] for f, _ in tvd.CIFAR10.train_list])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [[f, None] for f, _ in tvd.CIFAR10.test_list])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": None})


def save_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquet(path, arrays, labels, names, hf_names=None) -> None:
    schema = pa.schema([("image", IMAGE_TYPE), ("label", pa.int64()), ("label_name", pa.string())])
    if hf_names is not None:
        features = {
            "image": {"_type": "Image"},
            "label": {"_type": "ClassLabel", "names": hf_names},
            "label_name": {"dtype": "string", "_type": "Value"},
        }
        schema = schema.with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    table = pa.table(
        {
            "image": [{"bytes": png_bytes(a), "path": None} for a in arrays],
            "label": list(labels),
            "label_name": list(names),
        },
        schema=schema,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


# --- digits -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_digits_is_sklearns_first_and_second_half(digits):
    train, test = digits
    ref = load_digits()
    assert (len(train), len(test)) == (898, 899)
    assert train.images.shape == (898, 1, 8, 8) and test.images.shape == (899, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), ref.images[:898] / 8 - 1)
    np.testing.assert_array_equal(test.images[:, 0].numpy(), ref.images[898:] / 8 - 1)
    np.testing.assert_array_equal(train.labels.numpy(), ref.target[:898])
    np.testing.assert_array_equal(test.labels.numpy(), ref.target[898:])
    assert float(train.images.min()) == -1.0 and float(train.images.max()) == 1.0
    assert train.classes == tuple(str(i) for i in range(10))
    assert (train.image_size, train.channels, train.num_classes) == (8, 1, 10)
    assert (train.spec, train.split, test.split) == ("digits", "train", "test")


def test_getitem_and_dataloader(digits):
    train, _ = digits
    image, label = train[5]
    assert image.shape == (1, 8, 8) and isinstance(label, int) and label == int(load_digits().target[5])
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(train, batch_size=16)))
    assert batch_x.shape == (16, 1, 8, 8)
    assert torch.equal(batch_y, train.labels[:16])


def test_fingerprint_is_stable_content_based_and_differs_between_splits(digits):
    train, test = digits
    fp = train.fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert load_dataset("digits", "train").fingerprint == fp
    assert test.fingerprint != fp
    same_content = ImageDataset(train.images.clone(), train.labels.clone(), train.classes, "other", "test")
    assert same_content.fingerprint == fp  # spec/split independent
    renamed = ImageDataset(train.images, train.labels, tuple("abcdefghij"), "digits", "train")
    assert renamed.fingerprint != fp
    flipped = train.images.clone()
    flipped[0, 0, 0, 0] += 0.5
    assert ImageDataset(flipped, train.labels, train.classes, "digits", "train").fingerprint != fp


def test_pickles_for_ray_and_dataloader_workers(digits):
    train, _ = digits
    fp = train.fingerprint  # cached on the instance
    copy = pickle.loads(pickle.dumps(train))
    assert torch.equal(copy.images, train.images) and copy.classes == train.classes
    assert copy.fingerprint == fp and copy.spec == "digits" and copy.split == "train"


def test_resize_on_load(digits):
    train, _ = digits
    big = load_dataset("digits", "train", image_size=32)
    assert big.images.shape == (898, 1, 32, 32) and big.image_size == 32
    assert float(big.images.min()) >= -1.0 and float(big.images.max()) <= 1.0
    # bilinear upsampling preserves the mean closely
    assert torch.allclose(big.images.mean(dim=(1, 2, 3)), train.images.mean(dim=(1, 2, 3)), atol=0.05)
    assert load_dataset("digits", image_size=8).fingerprint == train.fingerprint  # native size: no-op


def test_denormalize_uint8_round_trip_and_clipping():
    u = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    x = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, C, H, W)
    out = denormalize_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 5, 3)
    np.testing.assert_array_equal(out, u)
    edge = denormalize_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).view(1, 1, 1, 5))
    np.testing.assert_array_equal(edge.ravel(), [0, 0, 128, 255, 255])  # 127.5 rounds half to even


# --- shapes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", "train"), load_dataset("shapes", "test")


def test_shapes_sizes_balance_and_range(shapes):
    train, test = shapes
    assert train.images.shape == (3000, 3, 32, 32) and test.images.shape == (1000, 3, 32, 32)
    assert train.classes == SHAPE_CLASSES == ("circle", "square", "triangle", "cross", "ring")
    assert torch.bincount(train.labels).tolist() == [600] * 5
    assert torch.bincount(test.labels).tolist() == [200] * 5
    assert float(train.images.min()) >= -1.0 and float(train.images.max()) <= 1.0


def test_shapes_deterministic_and_splits_differ(shapes):
    train, test = shapes
    again = load_dataset("shapes", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert load_dataset("shapes:32", "train").fingerprint == train.fingerprint
    assert test.fingerprint != train.fingerprint
    assert not torch.equal(test.images[:100], train.images[:100])


def test_shapes_size_argument():
    small = load_dataset("shapes:16", "test")
    assert small.images.shape == (1000, 3, 16, 16)
    assert load_dataset("shapes", "test", image_size=16).images.shape == (1000, 3, 16, 16)
    assert load_dataset("shapes", "test", image_size=np.int64(8)).image_size == 8


def _crop_features(ds: ImageDataset, side: int = 12) -> np.ndarray:
    """Foreground mask cropped to its bounding box, resized to side x side: position/colour/scale free."""
    x = denormalize_uint8(ds.images).astype(np.float32)  # (N, H, W, 3)
    feats = []
    for img in x:
        bright = img.max(axis=-1)
        mask = bright > (bright.min() + bright.max()) / 2
        ys, xs = np.nonzero(mask)
        crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
        feats.append(np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR), np.float32) / 255)
    return np.stack(feats).reshape(len(feats), -1)


def test_shapes_are_visually_distinct(shapes):
    """A nearest-centroid classifier on normalised silhouettes separates the classes on the test split."""
    train, test = shapes
    f_train, f_test = _crop_features(train), _crop_features(test)
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    centroids = np.stack([f_train[y_train == c].mean(0) for c in range(5)])
    pred = ((f_test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y_test).mean() >= 0.98  # measured: 1.0 at sizes 16 and 32


# --- torchvision formats from fake files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, folder, classes",
    [
        ("mnist", "MNIST", tuple(str(i) for i in range(10))),
        (
            "fashion-mnist",
            "FashionMNIST",
            (
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
        ),
    ],
)
def test_mnist_like_from_fake_idx_files(tmp_path, name, folder, classes):
    written = fake_mnist(tmp_path, folder)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(f"{name}:{tmp_path}", split)
        x, y = written[prefix]
        assert ds.images.shape == (len(x), 1, 28, 28)
        np.testing.assert_array_equal(denormalize_uint8(ds.images)[..., 0], x)
        np.testing.assert_allclose(ds.images[:, 0].numpy(), x / 127.5 - 1, atol=1e-6)
        np.testing.assert_array_equal(ds.labels.numpy(), y)
        assert ds.classes == classes and ds.split == split
    assert load_dataset(f"{name}:{tmp_path}", image_size=32).images.shape == (20, 1, 32, 32)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_missing_folder_names_every_expected_file(tmp_path, name, folder):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset(f"{name}:{tmp_path / 'nowhere'}", split)
        msg = str(err.value)
        for where in (tmp_path / "nowhere", tmp_path / "nowhere" / folder / "raw"):  # both layouts
            for f in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
                assert str(where / f) in msg
        assert "missing" in msg and ".gz" in msg and "nothing is downloaded" in msg


def test_mnist_reads_gzipped_files_and_a_missing_one_names_both_layouts(tmp_path):
    written = fake_mnist(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    for f in raw.iterdir():  # as torchvision downloads them: .gz beside nothing
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    np.testing.assert_array_equal(
        load_dataset(f"mnist:{tmp_path}", "test").labels.numpy(), written["t10k"][1]
    )
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_dataset(f"mnist:{tmp_path}", "train")) == 20  # only the split's own two files are read
    with pytest.raises(FileNotFoundError, match=r"test split .* is missing") as err:
        load_dataset(f"mnist:{tmp_path}", "test")
    msg = str(err.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in msg and str(raw / "t10k-labels-idx1-ubyte") in msg
    assert f"found only {raw / 't10k-images-idx3-ubyte.gz'}" in msg


def test_fashion_mnist_flat_gzipped_layout_as_debian_ships_it(tmp_path):
    written = fake_mnist(tmp_path, "x")
    for f in (tmp_path / "x" / "raw").iterdir():
        (tmp_path / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    shutil.rmtree(tmp_path / "x")
    ds = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    np.testing.assert_array_equal(denormalize_uint8(ds.images)[..., 0], written["train"][0])
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (make install installs it as root with apt)",
)
def test_real_fashion_mnist_from_the_debian_package():
    train, test = (load_dataset(f"fashion-mnist:{DEBIAN_FASHION}", s) for s in ("train", "test"))
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert np.bincount(train.labels.numpy()).tolist() == [6000] * 10
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert -1.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert train.fingerprint != test.fingerprint


def test_mnist_damaged_file(tmp_path):
    fake_mnist(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(FileNotFoundError, match="unreadable") as err:
        load_dataset(f"mnist:{tmp_path}", "train")
    assert str(path) in str(err.value)


def test_mnist_label_count_mismatch_is_damaged(tmp_path):
    fake_mnist(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(FileNotFoundError, match="damaged"):
        load_dataset(f"mnist:{tmp_path}", "train")


def test_cifar10_from_fake_batches(tmp_path, no_cifar_md5):
    written = fake_cifar(tmp_path)
    train = load_dataset(f"cifar10:{tmp_path}", "train")
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (5, 3, 32, 32)
    assert train.classes == tuple(CIFAR_NAMES)
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # the pickled rows are R plane, G plane, B plane, each row-major 32x32
    np.testing.assert_array_equal(
        denormalize_uint8(train.images), data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    np.testing.assert_array_equal(test.labels.numpy(), written["test_batch"][1])
    assert load_dataset(f"cifar10:{tmp_path}", "test", image_size=16).images.shape == (5, 3, 16, 16)


def test_cifar10_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(f"cifar10:{tmp_path}")
    msg = str(err.value)
    folder = tmp_path / "cifar-10-batches-py"
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        assert str(folder / f) in msg
    assert "missing data_batch_1" in msg


def test_cifar10_checksum_mismatch_is_reported(tmp_path):
    fake_cifar(tmp_path)  # real torchvision checksums: the fake files do not match them
    with pytest.raises(
        FileNotFoundError, match=r"checksum mismatch in data_batch_1, .*test_batch, batches.meta"
    ):
        load_dataset(f"cifar10:{tmp_path}", "test")


def test_cifar10_one_batch_missing(tmp_path, no_cifar_md5):
    fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3:"):
        load_dataset(f"cifar10:{tmp_path}", "test")


# --- imagefolder --------------------------------------------------------------------------------------


def test_imagefolder_grey(tmp_path):
    rng = np.random.default_rng(1)
    pixels = {}
    for cls, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            a = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            save_png(tmp_path / cls / f"{i}.png", a)
            pixels[(cls, i)] = a
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ("cat", "dog") and ds.channels == 1 and ds.images.shape == (5, 1, 16, 16)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(denormalize_uint8(ds.images)[3, ..., 0], pixels[("dog", 0)])


def test_imagefolder_rgb_when_any_image_has_colour_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    save_png(tmp_path / "a" / "0.png", grey)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save_png(tmp_path / "b" / "0.png", colour)
    save_png(tmp_path / "b" / "1.png", np.repeat(grey[..., None], 3, -1))  # RGB file, grey content
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.channels == 3 and ds.images.shape == (3, 3, 16, 16)
    out = denormalize_uint8(ds.images)
    np.testing.assert_array_equal(out[0], np.repeat(grey[..., None], 3, -1))  # grey broadcast to RGB
    np.testing.assert_array_equal(out[1], colour)
    assert load_dataset(f"imagefolder:{tmp_path}", image_size=8).images.shape == (3, 3, 8, 8)


def test_imagefolder_rgb_files_with_grey_content_are_grey(tmp_path):
    a = np.full((8, 8, 3), 77, np.uint8)
    save_png(tmp_path / "x" / "0.png", a)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.channels == 1 and denormalize_uint8(ds.images)[0, 0, 0, 0] == 77


def test_imagefolder_size_rules(tmp_path):
    save_png(tmp_path / "a" / "0.png", np.zeros((16, 24), np.uint8))  # non-square
    with pytest.raises(ValueError, match="--image-size"):
        load_dataset(f"imagefolder:{tmp_path}")
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=16)  # centre-cropped then resized
    assert ds.images.shape == (1, 1, 16, 16)

    other = tmp_path / "other"
    save_png(other / "a" / "0.png", np.zeros((10, 10), np.uint8))  # square but unsupported size
    with pytest.raises(ValueError, match=r"10x10.*--image-size"):
        load_dataset(f"imagefolder:{other}")
    assert load_dataset(f"imagefolder:{other}", image_size=8).image_size == 8

    mixed = tmp_path / "mixed"
    save_png(mixed / "a" / "0.png", np.zeros((8, 8), np.uint8))
    save_png(mixed / "a" / "1.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="8x8, 16x16"):
        load_dataset(f"imagefolder:{mixed}")
    assert load_dataset(f"imagefolder:{mixed}", image_size=16).images.shape == (2, 1, 16, 16)


def test_imagefolder_train_test_subfolders_share_label_indices(tmp_path):
    for cls in ("a", "b", "c"):
        save_png(tmp_path / "train" / cls / "0.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "test" / "c" / "0.png", np.full((8, 8), 200, np.uint8))  # only class c in test
    test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert test.classes == ("a", "b", "c") and test.labels.tolist() == [2]
    assert len(load_dataset(f"imagefolder:{tmp_path}", "train")) == 3
    save_png(tmp_path / "test" / "zebra" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="zebra"):
        load_dataset(f"imagefolder:{tmp_path}", "test")


def test_imagefolder_without_test_split_and_missing_dir(tmp_path):
    save_png(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no test split"):
        load_dataset(f"imagefolder:{tmp_path}", "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="class folder"):
        load_dataset(f"imagefolder:{empty}")


# --- parquet ----------------------------------------------------------------------------------------------


def test_parquet_round_trip_with_hf_metadata(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    labels, names = [2, 0, 2, 1], ["two", "zero", "two", "one"]
    path = tmp_path / "ds"
    write_parquet(
        path / "data" / "train-00000-of-00002.parquet",
        arrays[:2],
        labels[:2],
        names[:2],
        ["zero", "one", "two", "three"],
    )
    write_parquet(
        path / "data" / "train-00001-of-00002.parquet",
        arrays[2:],
        labels[2:],
        names[2:],
        ["zero", "one", "two", "three"],
    )
    (path / "data" / ".tmp-train-00002-of-00003.parquet").write_bytes(b"partial")  # ignored
    ds = load_dataset(f"parquet:{path}")
    assert ds.classes == ("zero", "one", "two", "three")  # from the ClassLabel metadata, incl. unused "three"
    assert ds.labels.tolist() == labels and ds.images.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(denormalize_uint8(ds.images), np.stack(arrays))
    assert load_dataset(f"parquet:{path / 'data' / 'train-00001-of-00002.parquet'}").labels.tolist() == [2, 1]


def test_parquet_names_from_rows_grey_and_resize(tmp_path):
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    path = tmp_path / "flat"
    write_parquet(path / "part-0.parquet", arrays, [1, 0, 1], ["b", "a", "b"])
    ds = load_dataset(f"parquet:{path}")
    assert ds.classes == ("a", "b") and ds.channels == 1
    np.testing.assert_array_equal(denormalize_uint8(ds.images)[..., 0], np.stack(arrays))
    assert load_dataset(f"parquet:{path}", image_size=8).images.shape == (3, 1, 8, 8)


def test_parquet_errors(tmp_path):
    path = tmp_path / "p.parquet"
    write_parquet(path, [np.zeros((8, 8), np.uint8)], [0], ["a"])
    with pytest.raises(ValueError, match="no test split"):
        load_dataset(f"parquet:{path}", "test")
    with pytest.raises(FileNotFoundError, match="no Parquet data"):
        load_dataset(f"parquet:{tmp_path / 'missing'}")
    bad = tmp_path / "bad.parquet"
    write_parquet(bad, [np.zeros((8, 8), np.uint8)] * 2, [0, 0], ["a", "b"])
    with pytest.raises(ValueError, match="two names"):
        load_dataset(f"parquet:{bad}")


# --- bad input ----------------------------------------------------------------------------------------


def test_parse_spec_valid_forms():
    assert parse_spec("digits") == ("digits", None)
    assert parse_spec("shapes") == ("shapes", None)
    assert parse_spec("shapes:16") == ("shapes", "16")
    assert parse_spec("mnist:/data/x") == ("mnist", "/data/x")
    assert parse_spec("fashion-mnist:rel/dir") == ("fashion-mnist", "rel/dir")
    assert parse_spec("parquet:file:///a/b") == ("parquet", "file:///a/b")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "  ",
        "foo",
        "svhn:/x",
        "mnist",
        "mnist:",
        "fashion-mnist",
        "cifar10:",
        "imagefolder",
        "parquet:",
        "digits:8",
        "digits:",
        "shapes:12",
        "shapes:abc",
        "shapes:",
        ":mnist",
        None,
    ],
)
def test_bad_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError) as err:
        load_dataset(spec)
    for form in DATASET_FORMS:
        assert form in str(err.value)


def test_bad_split_and_image_size():
    with pytest.raises(ValueError, match=r"'val'.*train, test"):
        load_dataset("digits", "val")
    for size in (12, 0, -8, 32.0, "32", True):
        with pytest.raises(ValueError, match=r"8, 16, 28, 32, 64"):
            load_dataset("digits", image_size=size)
    with pytest.raises(ValueError, match="not a local path"):
        load_dataset("parquet:s3://bucket/x")


def test_dataset_rejects_inconsistent_tensors():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="labels span"):
        ImageDataset(x, torch.tensor([0, 3]), ("a", "b"), "t", "train")
    with pytest.raises(ValueError, match="H == W"):
        ImageDataset(torch.zeros(2, 1, 8, 6), torch.tensor([0, 1]), ("a", "b"), "t", "train")
    with pytest.raises(ValueError, match="int64"):
        ImageDataset(x, torch.tensor([0, 1], dtype=torch.int32), ("a", "b"), "t", "train")
