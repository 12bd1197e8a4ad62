"""GPU figures: training images/s and generation rows/s on one GPU, and scaling over Ray Train workers.

    python -m benchmarks.gpu [--epochs 5] [--rows 200000] [--compile] [--out gpu_results.json]

Needs CUDA (run it on a GPU machine; ``make bench`` does not). Each row is side by side with the plainest
baseline on the same card, in the same run:
- training img/s: ``genaug train --gpu`` (Ray Train, 1 GPU worker: NCCL, bf16 autocast, channels_last,
  pinned memory) vs one plain PyTorch process on the same GPU (bf16, same model and global batch), for the
  cVAE and the cGAN on digits (8x8 MLPs) and on shapes:32 (32x32 RGB conv nets);
- scaling: img/s with N Ray Train workers / 1 worker, N = 2..number of GPUs (only with several GPUs);
- generation rows/s, submit -> ``_SUCCESS``: the job pipeline with 4 generator replicas sharing the GPU
  (0.25 each) vs forward on the GPU + PNG + ``pq.write_table`` in one process.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Row, register_default_model, scratch_home

TRAIN_CASES = [("cvae", "digits"), ("cgan", "digits"), ("cvae", "shapes:32"), ("cgan", "shapes:32")]


def card() -> str:
    """The GPU's name and count, e.g. ``1x NVIDIA H200``."""
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


def _train_ips(
    home: Path, kind: str, dataset: str, epochs: int, workers: int, compile_: bool = False
) -> float:
    """Median per-epoch img/s of ``genaug train --gpu`` (the registered version's figure)."""
    from jobs.train import TrainSettings, train

    settings = TrainSettings(
        model=kind,
        dataset=dataset,
        name=f"gpu-{kind}-{dataset.replace(':', '-')}-{workers}{'-compiled' if compile_ else ''}",
        workers=workers,
        gpu=True,
        compile=compile_,
        epochs=epochs,
        checkpoint_every=epochs,
    )
    return train(settings, home, quiet=True)["images_per_s"]


def training_rows(home: Path, epochs: int) -> list[Row]:
    from benchmarks.training import plain_images_per_s, recipe_batch

    rows = []
    for kind, dataset in TRAIN_CASES:
        batch = recipe_batch(kind, dataset)
        rows.append(
            Row(
                f"GPU training img/s, {kind} on {dataset}: Ray Train 1 GPU worker vs plain PyTorch",
                _train_ips(home, kind, dataset, epochs, 1),
                plain_images_per_s(kind, epochs, dataset=dataset, device="cuda"),
                "img/s",
                ">= 0.85",
                f"{card()}; global batch {batch}; bf16",
            )
        )
    n = torch.cuda.device_count()
    kind, dataset = TRAIN_CASES[-1]
    one = _train_ips(home, kind, dataset, epochs, 1) if n > 1 else None
    for workers in range(2, n + 1):
        rows.append(
            Row(
                f"GPU scaling, {kind} on {dataset}: {workers} workers vs 1 (img/s)",
                _train_ips(home, kind, dataset, epochs, workers),
                one,
                "img/s",
                f">= {0.85 * workers:.2f}",
                card(),
            )
        )
    return rows


def compile_rows(home: Path, epochs: int) -> list[Row]:
    kind, dataset = TRAIN_CASES[-1]
    return [
        Row(
            f"GPU training img/s, {kind} on {dataset}: --compile vs eager (Ray Train, 1 GPU)",
            _train_ips(home, kind, dataset, epochs, 1, compile_=True),
            _train_ips(home, kind, dataset, epochs, 1),
            "img/s",
            ">= 1.0",
            f"{card()}; median epoch after the first (compilation excluded)",
        )
    ]


def generation_rows(home: Path, rows: int, shard_rows: int) -> list[Row]:
    from benchmarks.generation import job_rows_per_s, plain_loop
    from cluster.client import Client
    from cluster.service import deploy, free_port, undeploy

    ref = register_default_model(home)
    app = {"min_replicas": 4, "max_replicas": 4, "gpu_per_replica": 0.25}
    url = deploy(str(home), "127.0.0.1", free_port(), app)
    try:
        client = Client(url, token="")
        job_rows_per_s(client, ref, 40_000, shard_rows)  # warm-up: every replica loads the model
        ours, _ = job_rows_per_s(client, ref, rows, shard_rows)
        device = client.request("GET", "/v1/stats")["generator"].get("device", "?")
    finally:
        undeploy()
    plain = plain_loop(home, ref, rows, shard_rows, write=True, device="cuda")
    return [
        Row(
            f"GPU generation rows/s, submit -> _SUCCESS ({rows:,} rows): 4 replicas x 0.25 GPU vs plain loop",
            ours,
            plain,
            "rows/s",
            ">= 0.8",
            f"{card()}; replicas on {device}; plain: forward on GPU + PNG + write_table, one process",
        )
    ]


def run(epochs: int, rows: int, shard_rows: int, compile_: bool, out: Path, command: str = "") -> list[Row]:
    """Measure every section; rows are written to ``out`` as they come, and a failing section is recorded."""
    from jobs.rayinit import ray_session

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA device (none is visible here)")
    t0, done, errors = time.perf_counter(), [], []

    def save() -> None:
        result = {
            "card": card(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.perf_counter() - t0),
            "command": command,
            "rows": [r.to_dict() for r in done],
            "errors": errors,
        }
        out.write_text(json.dumps(result, indent=2))

    with scratch_home("genaug-gpu-bench-") as home, ray_session():
        sections = [lambda: generation_rows(home, rows, shard_rows), lambda: training_rows(home, epochs)]
        if compile_:
            sections.append(lambda: compile_rows(home, epochs))
        for section in sections:
            try:
                done.extend(section())
            except Exception as e:  # keep what the other sections measured
                errors.append(f"{type(e).__name__}: {e}")
            save()
    return done


def render(result: dict) -> str:
    """The ``## GPU`` section of RESULTS.md (benchmarks/GPU.md) from a gpu_results.json."""
    lines = [
        "## GPU (benchmarks/gpu.py)",
        "",
        f"- card: {result['card']}; torch {result['torch']}; {result['date']}; {result['seconds']} s",
        f"- command: `{result.get('command') or 'python -m benchmarks.gpu'}` on a lent GPU machine",
        "",
        "| benchmark | genaug | baseline | unit | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "n/a" if r["met"] is None else ("yes" if r["met"] else "NO")
        baseline = "" if r["baseline"] is None else f"{r['baseline']:,.0f}"
        cells = [r["name"], f"{r['genaug']:,.0f}", baseline, r["unit"], ratio, r["target"], met, r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- error: {e}" for e in result.get("errors", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs per training run (default 5)")
    p.add_argument("--rows", type=int, default=200_000, help="rows of the generation job (default 200,000)")
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--compile", action="store_true", help="also measure --compile against eager")
    p.add_argument("--out", default="benchmarks/gpu_results.json", help="where to write the rows (JSON)")
    p.add_argument("--render", metavar="JSON", help="only print the Markdown section for a results file")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())), end="")
        return 0
    command = shlex.join(["python", "-m", "benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)])
    run(args.epochs, args.rows, args.shard_rows, args.compile, Path(args.out), command)
    print(render(json.loads(Path(args.out).read_text())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
