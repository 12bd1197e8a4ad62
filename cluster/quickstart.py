"""``genaug quickstart`` (``make demo``): the whole product on the embedded default, in a few minutes.

Trains ``digits-cvae`` and ``digits-cgan`` with Ray Train on 2 workers, starts the service on
127.0.0.1, submits one job per model over HTTP, follows them with progress bars, and prints where the
datasets are, their per-class counts, the sample grids and what to try next. Leaves nothing running.
"""

from __future__ import annotations

import argparse
import time

from cluster.client import Client
from cluster.service import local_service
from jobs.evaluate import quick_summary, summary_table
from jobs.rayinit import ray_session, select_ingress
from jobs.store.location import resolve_home
from jobs.train import TrainSettings, train

MODELS = (("digits-cvae", "cvae"), ("digits-cgan", "cgan"))


def run(args: argparse.Namespace) -> int:

    select_ingress()  # the default ingress (HAProxy), chosen before Ray Serve is imported

    home = resolve_home(args.home)
    t0 = time.perf_counter()
    print(f"genaug quickstart - storage root {home}\n")

    with ray_session():  # one local Ray for training and then the service (train first: it needs both CPUs)
        trained = []
        for name, kind in MODELS:
            print(f"1. training {name} ({kind}) on digits with Ray Train, 2 workers ...", flush=True)
            info = train(TrainSettings(model=kind, dataset="digits", name=name, workers=2), home)
            trained.append(info)
            print(f"   registered {info['ref']} in {info['train_time_s']:.0f} s\n", flush=True)
        print("   quality (quick check against the real digits test split):", flush=True)
        t_q = time.perf_counter()

        for line in summary_table([quick_summary(home, info["ref"]) for info in trained]):
            print("     " + line)
        print(f"   ({time.perf_counter() - t_q:.0f} s)\n", flush=True)
        with local_service(str(home)) as url:
            client = Client(url, token="")
            print(
                f"2. service up at {url}; submitting {args.per_class} samples per class from each model",
                flush=True,
            )
            jobs = [
                client.submit_job({"model": info["ref"], "per_class": args.per_class, "seed": 0})
                for info in trained
            ]
            finished = [
                client.wait(job["id"], label=info["ref"]) for job, info in zip(jobs, trained, strict=False)
            ]
            print()
            ok = True
            for job, info in zip(finished, trained, strict=False):
                if job["status"] != "succeeded":
                    print(f"   {info['ref']}: job {job['id']} {job['status']}: {job.get('error')}")
                    ok = False
                    continue
                totals = job["result"]["totals"]
                print(f"   {info['ref']}: {totals['rows']:,} rows -> {job['output']}")
                print("     per class: " + ", ".join(f"{k}={v}" for k, v in totals["per_class"].items()))
                grid = home.join("models", info["name"], f"v{info['version']}", "samples.png")
                print(f"     sample grid: {grid}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s; nothing left running.\n")
    out = finished[-1]["output"] if finished else (home / "datasets").uri
    print("Next:")
    print(
        "  genaug serve                                   # the API on http://127.0.0.1:8000 (docs at /docs)"
    )
    print("  curl -s -X POST localhost:8000/v1/samples -H 'Content-Type: application/json' \\")
    print('       -d \'{"model": "digits-cgan", "per_class": 10, "format": "png"}\' -o grid.png')
    print("  curl -s -X POST localhost:8000/v1/jobs -H 'Content-Type: application/json' \\")
    print('       -d \'{"model": "digits-cgan", "per_class": 10000}\'')
    print(
        f"  python -c \"import pandas as pd; df = pd.read_parquet('{out}/data'); "
        'print(df.label_name.value_counts())"'
    )
    return 0 if ok else 1
