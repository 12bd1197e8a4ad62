"""The evaluation report: ``eval.json``, ``eval.md`` and its PNG figures, written into a model version."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jobs.store.location import Location, location, write_bytes_atomic, write_json_atomic

METRICS = (
    "fid",
    "precision",
    "recall",
    "density",
    "coverage",
    "label_fidelity",
    "cas",
    "cas_ratio",
    "cas_svc",
    "memorisation",
    "augmentation_gain",
    "gain_over_classical",
    "long_tail_gain",
)
EVAL_FILES = ("eval.json", "eval.md", "eval_samples.png", "eval_curves.png", "eval_metrics.png")


# ----------------------------------------------------------------------------- files


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """[metric, value, target, met, protocol] rows for the table (CLI and eval.md)."""
    rows = []
    for name in METRICS:
        m = report.get(name)
        if not isinstance(m, Mapping):
            continue
        value = _fmt(m.get("value"))
        if name == "fid":
            value += f" (floor {_fmt(m.get('floor'))})"
        elif name in ("augmentation_gain", "gain_over_classical") and m.get("value") is not None:
            value = f"{m['value']:+.2f} ± {m.get('std') or 0:.2f} pp (k={m.get('k')})"
            by_k = (m.get("by_k") or {}).items()
            others = [f"k={k}: {g['mean']:+.2f}" for k, g in by_k if g and k != str(m["k"])]
            value += f"; {', '.join(others)}" if others else ""
        elif name == "long_tail_gain" and m.get("value") is not None:
            value = f"{m['value']:+.2f} ± {m.get('std') or 0:.2f} pp"
            if m.get("gain_mixed_pp"):
                value += f" (half real: {m['gain_mixed_pp']['mean']:+.2f} ± {m['gain_mixed_pp']['std']:.2f})"
            if m.get("ceiling_pp"):
                value += f"; all real images: {m['ceiling_pp']['mean']:+.2f} ± {m['ceiling_pp']['std']:.2f}"
        elif name == "memorisation" and m.get("value") is not None:
            value = f"{100 * m['value']:.2f} %"
        elif name == "cas_svc" and m.get("value") is not None:
            value += f" ± {m.get('std') or 0:.4f} (real {_fmt(m.get('real'))})"
        elif name in ("precision", "recall", "density", "coverage"):
            value += f" (ref {_fmt(m.get('reference'))})"
        met = {True: "yes", False: "NO", None: ""}[m.get("pass")]
        rows.append([name, value, str(m.get("target", "-")), met, str(m.get("protocol", ""))])
    return rows


TARGET_SOURCES = {  # where each table of jobs.metrics.targets comes from
    "digits": "Targets: the digits table (issue 5), set on scikit-learn's 8x8 digits.",
    "real": "Targets: the real-data table (issue 17), set for Fashion-MNIST and 32x32 colour.",
}


def render_markdown(report: Mapping[str, Any]) -> str:
    """``eval.md``: a header and a metric | value | target | met | protocol table."""
    lines = [
        f"# Evaluation of {report['model']} ({report['model_type']})",
        "",
        f"Dataset `{report['dataset']}`, test split; {report['n_per_class']} samples per class; seeds "
        f"{report['seeds']}; {'FAST smoke run (not a measurement); ' if report['fast'] else ''}"
        f"{report['duration_s']:.0f} s; {report['created_at']}.",
        f"Domain classifier: {report['classifier']['protocol']}.",
        TARGET_SOURCES.get(report.get("targets", "digits"), TARGET_SOURCES["digits"]),
        "",
        "| metric | value | target | met | protocol |",
        "|---|---|---|---|---|",
    ]
    for r in report_rows(report):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    figures = report.get("figures") or {}
    if figures:
        lines += ["", "Figures:", ""] + [f"- `{k}`: {v}" for k, v in figures.items()]
    return "\n".join(lines) + "\n"


def _png_grid(images: Tensor, nrow: int) -> bytes:
    from torchvision.utils import make_grid

    scale = max(1, 32 // images.shape[-1])
    up = F.interpolate(images, scale_factor=scale, mode="nearest")  # (N, C, H*s, W*s)
    grid = make_grid((up + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)  # (C', H', W')
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H', W', 3)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _matplotlib_png(draw: Callable[[Any], None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 4.5), dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _draw_curves(history: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        keys = sorted({k for h in history for k in h if k not in ("epoch", "images_per_s")})
        for key in keys:
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("training curves (history.json)")
        ax.legend()

    return draw


def _draw_metrics(report: Mapping[str, Any]) -> Callable[[Any], None]:
    names = [
        n
        for n in ("precision", "recall", "density", "coverage", "label_fidelity", "cas_ratio", "cas_svc")
        if isinstance(report.get(n, {}).get("value"), float)
    ]

    def draw(fig) -> None:
        ax = fig.add_subplot(1, 2, 1)
        ax.bar(names, [report[n]["value"] for n in names])
        ax.set_ylim(0, max(1.05, *[report[n]["value"] for n in names]) if names else 1.05)
        ax.tick_params(axis="x", rotation=45)
        ax.set_title(report["model"])
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.bar(["FID", "floor"], [report["fid"]["value"], report["fid"]["floor"]], color=["C1", "C7"])
        ax2.set_title("FID in the domain feature space")

    return draw


def write_report(
    version_dir: Path | Location | str,
    report: dict[str, Any],
    samples: Tensor,
    labels: Tensor,
    n_per_class: int,
    num_classes: int,
) -> dict[str, str]:
    """Write eval PNGs, ``eval.json`` and ``eval.md`` atomically into ``version_dir``; return figure notes."""
    version_dir = location(version_dir)  # a local folder or an object-store prefix
    figures: dict[str, str] = {}
    per_row = min(10, n_per_class)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_row] for c in range(num_classes)])
    write_bytes_atomic(version_dir / "eval_samples.png", _png_grid(samples[idx], per_row))
    figures["eval_samples.png"] = (
        f"{per_row} samples per class, one row per class (seed {report['seeds'][0]})"
    )
    have_mpl = importlib.util.find_spec("matplotlib") is not None
    history_path = version_dir / "history.json"
    if not history_path.is_file():
        figures["eval_curves.png"] = "skipped: the version has no history.json"
    elif not have_mpl:
        figures["eval_curves.png"] = "skipped: matplotlib is not installed"
    else:
        history = json.loads(history_path.read_text())
        write_bytes_atomic(version_dir / "eval_curves.png", _matplotlib_png(_draw_curves(history)))
        figures["eval_curves.png"] = "losses per epoch from history.json"
    if have_mpl:
        write_bytes_atomic(version_dir / "eval_metrics.png", _matplotlib_png(_draw_metrics(report)))
        figures["eval_metrics.png"] = "metric bars and FID vs its floor"
    else:
        figures["eval_metrics.png"] = "skipped: matplotlib is not installed"
    report["figures"] = figures
    write_json_atomic(version_dir / "eval.json", _jsonable(report))
    write_bytes_atomic(version_dir / "eval.md", render_markdown(report).encode())
    return figures


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def card_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a dataset card says about its model's value (from the model's ``eval.json``): the headline
    figures with their targets, the gain over classical augmentation at every k, the long-tail gain."""

    def pp(stat: Mapping[str, Any] | None) -> str | None:
        return f"{stat['mean']:+.2f} ± {stat['std']:.2f} pp" if stat else None

    def value(name: str) -> Any:
        return (report.get(name) or {}).get("value")

    def by_k(name: str) -> dict[str, str | None]:  # in k order (eval.json stores keys sorted as text)
        stats = (report.get(name) or {}).get("by_k") or {}
        return {k: pp(stats[k]) for k in sorted(stats, key=int)}

    lt = report.get("long_tail_gain") or {}
    return {
        "evaluated_on": f"{report.get('dataset')} test, seeds {report.get('seeds')}"
        + (" (FAST smoke run)" if report.get("fast") else ""),
        "classifier_test_accuracy": (report.get("classifier") or {}).get("test_accuracy"),
        "label_fidelity": value("label_fidelity"),
        "cas_ratio": value("cas_ratio"),
        "fid": value("fid"),
        "fid_floor": (report.get("fid") or {}).get("floor"),
        "near_copies": value("memorisation"),
        "gain_over_classical_by_k": by_k("gain_over_classical"),
        "gain_without_augmentation_by_k": by_k("augmentation_gain"),
        "long_tail_gain": pp({"mean": lt["value"], "std": lt.get("std") or 0.0})
        if lt.get("value") is not None
        else None,
        "long_tail_gain_half_real": pp(lt["gain_mixed_pp"]) if lt.get("gain_mixed_pp") else None,
        "long_tail_ceiling": pp(lt["ceiling_pp"]) if lt.get("ceiling_pp") else None,
        "protocols": {
            name: (report.get(name) or {}).get("protocol")
            for name in ("gain_over_classical", "long_tail_gain")
            if (report.get(name) or {}).get("protocol")
        },
    }
