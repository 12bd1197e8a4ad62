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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs
import ray

from cluster import NAMESPACE, QUEUE_ACTOR, metrics
from cluster.queue import InvalidTransition, JobNotFound, JobStatus, JobStore, QueueError
from jobs.generate import JobSpec, ShardTask, finalize_job, new_job_id, validate_request
from jobs.store import shards
from jobs.store.location import location, resolve_home, state_dir
from jobs.store.manifest import cleanup_temp
from jobs.store.registry import Registry

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
        spec = JobSpec.from_dict(job["spec"])
        try:
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
        self, job_id: str, spec: JobSpec, handle, done: dict[int, dict], pending: dict[asyncio.Future, int]
    ) -> bool:
        """Send every missing shard and record each one that comes back; True if the job was cancelled.

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
                task = ShardTask.of(spec, job_id, k).to_dict()
                pending[asyncio.ensure_future(handle.generate_shard.remote(task))] = k
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

    async def _generate(self, job_id: str, spec: JobSpec) -> None:
        from ray import serve

        started = time.perf_counter()
        handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        await asyncio.to_thread(cleanup_temp, spec.output)
        done = {int(k): v for k, v in self.store.committed_shards(job_id).items()}
        pending: dict[asyncio.Future, int] = {}
        try:
            cancelled = await self._send_shards(job_id, spec, handle, done, pending)
        except Exception:
            if pending:  # let in-flight shards land first, so that no file appears after the cleanup
                await asyncio.wait(list(pending), timeout=DRAIN_S)
            raise
        if cancelled:
            await asyncio.to_thread(_remove_unrecorded, spec, set(self.store.committed_shards(job_id)))
            return
        # every shard is recorded and no call is in flight: temp files left by a replica that died
        # mid-write are garbage now
        await asyncio.to_thread(cleanup_temp, spec.output)
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


def _remove_unrecorded(spec: JobSpec, recorded: set) -> None:
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
