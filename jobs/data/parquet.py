"""``parquet:PATH``: genaug's own shard format (or any Hugging Face image Parquet) as a train split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from jobs.data.images import pil_batch


def _parquet_files(path: Path) -> list[Path]:
    def visible(ps):  # skip temporary/hidden files (".tmp-...", "_SUCCESS")
        return sorted(p for p in ps if p.is_file() and not p.name.startswith((".", "_")))

    if path.is_file():
        return [path]
    if path.is_dir():
        files = visible((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []
        files = files or visible(path.glob("*.parquet"))
        if files:
            return files
    raise FileNotFoundError(
        f"no Parquet data at {path}; expected a .parquet file, {path}/data/*.parquet or {path}/*.parquet"
    )


def load_parquet(
    path: Path, split: str, image_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if split != "train":
        raise ValueError(f"parquet dataset {path} has no test split; valid: split='train'")
    files = _parquet_files(path)
    tables = []
    for f in files:
        t = pq.read_table(f)
        missing = {"image", "label"} - set(t.column_names)
        if missing:
            raise ValueError(f"{f} lacks columns {sorted(missing)}; valid: image, label, label_name")
        tables.append(t.select([c for c in ("image", "label", "label_name") if c in t.column_names]))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"Parquet files under {path} have different schemas: {e}") from e

    names = _classlabel_names(pq.read_schema(files[0]).metadata)
    labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise ValueError(f"label column in {path} must hold non-negative integers; got {labels.dtype}")
    labels = labels.astype(np.int64)
    if names is None:
        names = _names_from_rows(labels, table, path)
    if len(labels) and labels.max() >= len(names):
        raise ValueError(f"label {int(labels.max())} in {path} has no class name; valid: 0..{len(names) - 1}")

    pil = []
    for i, cell in enumerate(table.column("image").to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise ValueError(f"row {i} of {path} has no image bytes; valid: image.bytes holding PNG data")
        pil.append(Image.open(io.BytesIO(data)))
    return pil_batch(pil, image_size, str(path)), torch.from_numpy(labels), list(names)


def _classlabel_names(metadata: dict | None) -> list[str] | None:
    """ClassLabel names from the Hugging Face ``huggingface`` schema metadata, if present."""
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        label = json.loads(raw)["info"]["features"]["label"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(label, dict) and label.get("_type") == "ClassLabel" and label.get("names"):
        return [str(n) for n in label["names"]]
    return None


def _names_from_rows(labels: np.ndarray, table, path: Path) -> list[str]:
    """Class names from (label, label_name) pairs; labels without rows are named by their number."""
    if len(labels) == 0:
        raise ValueError(f"parquet dataset {path} has no rows")
    if "label_name" not in table.column_names:
        return [str(i) for i in range(int(labels.max()) + 1)]
    by_label: dict[int, str] = {}
    for y, n in zip(labels.tolist(), table.column("label_name").to_pylist(), strict=True):
        if by_label.setdefault(y, n) != n:
            raise ValueError(f"label {y} in {path} has two names: {by_label[y]!r} and {n!r}")
    return [str(by_label.get(i, i)) for i in range(int(labels.max()) + 1)]
