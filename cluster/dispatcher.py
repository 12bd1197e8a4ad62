"""The queue owner: one detached Ray actor that owns the SQLite job store and dispatches shards.

Everything else (the HTTP ingress, the CLI, tests) reaches the queue through this actor, so it works
when they run on other nodes. The actor:

- validates and records submissions (nothing is written for a rejected request);
- claims queued jobs (priority, then FIFO; at most ``max_running`` at once) and sends their missing
  shards, one call per shard, to the generator deployment through a ``DeploymentHandle`` with up to
  ``max_in_flight`` shards in flight across replicas;
- records a shard only after the replica returned (the file is already committed under its final
  name); a failed call (a replica died) is re-sent, since regenerating a shard gives the same bytes;
- renews the lease of its running jobs; a job whose owner died is claimed again when the lease
  expires, and on start-up every job left running is requeued and resumes from its committed shards;
- checks for cancellation at each shard boundary and then removes any shard it did not record;
- writes ``manifest.json``, the card and ``_SUCCESS`` when every shard is committed.

Audit jobs (``kind: "audit"``, ``jobs.audit``) go the same way: the replicas first score the outlier
reference in chunks (unless the output or the model version already holds it), then write the shards
with ``jobs.auditor.shards.write_audit_shard``; the owner writes the report, manifest, card and ``_SUCCESS``
(``finalize_audit``) and keeps a reference of the model's own training data beside the version, for
``POST /v1/score``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs
import ray
import torch

from cluster import NAMESPACE, QUEUE_ACTOR, metrics
from cluster.queue import InvalidTransition, JobNotFound, JobStatus, JobStore, QueueError
from jobs.audit import (
    load_version_reference,
    open_output,
    reference_chunks,
    reference_images,
    save_version_reference,
)
from jobs.auditor.report import finalize_audit
from jobs.auditor.spec import REFERENCE_FILE, AuditSpec, check_cvae_version, check_range, validate_audit
from jobs.data.spec import parse_spec
from jobs.generate import JobSpec, ShardTask, finalize_job, new_job_id, validate_request
from jobs.store import shards
from jobs.store.location import Location, location, resolve_home, state_dir
from jobs.store.manifest import cleanup_temp
from jobs.store.registry import ModelVersion, Registry
from models.audit import OutlierReference

log = logging.getLogger("genaug.queue")

MAX_SHARD_ATTEMPTS = 5
DRAIN_S = 60.0  # how long a failing job waits for its in-flight shards before removing unrecorded files


class QueueOwner:
    """Actor body; create it with ``get_queue(...)``."""

    def __init__(
        self,
        home: str,
        app_name: str = "genaug",
        deployment: str = "Generator",
        max_running: int = 2,
        max_in_flight: int = 4,
        lease_s: float = 30.0,
        max_total_rows: int | None = None,
        poll_s: float = 0.2,
    ):
        self.home = resolve_home(home)  # a local folder or an object-store URI
        # The queue database is always on this (the head) node's disk: under the root when it is a
        # local folder, else under $GENAUG_STATE_DIR (jobs.store.location.state_dir).
        self.store = JobStore(state_dir(self.home) / "queue.sqlite", lease_s=lease_s)
        self.owner = f"queue-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.app_name, self.deployment = app_name, deployment
        self.max_running, self.max_in_flight = max_running, max_in_flight
        self.max_total_rows = max_total_rows
        self.lease_s, self.poll_s = lease_s, poll_s
        self.requeued = self.store.requeue_running("queue owner started")
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None
        self._last_heartbeat = 0.0
        self._last_counts = 0.0
        self.started_at = time.time()
        with contextlib.suppress(RuntimeError):  # async actors may already run their event loop here
            self._ensure_loop()

    def _ensure_loop(self) -> None:
        """Start the dispatch loop unless it runs (every API call checks: a restarted actor resumes)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    # -------------------------------------------------------------- API (called through Ray)

    async def ready(self) -> dict:
        """Start the dispatch loop (idempotent) and report the owner's identity."""
        self._ensure_loop()
        return {"owner": self.owner, "pid": os.getpid(), "requeued": self.requeued, "home": self.home.uri}

    async def submit(
        self, request: dict, idempotency_key: str | None = None, output_roots: Sequence[str] = ()
    ) -> dict:
        """Validate ``request`` and queue it; the same ``idempotency_key`` returns the same job.

        ``output_roots``: where ``out`` may go besides the storage root, as the caller is allowed
        (the ingress passes them only for the output token); never read from this actor's environment.
        """
        await self.ready()
        if idempotency_key:
            existing = self.store.find_by_idempotency_key(idempotency_key)
            if existing:
                return {**existing, "existing": True}
        job_id = new_job_id()
        if request.get("kind", "generate") == "audit":
            audit, priority = await asyncio.to_thread(_validate_audit_request, request, self.home, job_id)
            return self.store.submit(
                {**audit.to_dict(), "kind": "audit"},
                job_id=job_id,
                priority=priority,
                idempotency_key=idempotency_key,
                total_rows=audit.num_images,
                total_shards=audit.num_shards,
                output=audit.output,
            )
        kwargs = {"max_total_rows": self.max_total_rows} if self.max_total_rows else {}
        spec = validate_request(request, self.home, job_id=job_id, output_roots=tuple(output_roots), **kwargs)
        return self.store.submit(
            spec.to_dict(),
            job_id=job_id,
            priority=spec.priority,
            idempotency_key=idempotency_key,
            total_rows=spec.total_rows,
            total_shards=spec.num_shards,
            output=spec.output,
        )

    async def get(self, job_id: str) -> dict:
        self._ensure_loop()
        return self.store.get(job_id)

    async def list(self, status: str | None = None, limit: int = 100) -> list[dict]:
        self._ensure_loop()
        return self.store.list(status=status, limit=limit)

    async def events(self, job_id: str) -> list[dict]:
        self._ensure_loop()
        return self.store.events(job_id)

    async def shards(self, job_id: str) -> dict:
        self._ensure_loop()
        return self.store.committed_shards(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by user") -> dict:
        """Cancel now; a running job stops at its next shard boundary and removes unrecorded shards."""
        self._ensure_loop()
        return self.store.cancel(job_id, reason=reason)

    async def counts(self) -> dict:
        self._ensure_loop()
        return self.store.counts()

    async def wait(self, job_id: str, timeout_s: float = 30.0) -> dict:
        """Return the job once it is terminal or ``timeout_s`` passed (long-poll)."""
        self._ensure_loop()
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.store.get(job_id)
            if job["status"] in {
                s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
            }:
                return job
            if time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.2)

    async def summary(self) -> dict:
        """The queue at a glance (``JobStore.summary``) plus this owner's identity, for ``genaug status``."""
        self._ensure_loop()
        return {**self.store.summary(), "owner": await self.info()}

    async def info(self) -> dict:
        self._ensure_loop()
        ctx = ray.get_runtime_context()
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "worker_id": ctx.get_worker_id(),
            "node_id": ctx.get_node_id(),
            "home": str(self.home),
            "running": sorted(self._tasks),
            "started_at": self.started_at,
            "requeued_at_start": self.requeued,
        }

    # -------------------------------------------------------------- dispatching

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                self._tasks = {k: t for k, t in self._tasks.items() if not t.done()}
                while len(self._tasks) < self.max_running:
                    job = self.store.claim(self.owner, limit_running=self.max_running)
                    if job is None:
                        break
                    self._tasks[job["id"]] = asyncio.get_running_loop().create_task(self._run_job(job))
                if time.monotonic() - self._last_heartbeat > self.lease_s / 3:  # each is an fsync'd write
                    self._last_heartbeat = time.monotonic()
                    for job_id in list(self._tasks):
                        try:
                            self.store.heartbeat(job_id, self.owner)
                        except (InvalidTransition, JobNotFound):
                            pass  # cancelled or failed meanwhile; its task notices at the next boundary
                if time.monotonic() - self._last_counts >= 1.0:
                    self._last_counts = time.monotonic()
                    metrics.job_counts(self.store.counts())
            except Exception:  # never let the loop die; the error is in the actor's log
                log.exception("dispatch loop error")
            await asyncio.sleep(self.poll_s)

    def _status(self, job_id: str) -> str:
        return self.store.get(job_id)["status"]

    async def _run_job(self, job: dict) -> None:
        job_id = job["id"]
        spec = job_spec(job["spec"])
        try:
            if isinstance(spec, AuditSpec):
                await self._audit(job_id, spec)
            else:
                await self._generate(job_id, spec)
        except QueueError as e:
            # The store is locked or unwritable: the job cannot be failed either. Stop this attempt and
            # leave the job running; its lease lapses and it is claimed again (resuming from its
            # committed shards) once the store works.
            log.warning("job %s: attempt stopped, job store unusable: %s", job_id, e)
        except Exception as e:
            log.exception("job %s failed", job_id)
            try:
                error = str(e) if isinstance(e, ShardFailed) else _reason(e)
                self.store.fail(job_id, error, owner=self.owner)
                recorded = set(self.store.committed_shards(job_id))
            except (InvalidTransition, JobNotFound, QueueError):
                recorded = None
            if recorded is not None:  # failed: like a cancel, keep only the shards the queue recorded
                await asyncio.to_thread(_remove_unrecorded, spec, recorded)

    async def _send_shards(
        self,
        job_id: str,
        spec: JobSpec | AuditSpec,
        send: Callable[[int], Awaitable[dict]],
        done: dict[int, dict],
        pending: dict[asyncio.Future, int],
    ) -> bool:
        """Send every missing shard (``send(k)`` asks a replica for shard k) and record each one that
        comes back; True if the job was cancelled.

        ``pending`` (in-flight calls) is the caller's, so that it can wait for them when this raises.
        """
        todo = [k for k in range(spec.num_shards) if k not in done]
        attempts: dict[int, int] = {}
        sent_at: dict[int, float] = {}
        rows_now, clock = 0, time.perf_counter()  # rows recorded by this attempt, for the rate gauge
        cancelled = False
        while todo or pending:
            if not cancelled and self._status(job_id) != JobStatus.RUNNING.value:
                cancelled = True  # cancelled (or failed) by someone else: stop at this boundary
            while todo and not cancelled and len(pending) < self.max_in_flight:
                k = todo.pop(0)
                pending[asyncio.ensure_future(send(k))] = k
                sent_at[k] = time.perf_counter()
            if not pending:
                break
            finished, _ = await asyncio.wait(list(pending), return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            for fut in finished:
                k = pending.pop(fut)
                try:
                    info = fut.result()
                except Exception as e:
                    attempts[k] = attempts.get(k, 0) + 1
                    if attempts[k] >= MAX_SHARD_ATTEMPTS or _is_permanent(e):
                        raise ShardFailed(
                            f"shard {k} failed after {attempts[k]} attempt(s): {_reason(e)}"
                        ) from e
                    log.warning("shard %d of %s failed (%s); re-sending", k, job_id, _reason(e))
                    todo.insert(0, k)
                    continue
                if cancelled:
                    continue
                try:
                    if self.store.commit_shard(job_id, self.owner, k, info["rows"], info):
                        metrics.shard_committed(spec.model, info["rows"], time.perf_counter() - sent_at[k])
                        rows_now += info["rows"]
                        metrics.generation_rate(spec.model, rows_now / (time.perf_counter() - clock))
                    done[k] = info
                except InvalidTransition:
                    cancelled = True
        return cancelled

    def _handle(self):
        from ray import serve

        return serve.get_deployment_handle(self.deployment, app_name=self.app_name)

    async def _all_shards(
        self, job_id: str, spec: JobSpec | AuditSpec, send: Callable[[int], Awaitable[dict]]
    ) -> dict[int, dict] | None:
        """Every shard of the job committed and recorded (``_send_shards``), temporary files removed:
        shard index -> its info; None if the job was cancelled meanwhile (unrecorded shards removed)."""
        done = {int(k): v for k, v in self.store.committed_shards(job_id).items()}
        pending: dict[asyncio.Future, int] = {}
        try:
            cancelled = await self._send_shards(job_id, spec, send, done, pending)
        except Exception:
            if pending:  # let in-flight shards land first, so that no file appears after the cleanup
                await asyncio.wait(list(pending), timeout=DRAIN_S)
            raise
        if cancelled:
            await asyncio.to_thread(_remove_unrecorded, spec, set(self.store.committed_shards(job_id)))
            return None
        # every shard is recorded and no call is in flight: temp files left by a replica that died
        # mid-write are garbage now
        await asyncio.to_thread(cleanup_temp, spec.output)
        return done

    async def _generate(self, job_id: str, spec: JobSpec) -> None:
        started = time.perf_counter()
        handle = self._handle()
        await asyncio.to_thread(cleanup_temp, spec.output)
        done = await self._all_shards(
            job_id, spec, lambda k: handle.generate_shard.remote(ShardTask.of(spec, job_id, k).to_dict())
        )
        if done is None:
            return
        mv = Registry(self.home).resolve(spec.model)
        manifest = await asyncio.to_thread(
            finalize_job, spec, job_id, mv, [done[k] for k in sorted(done)], time.perf_counter() - started
        )
        summary = {
            "output": spec.output,
            "totals": manifest["totals"],
            "rows_per_s": manifest.get("rows_per_s"),
            "duration_s": manifest.get("duration_s"),
        }
        self.store.complete(job_id, self.owner, result=summary)
        metrics.generation_rate(spec.model, manifest.get("rows_per_s"))
        metrics.job_counts(self.store.counts())

    async def _audit(self, job_id: str, spec: AuditSpec) -> None:
        """An audit job: the outlier reference, every shard by the replicas, then the report and commit."""
        started = time.perf_counter()
        handle = self._handle()
        mv = Registry(self.home).resolve(spec.model)
        reference = await asyncio.to_thread(open_output, spec)
        if reference is None:
            reference = await asyncio.to_thread(load_version_reference, mv, spec.config)
            if reference is None or spec.reference != _training_spec(mv):
                reference = await self._fit_reference(handle, spec)
            await asyncio.to_thread(
                location(spec.output).join(REFERENCE_FILE).write_json, reference.to_dict()
            )
        task = {"spec": spec.to_dict(), "reference": reference.to_dict()}
        done = await self._all_shards(job_id, spec, lambda k: handle.audit_shard.remote({**task, "shard": k}))
        if done is None:
            return
        infos = [done[k] for k in sorted(done)]
        manifest = await asyncio.to_thread(finalize_audit, spec, job_id, mv, infos, reference, started)
        if await asyncio.to_thread(load_version_reference, mv, spec.config) is None:
            await asyncio.to_thread(save_version_reference, mv, spec, reference)
        summary = {
            "output": spec.output,
            "totals": manifest["totals"],
            "audit": manifest["audit"],
            "duration_s": manifest["duration_s"],
        }
        self.store.complete(job_id, self.owner, result=summary)
        metrics.job_counts(self.store.counts())

    async def _fit_reference(self, handle, spec: AuditSpec) -> OutlierReference:
        """The audit's outlier reference, its chunks scored by the replicas (``max_in_flight`` at once)."""
        _, labels = await asyncio.to_thread(reference_images, spec)
        gate = asyncio.Semaphore(self.max_in_flight)

        async def chunk(r: range) -> list[list[float]]:
            async with gate:
                return await _resend(
                    lambda: handle.audit_reference_scores.remote(
                        {"spec": spec.to_dict(), "chunk": [r.start, r.stop]}
                    ),
                    f"reference chunk {r.start}..{r.stop - 1}",
                )

        parts = await asyncio.gather(*(chunk(r) for r in reference_chunks(spec, len(labels))))
        scores = torch.tensor([v for part in parts for v in part], dtype=torch.float64)  # (R, 2)
        return OutlierReference.from_scores(scores, labels, len(spec.classes), spec.config)


async def _resend(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """``await call()``, again after a failure (a replica died) up to ``MAX_SHARD_ATTEMPTS`` times."""
    for attempt in range(1, MAX_SHARD_ATTEMPTS + 1):
        try:
            return await call()
        except Exception as e:
            if attempt >= MAX_SHARD_ATTEMPTS or _is_permanent(e):
                raise ShardFailed(f"{what} failed after {attempt} attempt(s): {_reason(e)}") from e
            log.warning("%s failed (%s); re-sending", what, _reason(e))
    raise AssertionError("unreachable")


def job_spec(d: Mapping[str, Any]) -> JobSpec | AuditSpec:
    """The spec a job was submitted with: an ``AuditSpec`` for ``kind: audit``, else a ``JobSpec``."""
    if d.get("kind") == "audit":
        return AuditSpec.from_dict({k: v for k, v in d.items() if k != "kind"})
    return JobSpec.from_dict(d)


AUDIT_REQUEST_FIELDS = frozenset(
    {
        "kind",
        "model",
        "dataset",
        "split",
        "reference",
        "samples",
        "seed",
        "top",
        "out",
        "shard_rows",
        "priority",
    }
)


def _training_spec(mv: ModelVersion) -> str | None:
    return (mv.info.get("data") or {}).get("spec")


def _validate_audit_request(request: Mapping[str, Any], home: Location, job_id: str) -> tuple[AuditSpec, int]:
    """An audit request over the API: ``jobs.auditor.spec.validate_audit``, and datasets this service may read
    (``_check_served_dataset``); returns the spec and the job's priority. Nothing is written."""
    unknown = sorted(set(request) - AUDIT_REQUEST_FIELDS)
    if unknown:
        valid = ", ".join(sorted(AUDIT_REQUEST_FIELDS))
        raise ValueError(f"field(s) {', '.join(unknown)} are not audit fields; valid: {valid}")
    priority = check_range(request.get("priority", 0), "priority", -1000, 1000)
    if not request.get("dataset"):
        raise ValueError("an audit needs dataset (a dataset spec, e.g. digits)")
    mv = check_cvae_version(Registry(home).resolve(str(request.get("model") or "")))
    _check_served_dataset(str(request["dataset"]), mv, home, "dataset")
    if request.get("reference"):
        _check_served_dataset(str(request["reference"]), mv, home, "reference")
    req = {k: v for k, v in request.items() if k not in ("kind", "priority")}
    try:
        spec, _ = validate_audit(req, home, job_id=job_id)
    except OSError as e:  # a dataset's files missing or unreadable: the request named them
        raise ValueError(f"dataset {request['dataset']!r} cannot be read: {e}") from None
    return spec, priority


def _check_served_dataset(spec: str, mv: ModelVersion, home: Location, what: str) -> None:
    """Over the API a dataset spec may read only what the service already exposes: built-in data, the
    model's own training data, or files under the storage root; ValueError naming the options."""
    _, arg = parse_spec(spec)
    if arg is None or arg.isdigit() or spec == _training_spec(mv):  # digits, shapes, shapes:SIZE
        return
    try:
        home.confine(arg)
    except ValueError:
        raise ValueError(
            f"{what} {spec!r} reads {arg!r}, outside the storage root {home.uri}; valid over the API: "
            f"digits, shapes[:SIZE], the model's training data {_training_spec(mv)!r}, or a path under "
            "the storage root"
        ) from None


class ShardFailed(RuntimeError):
    """A shard could not be written (the job's error message)."""


def _is_permanent(e: Exception) -> bool:
    """Errors that re-sending cannot fix (bad model, disk full, read-only storage) fail the job at once."""
    text = f"{type(e).__name__} {e}"
    needles = ("ModelUnavailable", "No space left", "ENOSPC", "Read-only file system", "unknown model")
    return any(s in text for s in needles)


def _reason(e: BaseException) -> str:
    """One line naming the root cause, without the remote traceback that Ray's errors carry.

    ``RayTaskError`` keeps the exception raised in the replica as ``cause``: "OSError: [Errno 28] ...".
    """
    cause = getattr(e, "cause", None)
    root = cause if isinstance(cause, BaseException) else e
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else 'no message'}"


def _remove_unrecorded(spec: JobSpec | AuditSpec, recorded: set) -> None:
    """After a cancel: delete shard files the queue did not record, and any temporary file."""
    cleanup_temp(spec.output)
    data = location(spec.output) / shards.DATA_DIR
    keep = {shards.shard_path(int(k), spec.num_shards).rpartition("/")[2] for k in recorded}
    for info in data.list():
        if info.type == pafs.FileType.File and info.base_name not in keep:
            data.child(info).delete()


def get_queue(home: str | os.PathLike | None = None, **options: Any):
    """Get the named queue owner actor, creating it (detached, on the head node) if it does not exist."""
    actor_cls = ray.remote(QueueOwner)
    handle = actor_cls.options(
        name=QUEUE_ACTOR,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=3,
        num_cpus=0,
        max_concurrency=1000,
        resources={"node:__internal_head__": 0.001},
    ).remote(resolve_home(home).uri, **options)
    ray.get(handle.ready.remote())
    return handle
