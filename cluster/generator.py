"""The generator deployment: replicas that hold model versions and make samples, inline or shard by shard.

One pool of models serves both paths: ``sample`` answers ``POST /v1/samples`` (concurrent requests are
merged by ``@serve.batch`` into one forward pass per model), and ``generate_shard`` writes one Parquet
shard of a generation job for the queue's dispatcher. Models load on first use and the most recently
used ``cache_size`` versions stay in memory (an LRU).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from jobs.generate import ShardTask, generate_many_uint8, run_shard
from jobs.registry import Registry


class ModelUnavailable(ValueError):
    """A registered version whose checkpoint cannot be loaded (corrupted, truncated, missing file)."""


@dataclass(frozen=True)
class SampleRequest:
    model: str  # "name:vK" (resolved by the caller)
    labels: tuple[int, ...]
    seed: int
    temperature: float


class Generator:
    """Serve replica body (wrapped by ``serve.deployment`` in ``cluster.serve_app``)."""

    def __init__(self, home: str, cache_size: int = 4, device: str | None = None, max_batch_size: int = 32):
        self.registry = Registry(home)
        self.cache_size = cache_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._models: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.shards_written = 0
        self.load_times: dict[str, float] = {}
        self._sample_batch.set_max_batch_size(max_batch_size)  # 1 turns batching off (benchmarks)

    def model(self, ref: str) -> torch.nn.Module:
        """The loaded model for ``name:vK`` (LRU cache); ``ModelUnavailable`` when it cannot be loaded."""
        from models.checkpoint import load_checkpoint

        with self._lock:
            if ref in self._models:
                self._models.move_to_end(ref)
                return self._models[ref]
            mv = self.registry.resolve(ref)
            t0 = time.perf_counter()
            try:
                model = load_checkpoint(mv.path, device=str(self.device)).model
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
                raise ModelUnavailable(f"model {ref} is unavailable: {e}") from None
            self.load_times[ref] = time.perf_counter() - t0
            self._models[ref] = model
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
            return model

    async def generate_shard(self, task: dict) -> dict:
        """Write one shard of a job (in a worker thread so the replica stays responsive)."""
        t = ShardTask.from_dict(task)
        model = self.model(t.model)
        info = await asyncio.to_thread(run_shard, model, t, home=self.registry.home)
        self.shards_written += 1
        return info

    async def sample(
        self, model: str, labels: list[int], seed: int, temperature: float = 1.0, filter: str | None = None
    ) -> np.ndarray:
        """uint8 images (N, H, W, C) for ``labels``; identical for identical (model, labels, seed, filter).

        ``filter="label"``: rejection sampling through the domain classifier (``jobs.quality``), unbatched.
        """
        m = self.model(model)  # load errors surface here, outside the batch
        if filter is not None:
            from jobs import quality

            def filtered() -> np.ndarray:
                clf = quality.model_classifier(self.registry.home, model)
                return quality.filtered_uint8(m, clf, np.asarray(labels, np.int64), int(seed), temperature)[0]

            return await asyncio.to_thread(filtered)
        return await self._sample_batch(SampleRequest(model, tuple(labels), int(seed), float(temperature)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _sample_batch(self, requests: list[SampleRequest]) -> list[np.ndarray]:
        self.batch_sizes.append(len(requests))
        return await asyncio.to_thread(self._sample_many, requests)

    def _sample_many(self, requests: list[SampleRequest]) -> list[np.ndarray]:
        """One forward pass per (model, temperature) group; each request keeps its own noise."""
        out: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[str, float], list[int]] = collections.defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.model, r.temperature)].append(i)
        for (ref, temperature), idx in groups.items():
            images = generate_many_uint8(
                self.model(ref),
                [np.asarray(requests[i].labels, np.int64) for i in idx],
                [requests[i].seed for i in idx],
                temperature,
            )
            for i, img in zip(idx, images, strict=False):
                out[i] = img
        return out  # type: ignore[return-value]

    def stats(self) -> dict[str, Any]:
        """What this replica did: batch sizes of merged sample calls, shards written, loaded models."""
        sizes = list(self.batch_sizes)
        return {
            "pid": os.getpid(),
            "batches": len(sizes),
            "max_batch_size": max(sizes, default=0),
            "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
            "shards_written": self.shards_written,
            "models_loaded": list(self._models),
            "load_times_s": dict(self.load_times),
        }
