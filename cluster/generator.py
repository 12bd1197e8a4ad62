"""The generator deployment: replicas that hold model versions and make samples, inline or shard by shard.

One pool of models serves both paths: ``sample_encoded`` answers ``POST /v1/samples`` with finished
response bodies (concurrent requests are merged by ``@serve.batch`` into one forward pass per model;
the ingress also sends the requests that reach it together as one call), and ``generate_shard`` writes
one Parquet shard of a generation job for the queue's dispatcher. Models load on first use and the most
recently used ``cache_size`` versions stay in memory (an LRU, ``Sampler``). The ingress holds a
``Sampler`` too and answers a lone small request itself (see ``Ingress._answer``).

A cVAE's audit work runs here too, on the same models: ``score`` and ``denoise`` answer ``POST /v1/score``
and ``POST /v1/denoise`` (the images are decoded and checked here, ``decode_images``), and
``audit_reference_scores`` / ``audit_shard`` do an audit job's reference chunks and shards for the queue
(``jobs.audit`` writes the shards, as in ``genaug audit``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import io
import json
import math
import os
import socket
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from cluster import metrics
from cluster.formats import encode_samples
from jobs.audit import load_version_reference, reference_images, shard_inputs
from jobs.auditor.shards import write_audit_shard
from jobs.auditor.spec import AuditSpec, load_images
from jobs.generate import ShardTask, class_index, run_shard
from jobs.metrics import label_filter
from jobs.store.png import decode_png
from jobs.store.registry import ModelUnavailable, Registry
from models.audit import AuditConfig, OutlierReference, check_cvae, reconstruct, reference_scores, score
from models.sampling import denormalize_uint8, generate_many_uint8, normalize_uint8

__all__ = ["Generator", "ModelUnavailable", "SampleRequest", "Sampler"]

SCORE_CHUNK_DECODES = 4096  # decoder passes per forward chunk of /v1/score (images x K): bounds memory
MAX_NPZ_UNPACKED = 64 << 20  # bytes an uploaded npz may inflate to (a 1 MiB body could be a zip bomb)
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
        self._references: dict[tuple[str, int, int], OutlierReference] = {}

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

    def audit_inputs(self, request: dict[str, Any]) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
        """The cVAE of ``request["model"]`` and its checked images as floats (N, C, H, W) in [-1, 1]
        with their labels (N,); ValueError naming a bad image, label or model type."""
        ref = request["model"]
        model = check_cvae(self.model(ref))
        cfg = model.config
        images, labels = decode_images(
            request,
            self.classes(ref),
            (cfg.channels, cfg.image_size, cfg.image_size),
            int(request.get("max_images") or INLINE_CAP),
            ref,
        )
        return model, normalize_uint8(images), labels

    def score_body(self, request: dict[str, Any]) -> bytes:
        """``POST /v1/score``'s JSON body: per image nll, outlier percentiles and score, p(c | x),
        suggested label."""
        ref = request["model"]
        model, x, labels = self.audit_inputs(request)
        k = int(request.get("samples", AuditConfig.samples))
        # the whole request in one forward chunk where it fits (scores do not depend on the chunking)
        chunk = max(1, min(len(labels), SCORE_CHUNK_DECODES // k))
        config = AuditConfig(samples=k, seed=int(request.get("seed", 0)), batch_size=chunk)
        reference = self.reference(ref, config)
        s = score(model, x, torch.from_numpy(labels), config, reference)
        classes = self.classes(ref)
        rows = [
            {
                "label": int(y),
                "label_name": classes[y],
                "nll": float(s.nll[i]),
                "outlier_percentile": _finite(s.outlier[i]) if s.outlier is not None else None,
                "code_nll": float(s.code[i]),
                "code_percentile": _finite(s.code_percentile[i]) if s.code_percentile is not None else None,
                "outlier_score": _finite(s.outlier_score[i]) if s.outlier_score is not None else None,
                "p": [float(v) for v in s.posterior[i]],
                "suggested_label": int(s.suggested[i]),
                "suggested_name": classes[int(s.suggested[i])],
                "label_error": float(s.label_error[i]),
                "margin": float(s.margin[i]),
            }
            for i, y in enumerate(labels.tolist())
        ]
        body = {
            "model": ref,
            "count": len(rows),
            "samples": config.samples,
            "seed": config.seed,
            "classes": classes,
            "reference": None
            if reference is None
            else {"data": self.training_spec(ref), "per_class": list(reference.counts)},
            "scores": rows,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def denoise_body(self, request: dict[str, Any]) -> bytes:
        """``POST /v1/denoise``'s body: the posterior-mean reconstructions in ``request["format"]``."""
        ref = request["model"]
        model, x, labels = self.audit_inputs(request)
        images = denormalize_uint8(reconstruct(model, x, torch.from_numpy(labels)))
        return encode_samples(images, labels, self.classes(ref), request.get("format") or "json", ref)

    def training_spec(self, ref: str) -> str | None:
        """The dataset spec version ``ref`` was trained on (its model.json)."""
        return (self.registry.resolve(ref).info.get("data") or {}).get("spec")

    def reference(self, ref: str, config: AuditConfig) -> OutlierReference | None:
        """The outlier reference kept beside version ``ref`` for ``config`` (see
        ``jobs.audit.version_reference``), cached once found (it is written once); looked for again on
        each call while there is none."""
        key = (ref, config.samples, config.seed)  # the chunk size does not change scores
        if key not in self._references:
            found = load_version_reference(self.registry.resolve(ref), config)
            if found is None:
                return None
            self._references[key] = found
        return self._references[key]


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
        self._data: dict[tuple, Any] = {}  # audit images by (kind, spec...), see _audit_data
        self._data_lock = threading.Lock()
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

    async def score(self, request: dict[str, Any]) -> bytes:
        """``POST /v1/score``: ``{model, images | npz, samples, seed, max_images}`` -> its JSON body."""
        self.sampler.model(request["model"])  # load errors surface here
        return await asyncio.to_thread(self.sampler.score_body, request)

    async def denoise(self, request: dict[str, Any]) -> bytes:
        """``POST /v1/denoise``: ``{model, images | npz, format, max_images}`` -> its body in ``format``."""
        self.sampler.model(request["model"])
        return await asyncio.to_thread(self.sampler.denoise_body, request)

    async def audit_reference_scores(self, task: dict[str, Any]) -> list[list[float]]:
        """``models.audit.reference_scores`` ([nll, code nll] per image) of chunk ``task["chunk"]`` (a range
        of ``jobs.audit.reference_chunks``) of an audit job's reference images (``task["spec"]``)."""
        spec = AuditSpec.from_dict(task["spec"])
        start, stop = task["chunk"]
        model = self.sampler.model(spec.model)

        def run() -> list[list[float]]:
            images, labels = self._audit_data(("reference", spec.reference), lambda: reference_images(spec))
            return reference_scores(model, images[start:stop], labels[start:stop], spec.config).tolist()

        return await asyncio.to_thread(run)

    async def audit_shard(self, task: dict[str, Any]) -> dict:
        """Write shard ``task["shard"]`` of an audit job (``jobs.auditor.shards.write_audit_shard``);
        returns its manifest entry."""
        spec = AuditSpec.from_dict(task["spec"])
        reference = OutlierReference.from_dict(task["reference"])
        model = self.sampler.model(spec.model)

        def run() -> dict:
            key = ("dataset", spec.dataset, spec.split)
            ds = self._audit_data(
                key, lambda: load_images(spec.dataset, spec.split, spec.image_shape, spec.classes)
            )
            return write_audit_shard(
                model, spec, task["shard"], *shard_inputs(spec, ds, task["shard"]), reference
            )

        info = await asyncio.to_thread(run)
        self.shards_written += 1
        return {**info, "worker": worker_identity()}

    def _audit_data(self, key: tuple, load) -> Any:
        """An audit's images, loaded once per replica (the two most recent: an audit and its reference)."""
        with self._data_lock:
            if key not in self._data:
                self._data[key] = load()
                while len(self._data) > 2:
                    self._data.pop(next(iter(self._data)))
            return self._data[key]

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


# ----------------------------------------------------------------------------- audit request images

INLINE_CAP = 4096  # images per /v1/score or /v1/denoise request unless the ingress says otherwise


def decode_images(
    request: dict[str, Any], classes: Sequence[str], shape: Sequence[int], max_images: int, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) and int64 labels (N,) from a request's ``images`` (base64 PNGs with a
    label each, as ``/v1/samples`` json returns them) or ``npz`` (base64 or bytes of an npz with
    ``images`` and ``labels`` or ``label_names``, as ``/v1/samples`` npz returns it). Each must be
    ``shape`` (C, H, W); ValueError naming the first bad image, label or array otherwise."""
    items, npz = request.get("images"), request.get("npz")
    if items is not None and npz is not None:
        raise ValueError("both images and npz were sent; valid: one of them")
    if npz is not None:
        images, labels = _npz_arrays(npz, classes)
    else:
        images, labels = _png_items(items or [], classes)
    n = len(labels)
    if n == 0:
        raise ValueError(f"no images; valid: 1..{max_images} images, each with its label")
    if n > max_images:
        raise ValueError(f"{n} images in one request; valid: 1..{max_images} (submit an audit job for more)")
    c, h, w = (int(d) for d in shape)
    for i, img in enumerate(images):
        if img.shape != (h, w, c):
            raise ValueError(
                f"image {i} is {img.shape[1]}x{img.shape[0]} with {img.shape[2]} channel(s); "
                f"valid: {w}x{h} with {c} channel(s), the size {model} takes"
            )
    return np.stack(images), labels


def _png_items(
    items: Sequence[dict[str, Any]], classes: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for i, item in enumerate(items):
        try:
            data = base64.b64decode(item.get("png") or "", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"image {i}: png is not valid base64; valid: base64 of PNG bytes") from None
        images.append(decode_png(data, where=f"image {i}"))
        labels.append(_label(i, item.get("label"), item.get("label_name"), classes))
    return images, np.asarray(labels, np.int64)


def _label(i: int, label: Any, name: Any, classes: Sequence[str]) -> int:
    """The class index of image ``i`` from its ``label`` (index or name) and/or ``label_name``."""
    if label is None and name is None:
        raise ValueError(f"image {i} has no label; valid: label (class index or name) or label_name")
    try:
        idx = class_index(label if label is not None else name, classes)
        if name is not None and class_index(name, classes) != idx:
            raise ValueError(f"label {label!r} and label_name {name!r} differ")
    except ValueError as e:
        raise ValueError(f"image {i}: {e}") from None
    return idx


def _npz_arrays(npz: str | bytes, classes: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    try:
        data = npz if isinstance(npz, bytes) else base64.b64decode(npz, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("npz is not valid base64; valid: base64 of the bytes of an .npz file") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            unpacked = sum(i.file_size for i in z.infolist())
        if unpacked > MAX_NPZ_UNPACKED:
            raise ValueError(f"npz unpacks to {unpacked} bytes; valid: at most {MAX_NPZ_UNPACKED}")
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile and numpy raise many types for bad bytes
        raise ValueError(
            f"npz is not a readable .npz file ({type(e).__name__}); valid: np.savez bytes"
        ) from None
    images = arrays.get("images")
    if images is None or ("labels" not in arrays and "label_names" not in arrays):
        raise ValueError(
            f"npz holds {sorted(arrays)}; valid: images (N, H, W[, C]) uint8 and labels (N,) or label_names"
        )
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"npz images are {images.dtype} {images.shape}; valid: uint8 (N, H, W[, C])")
    images = images[..., None] if images.ndim == 3 else images  # (N, H, W, C)
    given = arrays.get("labels", arrays.get("label_names"))
    if given.ndim != 1 or len(given) != len(images):
        raise ValueError(
            f"npz has {len(images)} images and labels of shape {given.shape}; valid: one label each"
        )
    names = arrays.get("label_names")
    if "labels" in arrays:
        names = [None] * len(given) if names is None else names.tolist()
        labels = [
            _label(i, y, n, classes) for i, (y, n) in enumerate(zip(given.tolist(), names, strict=False))
        ]
    else:
        labels = [_label(i, None, n, classes) for i, n in enumerate(given.tolist())]
    return list(images), np.asarray(labels, np.int64)


def _finite(x: torch.Tensor) -> float | None:
    """A float for JSON; None for NaN (a class without reference data)."""
    v = float(x)
    return v if math.isfinite(v) else None
