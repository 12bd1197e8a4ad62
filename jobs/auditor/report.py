"""An audit's report and commit: ``audit.md`` with its two PNG grids (top outliers per class, top
suspected label errors), the ``audit`` card, the manifest and ``_SUCCESS`` (``finalize_audit``)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from jobs.auditor.shards import audit_schema
from jobs.auditor.spec import (
    GRID_LABEL_ERRORS,
    GRID_PER_CLASS,
    LABEL_ERROR_GRID,
    OUTLIER_GRID,
    REFERENCE_PER_CLASS,
    REPORT_FILE,
    AuditSpec,
)
from jobs.generate import lineage
from jobs.store import png, shards
from jobs.store.location import location
from jobs.store.manifest import mark_success, write_manifest
from jobs.store.registry import ModelVersion
from models.audit import OutlierReference

if TYPE_CHECKING:  # Ray, pandas and matplotlib load when an audit runs, not with `genaug --help`
    import pandas as pd


def _grid_png(cells: list[list[tuple[np.ndarray, str]]], row_names: list[str], title: str) -> bytes:
    """A PNG of uint8 images (H, W, C) in rows, each captioned, each row named on its left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max([len(r) for r in cells] + [1])
    lines = max([c.count("\n") + 1 for r in cells for _, c in r] + [1])  # caption lines above each image
    fig = Figure(figsize=(1.15 * cols + 1.0, (1.15 + 0.15 * lines) * max(len(cells), 1) + 0.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(cells), 1), cols, squeeze=False)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i < len(cells) and j < len(cells[i]):
                img, caption = cells[i][j]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(caption, fontsize=7)
            else:
                ax.axis("off")
        if i < len(row_names):
            row[0].set_ylabel(row_names[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _captioned(df: pd.DataFrame, captions: list[str]) -> list[tuple[np.ndarray, str]]:
    """(uint8 image (H, W, C), caption) for each row of ``df``."""
    return [(png.decode_png(v["bytes"]), c) for v, c in zip(df["image"], captions, strict=True)]


def _table(df: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in df[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def outlier_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Audit rows, most unusual first: by outlier score, ties (a score flat at 100) by nll."""
    return rows.sort_values(["outlier_score", "nll"], ascending=False, kind="stable")


def label_error_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Audit rows, likeliest label error first: by label-error score, ties (saturated at 1) by margin."""
    return rows.sort_values(["label_error", "margin"], ascending=False, kind="stable")


def write_report(spec: AuditSpec, rows: pd.DataFrame) -> dict[str, Any]:
    """``outliers.png``, ``label_errors.png`` and ``audit.md`` from every row; returns the summary figures."""
    out = location(spec.output)
    by_outlier, by_error = outlier_order(rows), label_error_order(rows)
    outlier_cells = [
        _captioned(g, [f"#{i} s{p:.0f}" for i, p in g[["index", "outlier_score"]].itertuples(index=False)])
        for g in (by_outlier[by_outlier.label == c].head(GRID_PER_CLASS) for c in range(len(spec.classes)))
    ]
    suspects = by_error.head(GRID_LABEL_ERRORS)
    cols = ["index", "label_name", "suggested_name", "label_error"]
    error_cells = _captioned(
        suspects, [f"#{i} ({e:.2f})\n{a}->{b}" for i, a, b, e in suspects[cols].itertuples(index=False)]
    )
    error_rows = [error_cells[i : i + 8] for i in range(0, len(error_cells), 8)]
    out.join(OUTLIER_GRID).write_bytes(
        _grid_png(outlier_cells, list(spec.classes), "Top outliers per class (#index, outlier score)")
    )
    out.join(LABEL_ERROR_GRID).write_bytes(
        _grid_png(error_rows, [], "Top suspected label errors (#index (label-error score), given->suggested)")
    )
    disagree = rows.suggested_label != rows.label
    summary = {
        "images": len(rows),
        "importance_samples_K": spec.samples,
        "seed": spec.seed,
        "mean_nll_nats": float(rows.nll.mean()),
        "suggested_differs": int(disagree.sum()),
        "label_error_above_0.5": int((rows.label_error > 0.5).sum()),
        "outlier_score_above_99": int((rows.outlier_score > 99).sum()),
    }
    per_class = rows.groupby("label_name", sort=False).agg(
        images=("nll", "size"), median_nll=("nll", "median"), mean_label_error=("label_error", "mean")
    )
    lines = [
        f"# Audit of {spec.dataset} ({spec.split}) with {spec.model}",
        "",
        f"{len(rows)} images; nll in nats per image, the importance-weighted bound with K = {spec.samples} "
        f"samples (seed {spec.seed}); outlier percentiles (of nll and of the code nll) against the first "
        f"{REFERENCE_PER_CLASS} training images per class of {spec.reference}, the outlier score the "
        "larger; p(c | x) with a uniform class prior.",
        "",
        *[f"- **{k}**: {v:.4g}" if isinstance(v, float) else f"- **{k}**: {v}" for k, v in summary.items()],
        "",
        "## Per class",
        "",
        *_table(per_class.reset_index(), ["label_name", "images", "median_nll", "mean_label_error"]),
        "",
        f"## Top {spec.top} outliers",
        "",
        f"![outliers]({OUTLIER_GRID})",
        "",
        *_table(
            by_outlier.head(spec.top),
            ["index", "label_name", "nll", "outlier_percentile", "code_percentile", "outlier_score"],
        ),
        "",
        f"## Top {spec.top} suspected label errors",
        "",
        f"![label errors]({LABEL_ERROR_GRID})",
        "",
        *_table(by_error.head(spec.top), ["index", "label_name", "suggested_name", "label_error", "margin"]),
        "",
    ]
    out.join(REPORT_FILE).write_text("\n".join(lines))
    return summary


def render_audit_card(manifest: Mapping[str, Any]) -> str:
    """The ``audit`` card: a YAML header for Hugging Face ``load_dataset(folder)``, then what it holds."""
    schema = audit_schema(manifest["classes"])
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [
                {"name": n, "dtype": "image" if f["_type"] == "Image" else f.get("dtype", "int64")}
                for n, f in features.items()
            ],
            "splits": [{"name": "train", "num_examples": int(manifest["totals"]["rows"])}],
        },
        "tags": ["genaug", "audit"],
    }
    req = manifest["request"]
    return "\n".join(
        [
            "---",
            yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
            "---",
            "",
            f"# Audit of {req['dataset']} ({req['split']}) by {req['model']}",
            "",
            f"One row per image ({manifest['totals']['rows']} rows). See `{REPORT_FILE}` for the summary and "
            f"the top rows, `{OUTLIER_GRID}` and `{LABEL_ERROR_GRID}` for the images. Columns: `index` "
            "(position in the split), `label`, `nll` (nats), `outlier_percentile`, `p_<class index>`, "
            "`suggested_label`, `label_error` (1 - p(label | x)), `margin`.",
            "",
        ]
    )


def finalize_audit(
    spec: AuditSpec,
    job_id: str,
    mv: ModelVersion,
    infos: list[dict[str, Any]],
    reference: OutlierReference,
    started: float,
) -> dict[str, Any]:
    """Check one row per image, write the report, ``manifest.json``, the card, then ``_SUCCESS``."""
    if [int(i["shard"]) for i in infos] != list(range(spec.num_shards)):
        raise ValueError(f"audit {spec.output} is missing shards; valid: 0..{spec.num_shards - 1}")
    data = location(spec.output).join(shards.DATA_DIR)
    rows = pq.read_table(data.path, filesystem=data.fs).to_pandas()
    if not np.array_equal(np.sort(rows["index"].to_numpy()), np.arange(spec.num_images)):
        raise ValueError(
            f"audit {spec.output} does not hold exactly one row per image 0..{spec.num_images - 1}"
        )
    summary = write_report(spec, rows)
    per_class = {c: sum(int(i["class_counts"][c]) for i in infos) for c in spec.classes}
    duration = time.perf_counter() - started
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "kind": "audit",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(spec.classes),
        "request": {"job_id": job_id, **spec.to_dict()},
        "lineage": lineage(mv),
        "audit": {**summary, "reference": {"spec": spec.reference, "per_class": list(reference.counts)}},
        "shards": infos,
        "totals": {
            "rows": sum(int(i["rows"]) for i in infos),
            "shards": len(infos),
            "bytes": sum(int(i["bytes"]) for i in infos),
            "per_class": per_class,
        },
        "duration_s": duration,
    }
    digest = write_manifest(spec.output, manifest)
    location(spec.output).join(shards.CARD).write_text(render_audit_card(manifest))
    mark_success(spec.output, digest)
    return manifest
