"""A model registration and a generation job through the real commit code, in one process, for strace.

``python -m tests.jobs.store.crash_driver HOME`` registers ``crash-cvae`` (the registry's folder rename),
then runs a 3-shard job through the real queue owner (``cluster.dispatcher.QueueOwner``: SQLite queue,
shard records, finalize, ``complete``) and the real generator replica body (``cluster.generator.Generator``:
``run_shard`` writing each shard); only Serve's transport between them is replaced by an in-process
handle, so that the whole commit path runs in one traceable process tree without Ray. Prints the job id.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.conftest import register_untrained


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Future:
        return asyncio.ensure_future(self.fn(*args))


class _Handle:
    """Stands in for ``DeploymentHandle`` to the generator deployment."""

    def __init__(self, generator: Any) -> None:
        self.generate_shard = _Method(generator.generate_shard)


async def _run_job(home: str) -> str:
    from ray import serve

    from cluster.dispatcher import QueueOwner
    from cluster.generator import Generator

    handle = _Handle(Generator(home, cache_size=1, device="cpu"))
    serve.get_deployment_handle = lambda *args, **kwargs: handle
    owner = QueueOwner(home, poll_s=0.05)
    job = await owner.submit({"model": "crash-cvae", "per_class": 2, "shard_rows": 7, "seed": 3})
    done = await owner.wait(job["id"], timeout_s=120)
    if done["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {done['status']}: {done.get('error')}")
    return job["id"]


def main(home: str) -> None:
    register_untrained(Path(home), "crash-cvae", "cvae")
    print(asyncio.run(_run_job(home)))


if __name__ == "__main__":
    main(sys.argv[1])
