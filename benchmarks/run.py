"""``make bench``: every benchmark side by side, written to benchmarks/results.json and RESULTS.md.

    python -m benchmarks.run [--only generation,serving,serving-proxy,audit-serving,training,loader] [--quick]

Each row compares genaug with the plainest way to do the same work, measured in the same run: ratios are
what hold on a noisy 2-core machine; absolute figures count only on a GPU (benchmarks/gpu.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = ("generation", "serving", "serving-proxy", "audit-serving", "training", "loader")
OPTIONAL = ("load",)  # only with --only: benchmarks/load.py (60 s, 50 clients; --quick: 10 s, 10)


def _rows(suite: str, quick: bool) -> list[dict]:
    if suite == "generation":
        from benchmarks import generation

        return [r.to_dict() for r in generation.run(rows=50_000 if quick else 100_000, memory=not quick)]
    if suite in ("serving", "serving-proxy"):  # own processes: the ingress is chosen before Ray starts
        cmd = [sys.executable, "-m", "benchmarks.serving", "--requests", "50" if quick else "200"]
        cmd += ["--ingress", "proxy"] if suite == "serving-proxy" else []
        return _process_rows(cmd)
    if suite == "audit-serving":  # its own process too, for the same reason
        return _process_rows(
            [sys.executable, "-m", "benchmarks.audit_serving", "--requests", "30" if quick else "100"]
        )
    if suite == "load":
        from benchmarks import load

        return load.rows(quick)
    if suite == "training":
        from benchmarks import training

        return [r.to_dict() for r in (training.run(5, 2) if quick else training.run())]
    from benchmarks import loader_bench

    return loader_bench.run()


def _process_rows(cmd: list[str]) -> list[dict]:
    """The rows a benchmark module prints as JSON, run as its own process."""
    return json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)


def write_results(rows: list[dict], command: str, started: float) -> None:
    import pyarrow
    import ray
    import torch

    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Benchmark results",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores, no GPU"
        if not torch.cuda.is_available()
        else f"- machine: {torch.cuda.get_device_name(0)}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"pyarrow {pyarrow.__version__}",
        f"- command: `{command}` ({time.time() - started:.0f} s)",
        "- GPU: these rows ran on the CPU; the GPU figures (benchmarks/gpu.py) are in the GPU section below.",
        "",
        "| benchmark | genaug | baseline | unit | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v: "" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v))  # noqa: E731
        lines.append(
            f"| {r['name']} | {fmt(r['genaug'])} | {fmt(r['baseline'])} | {r['unit']} | "
            f"{fmt(r.get('ratio'))} | {r['target']} | {_met(r.get('met'))} | "
            f"{r.get('note', '')} |"
        )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n" + _notes())


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def _notes() -> str:
    """Sections appended to RESULTS.md: how to read it, the GPU figures, and the quality figures."""
    parts = [HERE / "NOTES.md", HERE / "GPU.md", HERE / "QUALITY.md"]
    return "".join("\n" + p.read_text() for p in parts if p.exists())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = p.parse_args(argv)
    started = time.time()
    rows: list[dict] = []
    for suite in args.only.split(","):
        if suite not in SUITES + OPTIONAL:
            print(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}", file=sys.stderr)
            return 2
        print(f"== {suite}", flush=True)
        rows += _rows(suite, args.quick)
    write_results(rows, "python -m benchmarks.run " + " ".join(argv or sys.argv[1:]), started)
    for r in rows:
        print(
            f"{r['name']}: {r['genaug']:.2f} vs {r['baseline'] if r['baseline'] is not None else '-'} "
            f"{r['unit']} ratio={r.get('ratio')} target {r['target']} met={r.get('met')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
