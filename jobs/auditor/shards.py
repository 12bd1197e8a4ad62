"""One audit shard: its Parquet schema (one row per image, one ``p_<c>`` column per class), its table
and its commit (``write_audit_shard``, used by ``genaug audit`` and the service's replicas alike)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jobs.auditor.spec import AuditSpec
from jobs.store import png, shards
from jobs.store.location import location
from models.audit import OutlierReference, score
from models.sampling import denormalize_uint8

if TYPE_CHECKING:  # Ray, pandas and matplotlib load when an audit runs, not with `genaug --help`
    pass


def audit_schema(classes: Sequence[str]) -> pa.Schema:
    """The columns of an audit shard, with the ``huggingface`` features metadata (image, class labels)."""
    names = shards.validate_classes(classes)
    probs = [(f"p_{i}", pa.float64()) for i in range(len(names))]
    columns = [
        ("image", shards.IMAGE_TYPE),
        ("index", pa.int64()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("nll", pa.float64()),
        ("outlier_percentile", pa.float64()),
        ("code_nll", pa.float64()),
        ("code_percentile", pa.float64()),
        ("outlier_score", pa.float64()),
        ("label_error", pa.float64()),
        ("margin", pa.float64()),
        ("suggested_label", pa.int64()),
        ("suggested_name", pa.string()),
        *probs,
        ("model", pa.string()),
    ]
    label = {"names": names, "_type": "ClassLabel"}
    features = {
        name: {"_type": "Image"}
        if name == "image"
        else dict(label)
        if name in ("label", "suggested_label")
        # pa.float64() prints as "double"; Hugging Face calls it float64
        else {"dtype": "float64" if t == pa.float64() else str(t), "_type": "Value"}
        for name, t in columns
    }
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([pa.field(n, t) for n, t in columns], metadata=meta)


def audit_table(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: np.ndarray,
    model: torch.nn.Module,
    spec: AuditSpec,
    reference: OutlierReference,
) -> pa.Table:
    """The rows of ``images`` (N, C, H, W) in [-1, 1] with ``labels`` (N,) at split ``indices`` (N,)."""
    s = score(model, images, labels, spec.config, reference)
    names = pa.array(spec.classes, pa.string())
    pngs = png.encode_pngs(denormalize_uint8(images))
    n = len(pngs)
    values = {
        "image": pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.nulls(n, pa.string())], fields=list(shards.IMAGE_TYPE)
        ),
        "index": indices.astype(np.int64),
        "label": labels.numpy(),
        "label_name": names.take(pa.array(labels.numpy())),
        "nll": s.nll.double().numpy(),
        "outlier_percentile": s.outlier.numpy(),
        "code_nll": s.code.numpy(),
        "code_percentile": np.full(n, np.nan) if s.code_percentile is None else s.code_percentile.numpy(),
        "outlier_score": s.outlier_score.numpy(),
        "label_error": s.label_error.double().numpy(),
        "margin": s.margin.double().numpy(),
        "suggested_label": s.suggested.numpy(),
        "suggested_name": names.take(pa.array(s.suggested.numpy())),
        **{f"p_{c}": s.posterior[:, c].double().numpy() for c in range(len(spec.classes))},
        "model": pa.array([spec.model] * n, pa.string()),
    }
    schema = audit_schema(spec.classes)
    return pa.Table.from_arrays([pa.array(values[f.name], f.type) for f in schema], schema=schema)


def _shard_info(spec: AuditSpec, shard: int, data: bytes, labels: np.ndarray) -> dict[str, Any]:
    """The manifest entry of a committed shard from its bytes and label column."""
    per_class = np.bincount(labels, minlength=len(spec.classes))
    return {
        "shard": shard,
        "path": shards.shard_path(shard, spec.num_shards),
        "rows": int(labels.size),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "class_counts": {c: int(per_class[i]) for i, c in enumerate(spec.classes)},
    }


def write_audit_shard(
    model: torch.nn.Module,
    spec: AuditSpec,
    shard: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    reference: OutlierReference,
) -> dict[str, Any]:
    """Score shard ``shard``'s ``images`` (its rows of the split) and commit its Parquet file (temp name,
    then rename); returns its manifest entry."""
    rows = spec.shard_range(shard)
    if len(labels) != len(rows):
        raise ValueError(f"shard {shard} holds {len(rows)} images; got {len(labels)}")
    table = audit_table(images, labels, np.arange(rows.start, rows.stop), model, spec, reference)
    data = shards.table_to_parquet_bytes(table).to_pybytes()
    location(spec.output).join(shards.shard_path(shard, spec.num_shards)).write_bytes(data)
    return _shard_info(spec, shard, data, table.column("label").to_numpy())


def committed_shard(spec: AuditSpec, shard: int) -> dict[str, Any] | None:
    """The info of shard ``shard`` if an earlier run committed it whole; a damaged file is deleted."""
    file = location(spec.output).join(shards.shard_path(shard, spec.num_shards))
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
        ok = table.schema.equals(audit_schema(spec.classes), check_metadata=True) and np.array_equal(
            table.column("index").to_numpy(), np.asarray(spec.shard_range(shard))
        )
    except Exception:  # noqa: BLE001 - any decode failure means "write it again"
        ok = False
    if not ok:
        file.delete()
        return None
    return _shard_info(spec, shard, data, table.column("label").to_numpy())
