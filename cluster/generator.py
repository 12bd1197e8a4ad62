"""The generator deployment: replicas that hold model versions and make samples, inline or shard by shard.

One pool of models serves both paths: ``sample_encoded`` answers ``POST /v1/samples`` with finished
response bodies (concurrent requests are merged by ``@serve.batch`` into one forward pass per model;
the ingress also sends the requests that reach it together as one call), and ``generate_shard`` writes
one Parquet shard of a generation job for the queue's dispatcher. Models load on first use and the most
recently used ``cache_size`` versions stay in memory (an LRU, ``Sampler``). The ingress holds a
``Sampler`` too and answers a lone small request itself (see ``Ingress._answer``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from cluster import metrics
from cluster.formats import encode_samples
from jobs.generate import ShardTask, run_shard
from jobs.metrics import label_filter
from jobs.store.registry import ModelUnavailable, Registry
from models.sampling import generate_many_uint8

__all__ = ["Generator", "ModelUnavailable", "SampleRequest", "Sampler"]

INLINE_SAMPLES = 256  # a merged batch up to this many samples runs on the event loop (about a ms on CPU):
# handing it to a worker thread costs two thread wake-ups, 0.3 ms at p50 but 5 ms at p90 on a busy 2-core box


@dataclass(frozen=True)
class SampleRequest:
    model: str  # "name:vK" (resolved by the caller)
    labels: tuple[int, ...]
    seed: int
    temperature: float
    format: str | None = None  # None: the uint8 array; "npz" | "json" | "png": that response body (bytes)

    @classmethod
    def inline(cls, r: dict[str, Any]) -> SampleRequest:
        """From the ingress's ``{model, counts, seed, temperature, format}`` (counts per class index)."""
        labels = np.repeat(np.arange(len(r["counts"])), r["counts"])
        return cls(r["model"], tuple(labels.tolist()), int(r["seed"]), float(r["temperature"]), r["format"])


class Sampler:
    """Model versions held in memory (an LRU of ``cache_size``) and the inline sample work, in any process.

    A generator replica holds one; so does the ingress, which answers a lone small request itself
    (``Ingress.local``): the same code on the same CPU gives the same bytes either way.
    """

    def __init__(self, home: str, cache_size: int = 4, device: str | None = None):
        self.registry = Registry(home)
        self.cache_size = cache_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._models: collections.OrderedDict[str, tuple[Any, list[str]]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.load_times: dict[str, float] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    def model(self, ref: str) -> torch.nn.Module:
        """The loaded model for ``name:vK`` (LRU cache); ``ModelUnavailable`` when it cannot be loaded."""
        return self._entry(ref)[0]

    def classes(self, ref: str) -> list[str]:
        """Class names of ``name:vK`` (kept with its model: a published version never changes)."""
        return self._entry(ref)[1]

    def _entry(self, ref: str) -> tuple[Any, list[str]]:
        with self._lock:
            if ref in self._models:
                self._models.move_to_end(ref)
                return self._models[ref]
            mv = self.registry.resolve(ref)
            t0 = time.perf_counter()
            try:
                model = mv.load(device=str(self.device)).model  # downloaded first from an object store
                entry = (model, list(mv.info["classes"]))
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
                raise ModelUnavailable(f"model {ref} is unavailable: {e}") from None
            self.load_times[ref] = time.perf_counter() - t0
            metrics.model_loaded(ref, self.load_times[ref])
            self._models[ref] = entry
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
            return entry

    def sample_many(self, requests: list[SampleRequest]) -> list[np.ndarray | bytes]:
        """One forward pass per (model, temperature) group; each request keeps its own noise.

        Requests with a ``format`` get their encoded response body, made here too. Recorded as one
        batch per model (``metrics.sample_batch``), wherever it runs.
        """
        t0 = time.perf_counter()
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
        for i, r in enumerate(requests):
            if r.format is not None:
                labels = np.asarray(r.labels, np.int64)
                out[i] = encode_samples(out[i], labels, self.classes(r.model), r.format, r.model)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        for model, n in collections.Counter(r.model for r in requests).items():
            metrics.sample_batch(model, n, seconds)
        return out  # type: ignore[return-value]

    def filtered(self, ref: str, labels, seed: int, temperature: float) -> np.ndarray:
        """``filter: "label"``: samples the domain classifier reads as their label (the label filter)."""

        classifier = label_filter.model_classifier(self.registry.home, ref)
        labels = np.asarray(labels, np.int64)
        return label_filter.filtered_uint8(self.model(ref), classifier, labels, int(seed), temperature)[0]


class Generator:
    """Serve replica body (wrapped by ``serve.deployment`` in ``cluster.serve_app``)."""

    def __init__(
        self,
        home: str,
        cache_size: int = 4,
        device: str | None = None,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.0,
    ):
        self.sampler = Sampler(home, cache_size, device)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.shards_written = 0
        self._sample_batch.set_max_batch_size(max_batch_size)  # 1 turns batching off (benchmarks)
        # 0: no waiting for company; requests that arrive while a forward pass runs form the next batch
        self._sample_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def generate_shard(self, task: dict) -> dict:
        """Write one shard of a job (in a worker thread so the replica stays responsive)."""
        t = ShardTask.from_dict(task)
        model = self.sampler.model(t.model)
        info = await asyncio.to_thread(run_shard, model, t, home=self.sampler.registry.home)
        self.shards_written += 1
        return {**info, "worker": worker_identity()}  # the queue records who wrote each shard

    async def sample(
        self, model: str, labels: list[int], seed: int, temperature: float = 1.0, filter: str | None = None
    ) -> np.ndarray:
        """uint8 images (N, H, W, C) for ``labels``; identical for identical (model, labels, seed, filter)."""
        self.sampler.model(model)  # load errors surface here, outside the batch
        if filter is not None:
            return await asyncio.to_thread(self.sampler.filtered, model, labels, seed, temperature)
        return await self._sample_batch(SampleRequest(model, tuple(labels), int(seed), float(temperature)))

    async def sample_encoded(self, requests: list[dict[str, Any]]) -> list[bytes | Exception]:
        """Response bodies for inline requests ``{model, counts, seed, temperature, format, filter?}``.

        ``counts`` are rows per class index (labels in class order); a request whose model cannot be
        loaded gets its exception in its place, the others are unaffected. Filtered requests
        (``filter: "label"``) are rejection-sampled one by one in a worker thread, never batched.
        """

        async def one(r: dict[str, Any]) -> bytes:
            req = SampleRequest.inline(r)
            self.sampler.model(req.model)  # load errors surface here, outside the batch
            if r.get("filter"):
                labels, classes = np.asarray(req.labels, np.int64), self.sampler.classes(req.model)
                images = await asyncio.to_thread(
                    self.sampler.filtered, req.model, labels, req.seed, req.temperature
                )
                return encode_samples(images, labels, classes, req.format, req.model)
            return await self._sample_batch(req)

        return list(await asyncio.gather(*(one(r) for r in requests), return_exceptions=True))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _sample_batch(self, requests: list[SampleRequest]) -> list[np.ndarray | bytes]:
        self.batch_sizes.append(len(requests))
        if sum(len(r.labels) for r in requests) <= INLINE_SAMPLES:
            return self.sampler.sample_many(requests)
        return await asyncio.to_thread(self.sampler.sample_many, requests)

    def stats(self) -> dict[str, Any]:
        """What this replica did: batch sizes of merged sample calls, shards written, loaded models."""
        sizes = list(self.batch_sizes)
        return {
            **worker_identity(),
            "device": str(self.sampler.device),
            "batches": len(sizes),
            "max_batch_size": max(sizes, default=0),
            "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
            "shards_written": self.shards_written,
            "models_loaded": self.sampler.loaded,
            "load_times_s": dict(self.sampler.load_times),
        }


def worker_identity() -> dict[str, str | int | None]:
    """Which process wrote something: Ray node id (None outside Ray), host name and pid."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid()}
