"""Streaming loader vs "read everything" baseline: throughput and peak memory.

    python -m benchmarks.loader_bench              # ~50k and 200k rows of 8x8 grey, about a minute

What is compared (same files, same process, warm page cache, best of ``repeats``):

- genaug: ``jobs.store.loader.ShardStream(folder)`` iterated in the main process (no DataLoader), yielding
  ``(image (1, 8, 8) float32 in [-1, 1], label)`` per row, row group by row group.
- baseline: ``pyarrow.parquet.read_table(folder/data, columns=[image, label])``, then PIL decodes
  every PNG to numpy, then one vectorised conversion of the stacked batch to a float32 tensor in
  [-1, 1] (what a user writes by hand; it keeps the whole dataset in memory).

Memory: each reader runs in a fresh subprocess on 50k and on 200k rows. "Peak" is tracemalloc's peak
(Python and numpy allocations) plus the Arrow memory pool's peak (``max_memory``), measured around the
read; RSS growth (peak ``ru_maxrss`` minus RSS after imports) is reported too. Targets: throughput
ratio genaug / baseline >= 0.8; genaug's peak for 200k rows <= 1.5x its peak for 50k rows.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = [str(i) for i in range(10)]
SHARD_ROWS = 10_000
_ROOT = Path(__file__).resolve().parent.parent


def make_dataset(out: Path, rows: int, seed: int = 0) -> Path:
    """A finished genaug dataset of ``rows`` random 8x8 grey images in shards of 10k rows."""
    from jobs.store.manifest import finalize_dataset
    from jobs.store.png import encode_pngs
    from jobs.store.shards import write_shard

    rng = np.random.default_rng(seed)
    n = -(-rows // SHARD_ROWS)
    pngs = encode_pngs(rng.integers(0, 256, (SHARD_ROWS, 8, 8), dtype=np.uint8))  # reused by every shard
    labels = rng.integers(0, 10, SHARD_ROWS)
    infos = []
    for k in range(n):
        m = min(SHARD_ROWS, rows - k * SHARD_ROWS)
        infos.append(write_shard(out, k, n, pngs[:m], labels[:m], CLASSES, "bench:v1", k))
    finalize_dataset(out, {"job_id": out.name}, {"model": "bench:v1"}, infos, CLASSES, 1.0)
    return out


def read_genaug(folder: Path, **kw: Any) -> int:
    """Iterate the streaming loader once; returns the rows seen."""
    from jobs.store.loader import ShardStream

    n = 0
    for _image, _label in ShardStream(folder, **kw):
        n += 1
    return n


def read_baseline(folder: Path) -> Any:
    """read_table + PIL decode of every row, then one float tensor (N, 1, H, W) in [-1, 1] and labels."""
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    table = pq.read_table(folder / "data", columns=["image", "label"])
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    arrays = [np.asarray(Image.open(io.BytesIO(b))) for b in blobs]
    x = torch.from_numpy(np.stack(arrays)).unsqueeze(1).float().div_(127.5).sub_(1.0)  # (N, 1, H, W)
    return x, torch.from_numpy(table.column("label").to_numpy())


def _rate(fn, rows: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return rows / best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(kind: str, folder: str) -> dict[str, float]:
    """Run one reader and measure its memory (called in a fresh subprocess)."""
    import tracemalloc

    import pyarrow as pa
    import torch  # noqa: F401 - imported before the baseline RSS is taken

    rss0 = _rss_bytes()
    tracemalloc.start()
    result = read_genaug(Path(folder)) if kind == "genaug" else read_baseline(Path(folder))
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return {
        "peak_bytes": py_peak + pa.default_memory_pool().max_memory(),
        "rss_growth_bytes": max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0),
    }


def _measure_memory(kind: str, folder: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader_bench", "--child", kind, str(folder)],
        cwd=_ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(name: str, genaug: float, baseline: float, unit: str, target: str, ok: bool | None) -> dict:
    ratio = genaug / baseline if baseline else float("nan")
    return {"name": name, "genaug": genaug, "baseline": baseline, "unit": unit, "ratio": ratio,
            "target": target, "met": ok}  # fmt: skip


def run(
    rows: int = 50_000, big_rows: int = 200_000, repeats: int = 3, workdir: str | None = None
) -> list[dict]:
    """Measure; returns rows {name, genaug, baseline, unit, ratio, target, met}.

    Throughput rows compare the loader (``genaug``) with the baseline. Memory rows compare one reader at
    two sizes: ``genaug`` holds its value at ``big_rows``, ``baseline`` at ``rows`` (ratio = growth).
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        small = make_dataset(Path(tmp) / "small", rows)
        big = make_dataset(Path(tmp) / "big", big_rows)
        read_genaug(small)  # warm the page cache and imports
        read_baseline(small)
        g = _rate(lambda: read_genaug(small), rows, repeats)
        b = _rate(lambda: read_baseline(small), rows, repeats)
        gs = _rate(lambda: read_genaug(small, shuffle_buffer=1000), rows, repeats)
        out = [
            _row(f"throughput, {rows:,} rows 8x8 grey", g, b, "rows/s", ">= 0.8", g / b >= 0.8),
            _row(f"throughput, shuffle_buffer=1000, {rows:,} rows", gs, b, "rows/s", ">= 0.8", gs / b >= 0.8),
        ]
        mem = {
            (k, n): _measure_memory(k, d)
            for k in ("genaug", "baseline")
            for n, d in (("s", small), ("b", big))
        }
    mb = 1e6
    for key, label in (
        ("peak_bytes", "peak memory (tracemalloc + Arrow pool)"),
        ("rss_growth_bytes", "RSS growth"),
    ):
        g_big, g_small = mem["genaug", "b"][key] / mb, mem["genaug", "s"][key] / mb
        b_big, b_small = mem["baseline", "b"][key] / mb, mem["baseline", "s"][key] / mb
        ok = g_big / g_small <= 1.5 if g_small else None
        out.append(_row(f"loader {label}: {big_rows:,} vs {rows:,} rows", g_big, g_small, "MB", "<= 1.5", ok))
        out.append(_row(f"read_table {label}: {big_rows:,} vs {rows:,} rows (reference)", b_big, b_small,
                        "MB", "n/a", None))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the measurements as a table (``--child KIND FOLDER`` is the internal memory probe)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(_child(argv[1], argv[2])))
        return 0
    for r in run():
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['name']:<62} genaug {r['genaug']:>10.1f}  baseline {r['baseline']:>10.1f} {r['unit']:<6} "
              f"ratio {r['ratio']:.2f} (target {r['target']}, met: {met})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
