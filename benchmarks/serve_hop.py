"""What one Serve deployment hop costs on this machine: deployment A awaits an empty method of B.

    python -m benchmarks.serve_hop [--ingress haproxy|proxy] [--calls 500]

Reference for the lone-request path (``Ingress._answer``): the hop from the ingress to the generator
costs more than a small forward pass, so a lone small request is answered by the ingress itself.
Prints p50/p90 in ms of a plain method call and of a ``@serve.batch`` method call (13 kB payload, about
a 64-sample JSON body), each measured twice; the local Ray gets the ingress settings as ``genaug serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from jobs.rayinit import DEFAULT_INGRESS, INGRESSES, ray_session, select_ingress

PAYLOAD = b"x" * 13_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ingress", choices=list(INGRESSES), default=DEFAULT_INGRESS, help="as genaug serve")
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args(argv)
    select_ingress(args.ingress)
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class B:
        async def ping(self, x: bytes) -> bytes:
            return x

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def batched(self, xs: list[bytes]) -> list[bytes]:
            return xs

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class A:
        def __init__(self, b):
            self.b = b

        async def run(self, n: int, method: str) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                await getattr(self.b, method).remote(PAYLOAD)
                out.append((time.perf_counter() - t0) * 1000)
            return out

    async def measure(handle) -> None:
        try:
            for method in ("ping", "batched", "ping", "batched"):
                await handle.run.remote(50, method)  # warm-up
                ms = await handle.run.remote(args.calls, method)
                p50, p90 = np.percentile(ms, [50, 90])
                print(f"{args.ingress}: {method}: p50 {p50:.2f} ms, p90 {p90:.2f} ms")
        finally:
            serve.shutdown()  # inside the loop: the handle's router lives on it

    with ray_session():
        asyncio.run(measure(serve.run(A.bind(B.bind()), name="hop", route_prefix=None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
