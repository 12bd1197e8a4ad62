"""/v1/score for 64 images vs /v1/samples for 64 samples: p50 latency over HTTP, side by side in one run.

    python -m benchmarks.audit_serving [--requests 100] [--ingress haproxy|proxy]

The service is deployed as ``genaug serve`` deploys it (local Ray, one generator replica) over a scratch
root with the default digits cVAE (untrained: the same cost as a trained one). Requests alternate (score,
samples, score, ...) on one keep-alive connection each, so load from other processes hits both alike.
The 64 images are the first 64 of the digits test split, sent as base64 PNGs with their labels (json).

Rows:
- ``/v1/score`` p50 at K = 32 importance samples (the audits' default, whose percentiles an audit job's
  reference gives) against ``/v1/samples`` p50 for 64 samples (format json), target <= 2x (issue 18);
- the same at K = 1 (the single-sample ELBO; reference);
- what the scoring costs in this process, torch on 1 thread like the replica (reference): scoring is
  C x K decoder passes per image (10 x 32 here) where sampling is one.
"""

from __future__ import annotations

import argparse
import base64
import json
import time

import numpy as np

from benchmarks.common import Row, register_default_model, scratch_home
from benchmarks.serving import COUNTS_64, Conn, _fmt
from jobs.rayinit import DEFAULT_INGRESS, INGRESSES

N_IMAGES = 64


def score_body(model: str, samples: int) -> dict:
    """A /v1/score request: the first 64 digits test images as base64 PNGs with their labels."""
    from jobs.data.spec import load_dataset
    from jobs.store.png import encode_pngs
    from models.sampling import denormalize_uint8

    ds = load_dataset("digits", split="test")
    pngs = encode_pngs(denormalize_uint8(ds.images[:N_IMAGES]))
    labels = ds.labels[:N_IMAGES].tolist()
    images = [{"png": base64.b64encode(p).decode(), "label": y} for p, y in zip(pngs, labels, strict=True)]
    return {"model": model, "images": images, "samples": samples}


def paired_ms(url: str, score_req: dict, samples_req: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(score ms, samples ms) over HTTP, one of each in turn, ``n`` pairs."""
    score_conn, samples_conn = Conn(url), Conn(url)
    score_ms, samples_ms = [], []
    for i in range(n):
        t0 = time.perf_counter()
        score_conn.post("/v1/score", score_req)
        score_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        samples_conn.post("/v1/samples", {**samples_req, "seed": i})
        samples_ms.append((time.perf_counter() - t0) * 1000)
    return np.array(score_ms), np.array(samples_ms)


def in_process_ms(home, ref: str, samples: int, n: int = 20) -> np.ndarray:
    """The generator's own work for the same request (decode, score, JSON), torch on 1 thread."""
    import torch

    from cluster.generator import Sampler

    sampler = Sampler(str(home), device="cpu")
    request = {**score_body(ref, samples), "model": ref}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sampler.score_body(request)  # loads the model
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            sampler.score_body(request)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    return np.array(out)


def run(requests: int = 100) -> list[Row]:
    from cluster.service import deploy, free_port, undeploy
    from jobs.rayinit import ray_session

    rows: list[Row] = []
    with scratch_home() as home, ray_session():
        ref = register_default_model(home, "cvae")
        url = deploy(str(home), "127.0.0.1", free_port(), {"max_replicas": 1})
        try:
            samples_req = {"model": ref, "counts": COUNTS_64, "format": "json"}
            for k, target in ((32, "<= 2"), (1, "n/a")):
                req = score_body(ref, k)
                paired_ms(url, req, samples_req, 10)  # warm-up: the replica and the ingress load the model
                score_ms, samples_ms = paired_ms(url, req, samples_req, requests)
                local = in_process_ms(home, ref, k)
                what = "the audits' default" if k == 32 else "single-sample ELBO; reference"
                rows.append(
                    Row(
                        f"/v1/score 64 images (K={k}, {what}) vs /v1/samples 64 samples: p50",
                        float(np.median(score_ms)),
                        float(np.median(samples_ms)),
                        "ms",
                        target,
                        f"score {_fmt(score_ms)}; samples {_fmt(samples_ms)}; the replica's scoring in "
                        f"process {_fmt(local)} ({10 * k} decoder passes per image vs 1 for a sample)",
                    )
                )
        finally:
            undeploy()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100, help="request pairs per row")
    p.add_argument("--ingress", choices=list(INGRESSES), default=DEFAULT_INGRESS, help="as genaug serve")
    args = p.parse_args(argv)
    from jobs.rayinit import select_ingress

    select_ingress(args.ingress)
    print(json.dumps([r.to_dict() for r in run(args.requests)], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
