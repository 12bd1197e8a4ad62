"""The durable job store: one SQLite file (WAL) with generation jobs, their committed shards and an event log.

State machine (like rq and procrastinate: every transition is one named method doing one guarded
``UPDATE ... WHERE id = ? AND status IN (<legal sources>)`` inside a ``BEGIN IMMEDIATE`` transaction together
with its event row; when nothing matched it raises :class:`InvalidTransition` naming the legal sources):

    transition     from                                        to
    submit         -                                           queued
    claim          queued, or running with an expired lease    running
    heartbeat      running (lease owner)                       running  (extends the lease; no event)
    commit_shard   running (lease owner)                       running  (once per shard)
    complete       running (lease owner, every shard and row)  succeeded
    fail           queued | running                            failed
    cancel         queued | running                            cancelled
    requeue        running                                     queued   (``requeue_running`` at startup)

succeeded, failed and cancelled are terminal: no transition leaves them.

Leases: ``claim`` hands a job to an ``owner`` until ``now + lease_s``; ``heartbeat`` and
``commit_shard`` extend it. A RUNNING job whose lease has expired is claimable again, exactly like a
queued job at its original queue position (same priority, same FIFO rank); its event reason says
``lease expired``. Its committed shards are kept, so the new owner only produces the missing ones
(``committed_shards``). Owner-checked calls (``heartbeat``, ``commit_shard``, ``complete``,
``fail(owner=...)``) from a worker that lost its lease raise :class:`LeaseLost`; give every attempt its
own owner string (e.g. ``f"{worker}:{attempt}"``) so that a stale attempt cannot pass the check.

Concurrency: one :class:`JobStore` is safe to share between threads (one connection and a lock). Several
JobStore objects, in one process or several, can use the same file: ``BEGIN IMMEDIATE`` takes SQLite's write
lock before anything is read, so two stores never both claim one job, and readers are never blocked (WAL).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jobs.store.location import validate_name

SCHEMA_VERSION = 1


class JobStatus(str, Enum):
    """Where a job is in its life; the string value is what is stored and returned."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_STATUS_VALUES = tuple(s.value for s in JobStatus)

# Legal source states of each transition (the WHERE clause of its UPDATE).
LEGAL_FROM: dict[str, tuple[JobStatus, ...]] = {
    "claim": (JobStatus.QUEUED, JobStatus.RUNNING),  # running only once its lease has expired
    "heartbeat": (JobStatus.RUNNING,),
    "commit_shard": (JobStatus.RUNNING,),
    "complete": (JobStatus.RUNNING,),
    "fail": (JobStatus.QUEUED, JobStatus.RUNNING),
    "cancel": (JobStatus.QUEUED, JobStatus.RUNNING),
    "requeue": (JobStatus.RUNNING,),
}


def _rebuild_exception(cls: type, args: tuple, state: dict) -> Exception:
    e = Exception.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(state)
    return e


class InvalidTransition(Exception):
    """A transition was asked of a job whose status is not one of its legal source states."""

    def __reduce__(self):  # picklable across Ray processes despite the richer constructor
        return _rebuild_exception, (type(self), self.args, self.__dict__)

    def __init__(
        self, transition: str, job_id: str, status: str, legal: tuple[JobStatus, ...], detail: str = ""
    ):
        self.transition, self.job_id, self.status = transition, job_id, status
        self.legal = tuple(s.value for s in legal)
        msg = f"cannot {transition} job {job_id}: status is {status}; legal from: {', '.join(self.legal)}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class LeaseLost(InvalidTransition):
    """The job is running but leased to another owner (this worker's lease expired and it was re-claimed)."""

    def __init__(self, transition: str, job_id: str, owner: str, lease_owner: str | None):
        self.transition, self.job_id, self.status = transition, job_id, JobStatus.RUNNING.value
        self.legal = (JobStatus.RUNNING.value,)
        self.owner, self.lease_owner = owner, lease_owner
        Exception.__init__(
            self,
            f"cannot {transition} job {job_id}: it is running under lease owner {lease_owner!r}, "
            f"not {owner!r}; stop this attempt (its lease expired and the job was re-claimed)",
        )


class MissingShards(InvalidTransition, ValueError):
    """``complete`` was asked before every shard (and every row) was committed."""

    def __init__(self, job_id: str, missing: list[int], rows_done: int, total_rows: int):
        self.transition, self.job_id, self.status = "complete", job_id, JobStatus.RUNNING.value
        self.legal = (JobStatus.RUNNING.value,)
        self.missing = missing
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        what = (
            f"{len(missing)} of its shards are not committed: {shown}"
            if missing
            else f"rows_done {rows_done} != total_rows {total_rows}"
        )
        Exception.__init__(self, f"cannot complete job {job_id}: {what}; commit every shard first")


class JobNotFound(KeyError):
    """No job with this id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(job_id)

    def __str__(self) -> str:
        return f"no job with id {self.job_id!r}"


class QueueError(RuntimeError):
    """The store itself is unusable (locked, read-only, corrupted, closed); the message names the path."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,          -- submission order: FIFO rank
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
    spec TEXT NOT NULL,                            -- JSON of the validated request
    priority INTEGER NOT NULL DEFAULT 0,           -- higher is claimed first
    idempotency_key TEXT UNIQUE,
    output TEXT NOT NULL,
    total_rows INTEGER NOT NULL CHECK (total_rows >= 1),
    total_shards INTEGER NOT NULL CHECK (total_shards >= 1),
    rows_done INTEGER NOT NULL DEFAULT 0 CHECK (rows_done >= 0 AND rows_done <= total_rows),
    shards_done INTEGER NOT NULL DEFAULT 0 CHECK (shards_done >= 0 AND shards_done <= total_shards),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,                               -- first claim
    finished_at REAL,
    updated_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    attempt_started_at REAL,                       -- start of the current running stretch
    running_s REAL NOT NULL DEFAULT 0,             -- running time of finished stretches
    result TEXT                                    -- JSON dict or NULL
);
CREATE INDEX IF NOT EXISTS jobs_claim_order ON jobs (status, priority DESC, seq);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    shard INTEGER NOT NULL,
    rows INTEGER NOT NULL CHECK (rows >= 0),
    info TEXT NOT NULL,                            -- JSON: path, sha256, bytes, class_counts, ...
    committed_at REAL NOT NULL,
    PRIMARY KEY (job_id, shard)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    ts REAL NOT NULL,
    transition TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
"""

# Leaving RUNNING: add the current stretch to running_s (column names refer to the old row in SET).
_STOP_CLOCK = (
    "running_s = running_s + CASE WHEN status = 'running' "
    "THEN MAX(0, MIN(:now, lease_expires_at) - attempt_started_at) ELSE 0 END, "
    "attempt_started_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = :now"
)


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} is not JSON-serialisable ({exc}); valid: dicts of str, numbers, lists"
        ) from exc


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} {value!r} is invalid; valid: an integer >= {low}")
    return value


class JobStore:
    """Jobs, shards and events in one SQLite file; every method returns plain JSON-able values."""

    def __init__(
        self,
        path: str | Path,
        lease_s: float = 30.0,
        *,
        now: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
        readonly: bool = False,
    ):
        """Open (creating if needed) the store at ``path``.

        ``lease_s``: how long a claim lasts without a heartbeat; ``now``: the clock (tests inject one);
        ``timeout_s``: how long to wait for another writer's lock before :class:`QueueError`;
        ``readonly``: open for reads only (``genaug jobs list`` while the dispatcher runs).
        """
        if not (isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"lease_s {lease_s!r} is invalid; valid: a positive number of seconds")
        self.path = Path(path).expanduser().absolute()
        self.lease_s = float(lease_s)
        self.readonly = readonly
        self._now = now
        self._timeout_s = float(timeout_s)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Connect, switch to WAL, create the schema on first use, check the version and writability."""
        readonly = self.readonly
        with self._guard("open"):
            if readonly:
                if not self.path.is_file():
                    raise QueueError(f"no job store at {self.path}; start the queue once to create it")
                target, uri = f"file:{quote(str(self.path))}?mode=ro", True
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise QueueError(
                        f"cannot create the folder for job store {self.path}: {exc}; "
                        "choose a --home / GENAUG_HOME whose parent folders are writable directories"
                    ) from exc
                target, uri = str(self.path), False
            conn = sqlite3.connect(
                target, timeout=self._timeout_s, isolation_level=None, check_same_thread=False, uri=uri
            )
            self._conn = conn
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if not readonly:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise QueueError(f"job store {self.path} cannot use WAL mode; put it on a local disk")
                conn.execute("PRAGMA synchronous = FULL")
                if version == 0:
                    with self._write() as cur:
                        if cur.execute("PRAGMA user_version").fetchone()[0] == 0:
                            for stmt in filter(str.strip, _SCHEMA.split(";")):
                                cur.execute(stmt)
                            cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    version = SCHEMA_VERSION
                else:  # fail fast on a read-only file: probe a write, then roll it back
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute(f"PRAGMA user_version = {int(version)}")
                    finally:
                        conn.rollback()
            if version != SCHEMA_VERSION:
                raise QueueError(
                    f"job store {self.path} has schema version {version}, this genaug reads version "
                    f"{SCHEMA_VERSION}; use the matching genaug or move the file aside"
                )

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r}, lease_s={self.lease_s})"

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Translate sqlite errors into :class:`QueueError` messages that name the file and what to do."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            text = str(exc).lower()
            p = self.path
            if "locked" in text or "busy" in text:
                msg = (
                    f"job store {p} is locked: another process held its write lock for more than "
                    f"{self._timeout_s:g}s ({action}); retry, or stop the other process using the file"
                )
            elif "readonly" in text or "read-only" in text:
                how = (
                    "it was opened with readonly=True"
                    if self.readonly
                    else "the file or its folder is not writable"
                )
                msg = f"job store {p} is read-only ({action}): {how}; open it writable or use another --home"
            elif "not a database" in text or "malformed" in text or "corrupt" in text:
                msg = (
                    f"job store {p} is corrupted or not a SQLite database ({exc}); "
                    f"move it aside (its jobs are lost) and restart the queue to create a new one"
                )
            elif "unable to open" in text and _read_only_fs(p.parent):
                msg = (
                    f"job store {p} is read-only ({action}): its filesystem is mounted read-only; "
                    "remount it read-write or use another --home"
                )
            elif "unable to open" in text:
                msg = (
                    f"cannot open job store {p} ({exc}); check that its folder exists and is writable "
                    f"(SQLite creates {p.name}-wal and {p.name}-shm next to it)"
                )
            else:
                msg = f"job store {p} failed during {action}: {exc}"
            raise QueueError(msg) from exc

    def _cursor(self) -> sqlite3.Cursor:
        if self._conn is None:
            raise QueueError(f"job store {self.path} is closed; create a new JobStore")
        return self._conn.cursor()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: BEGIN IMMEDIATE (write lock first), then COMMIT, or ROLLBACK on error."""
        with self._lock:
            cur = self._cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.rollback()
                raise
            cur.execute("COMMIT")

    @contextmanager
    def _tx(self, action: str) -> Iterator[sqlite3.Cursor]:
        if self.readonly:  # refuse every write, even one that would have matched nothing
            raise QueueError(
                f"job store {self.path} is read-only ({action}): it was opened with readonly=True; "
                "open it writable or use another --home"
            )
        with self._guard(action), self._write() as cur:
            yield cur

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Cursor]:
        with self._lock, self._guard(action):
            yield self._cursor()

    def _event(
        self, cur: sqlite3.Cursor, job_id: str, transition: str, frm: str | None, to: str, reason: str
    ):
        cur.execute(
            "INSERT INTO events (job_id, ts, transition, from_status, to_status, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, self._now(), transition, frm, to, reason),
        )

    def _row(self, cur: sqlite3.Cursor, job_id: str) -> sqlite3.Row | None:
        cur.row_factory = sqlite3.Row
        return cur.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def _record(self, row: sqlite3.Row) -> dict:
        now = self._now()
        status = row["status"]
        started = row["started_at"]
        elapsed = None
        if started is not None:
            elapsed = row["running_s"]
            if status == JobStatus.RUNNING.value and row["attempt_started_at"] is not None:
                elapsed += max(0.0, now - row["attempt_started_at"])
        return {
            "id": row["id"],
            "status": status,
            "spec": json.loads(row["spec"]),
            "priority": row["priority"],
            "idempotency_key": row["idempotency_key"],
            "output": row["output"],
            "total_rows": row["total_rows"],
            "total_shards": row["total_shards"],
            "rows_done": row["rows_done"],
            "shards_done": row["shards_done"],
            "attempts": row["attempts"],
            "error": row["error"],
            "created_at": row["created_at"],
            "started_at": started,
            "finished_at": row["finished_at"],
            "updated_at": row["updated_at"],
            "lease_owner": row["lease_owner"],
            "lease_expires_at": row["lease_expires_at"],
            "result": None if row["result"] is None else json.loads(row["result"]),
            "progress": row["rows_done"] / row["total_rows"],
            "elapsed_s": elapsed,  # running time summed over attempts (queued time excluded)
            "rows_per_s": row["rows_done"] / elapsed if elapsed else None,
        }

    def _locate(
        self, cur: sqlite3.Cursor, transition: str, job_id: str, owner: str | None = None
    ) -> sqlite3.Row:
        """Fetch the job inside the transaction, raising JobNotFound / InvalidTransition / LeaseLost."""
        row = self._row(cur, job_id)
        if row is None:
            raise JobNotFound(job_id)
        legal = LEGAL_FROM[transition]
        if row["status"] not in legal:
            raise InvalidTransition(transition, job_id, row["status"], legal)
        if owner is not None and row["lease_owner"] != owner:
            raise LeaseLost(transition, job_id, owner, row["lease_owner"])
        return row

    def _apply(
        self,
        cur: sqlite3.Cursor,
        transition: str,
        job_id: str,
        to: JobStatus,
        assignments: str,
        params: dict[str, Any],
        reason: str,
        owner: str | None = None,
    ) -> dict:
        """The one guarded UPDATE of a transition plus its event row; returns the new record."""
        row = self._locate(cur, transition, job_id, owner)
        legal = LEGAL_FROM[transition]
        marks = ", ".join(f":legal{i}" for i in range(len(legal)))
        where = f"id = :id AND status IN ({marks})" + (
            " AND lease_owner = :owner" if owner is not None else ""
        )
        bound = {**params, "id": job_id, "owner": owner, "now": self._now()}
        bound.update({f"legal{i}": s.value for i, s in enumerate(legal)})
        cur.execute(f"UPDATE jobs SET status = :to, {assignments} WHERE {where}", {**bound, "to": to.value})
        if cur.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; kept as the atomic guard
            raise InvalidTransition(transition, job_id, row["status"], legal)
        self._event(cur, job_id, transition, row["status"], to.value, reason)
        return self._record(self._row(cur, job_id))

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        spec: dict,
        *,
        job_id: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        total_rows: int,
        total_shards: int,
        output: str,
    ) -> dict:
        """Queue a job and return its record (``existing`` False).

        If ``idempotency_key`` was used before, nothing is created and the earlier job is returned with
        ``existing`` True (whatever its status and spec).
        """
        if not isinstance(spec, dict):
            raise ValueError(f"spec {spec!r} is invalid; valid: a dict (the validated request)")
        spec_json = _dumps(spec, "spec")
        if job_id is not None:
            validate_name(job_id, "job id")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority {priority!r} is invalid; valid: an integer (higher runs first)")
        _check_int(total_rows, "total_rows", 1)
        _check_int(total_shards, "total_shards", 1)
        if not isinstance(output, str) or not output:
            raise ValueError(f"output {output!r} is invalid; valid: a non-empty path or URI")
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise ValueError(
                f"idempotency_key {idempotency_key!r} is invalid; valid: a non-empty string or None"
            )
        with self._tx("submit") as cur:
            if idempotency_key is not None:
                cur.row_factory = sqlite3.Row
                row = cur.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return {**self._record(row), "existing": True}
            if job_id is None:
                job_id = "j-" + secrets.token_hex(6)
            elif cur.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                raise ValueError(f"job id {job_id!r} already exists; valid: a new id, or omit it to get one")
            now = self._now()
            cur.execute(
                "INSERT INTO jobs (id, status, spec, priority, idempotency_key, output, total_rows,"
                " total_shards, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, JobStatus.QUEUED.value, spec_json, priority, idempotency_key, output,
                 total_rows, total_shards, now, now),
            )  # fmt: skip
            self._event(cur, job_id, "submit", None, JobStatus.QUEUED.value, "submitted")
            return {**self._record(self._row(cur, job_id)), "existing": False}

    # ------------------------------------------------------------------ transitions

    def claim(self, owner: str, limit_running: int | None = None) -> dict | None:
        """queued -> running for ``owner``: highest priority first, then oldest; None if nothing is claimable.

        A running job whose lease expired is claimable too, at its original position (event reason
        ``lease expired``). ``limit_running``: claim nothing while that many jobs hold a live lease.
        """
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner {owner!r} is invalid; valid: a non-empty string naming the worker")
        if limit_running is not None:
            _check_int(limit_running, "limit_running", 0)
        with self._tx("claim") as cur:
            now = self._now()
            if limit_running is not None:
                live = cur.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND lease_expires_at > ?", (now,)
                ).fetchone()[0]
                if live >= limit_running:
                    return None
            cur.row_factory = sqlite3.Row
            row = cur.execute(
                "SELECT id, status, lease_owner, attempts FROM jobs"
                " WHERE status = 'queued' OR (status = 'running' AND lease_expires_at <= ?)"
                " ORDER BY priority DESC, seq ASC LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            attempt = row["attempts"] + 1
            if row["status"] == JobStatus.RUNNING.value:
                reason = f"lease expired (owner {row['lease_owner']}); claimed by {owner} (attempt {attempt})"
            else:
                reason = f"claimed by {owner} (attempt {attempt})"
            cur.execute(
                "UPDATE jobs SET status = 'running',"
                " running_s = running_s + CASE WHEN status = 'running'"
                "   THEN MAX(0, MIN(:now, lease_expires_at) - attempt_started_at) ELSE 0 END,"
                " lease_owner = :owner, lease_expires_at = :now + :lease, attempts = attempts + 1,"
                " started_at = COALESCE(started_at, :now), attempt_started_at = :now, updated_at = :now"
                " WHERE id = :id"
                " AND (status = 'queued' OR (status = 'running' AND lease_expires_at <= :now))",
                {"now": now, "owner": owner, "lease": self.lease_s, "id": row["id"]},
            )
            if cur.rowcount != 1:
                raise InvalidTransition("claim", row["id"], row["status"], LEGAL_FROM["claim"])
            self._event(cur, row["id"], "claim", row["status"], JobStatus.RUNNING.value, reason)
            return self._record(self._row(cur, row["id"]))

    def heartbeat(self, job_id: str, owner: str) -> None:
        """Extend the lease of a running job held by ``owner`` (no event row: it changes no state)."""
        with self._tx("heartbeat") as cur:
            self._locate(cur, "heartbeat", job_id, owner)
            now = self._now()
            cur.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ? AND status = 'running'"
                " AND lease_owner = ?",
                (now + self.lease_s, now, job_id, owner),
            )

    def commit_shard(self, job_id: str, owner: str, shard: int, rows: int, info: dict) -> bool:
        """Record a finished shard exactly once (running -> running); False if it was already committed.

        Also extends the lease. ``info`` describes the shard as JSON (path, sha256, bytes, class_counts, ...).
        """
        _check_int(shard, "shard", 0)
        _check_int(rows, "rows", 0)
        if not isinstance(info, dict):
            raise ValueError(f"info {info!r} is invalid; valid: a dict describing the shard")
        info_json = _dumps(info, "shard info")
        with self._tx("commit_shard") as cur:
            row = self._locate(cur, "commit_shard", job_id, owner)
            if shard >= row["total_shards"]:
                raise ValueError(
                    f"shard {shard} is out of range for job {job_id}; valid: 0..{row['total_shards'] - 1}"
                )
            now = self._now()
            cur.execute(
                "INSERT OR IGNORE INTO shards (job_id, shard, rows, info, committed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, shard, rows, info_json, now),
            )
            if cur.rowcount == 0:
                return False  # already committed: nothing changes (the transaction commits no writes)
            if row["rows_done"] + rows > row["total_rows"]:
                raise ValueError(
                    f"shard {shard} of job {job_id} has {rows} rows but only "
                    f"{row['total_rows'] - row['rows_done']} of {row['total_rows']} remain; valid: <= that"
                )
            cur.execute(
                "UPDATE jobs SET rows_done = rows_done + ?, shards_done = shards_done + 1,"
                " lease_expires_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'running' AND lease_owner = ?",
                (rows, now + self.lease_s, now, job_id, owner),
            )
            if cur.rowcount != 1:
                raise InvalidTransition("commit_shard", job_id, row["status"], LEGAL_FROM["commit_shard"])
            self._event(
                cur,
                job_id,
                "commit_shard",
                row["status"],
                row["status"],
                f"shard {shard} ({rows} rows) by {owner}",
            )
            return True

    def complete(self, job_id: str, owner: str, result: dict | None = None) -> dict:
        """running -> succeeded; every shard and every row must be committed (else :class:`MissingShards`)."""
        if result is not None and not isinstance(result, dict):
            raise ValueError(
                f"result {result!r} is invalid; valid: a dict (e.g. the manifest summary) or None"
            )
        result_json = None if result is None else _dumps(result, "result")
        with self._tx("complete") as cur:
            row = self._locate(cur, "complete", job_id, owner)
            if row["shards_done"] != row["total_shards"] or row["rows_done"] != row["total_rows"]:
                have = {r[0] for r in cur.execute("SELECT shard FROM shards WHERE job_id = ?", (job_id,))}
                missing = [i for i in range(row["total_shards"]) if i not in have]
                raise MissingShards(job_id, missing, row["rows_done"], row["total_rows"])
            return self._apply(
                cur,
                "complete",
                job_id,
                JobStatus.SUCCEEDED,
                _STOP_CLOCK + ", result = :result, finished_at = :now, error = NULL",
                {"result": result_json},
                f"completed by {owner}",
                owner,
            )

    def fail(self, job_id: str, error: str, owner: str | None = None) -> dict:
        """queued|running -> failed with ``error``; with ``owner``, only that lease holder may fail it."""
        if not isinstance(error, str) or not error:
            raise ValueError(f"error {error!r} is invalid; valid: a non-empty message")
        with self._tx("fail") as cur:
            if owner is not None:  # a worker failing its own attempt: must still hold the lease
                row = self._locate(cur, "fail", job_id)
                if row["status"] != JobStatus.RUNNING.value:
                    raise InvalidTransition(
                        "fail", job_id, row["status"], (JobStatus.RUNNING,), f"owner {owner}"
                    )
            return self._apply(
                cur,
                "fail",
                job_id,
                JobStatus.FAILED,
                _STOP_CLOCK + ", error = :error, finished_at = :now",
                {"error": error},
                error,
                owner,
            )

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> dict:
        """queued|running -> cancelled; the worker learns it at its next heartbeat or commit."""
        with self._tx("cancel") as cur:
            return self._apply(
                cur, "cancel", job_id, JobStatus.CANCELLED, _STOP_CLOCK + ", finished_at = :now", {}, reason
            )

    def requeue(self, job_id: str, reason: str) -> dict:
        """running -> queued (lease cleared, committed shards kept), e.g. when its worker died."""
        with self._tx("requeue") as cur:
            return self._apply(cur, "requeue", job_id, JobStatus.QUEUED, _STOP_CLOCK, {}, reason)

    def requeue_running(self, reason: str = "queue restarted") -> list[str]:
        """Startup recovery: every running job -> queued, in one transaction; returns their ids (FIFO)."""
        with self._tx("requeue_running") as cur:
            ids = [r[0] for r in cur.execute("SELECT id FROM jobs WHERE status = 'running' ORDER BY seq")]
            for job_id in ids:
                self._apply(cur, "requeue", job_id, JobStatus.QUEUED, _STOP_CLOCK, {}, reason)
            return ids

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> dict:
        """The job record; :class:`JobNotFound` if there is none."""
        with self._read("get") as cur:
            row = self._row(cur, job_id)
            if row is None:
                raise JobNotFound(job_id)
            return self._record(row)

    def list(self, status: str | None = None, limit: int = 100) -> list[dict]:
        """Jobs, newest first, optionally only those with ``status``."""
        if status is not None and status not in _STATUS_VALUES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(_STATUS_VALUES)}")
        _check_int(limit, "limit", 1)
        with self._read("list") as cur:
            cur.row_factory = sqlite3.Row
            if status is None:
                rows = cur.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY seq DESC LIMIT ?", (status, limit)
                ).fetchall()
            return [self._record(r) for r in rows]

    def committed_shards(self, job_id: str) -> dict[int, dict]:
        """shard index -> the info dict it was committed with (``rows`` set to the committed count)."""
        with self._read("committed_shards") as cur:
            if cur.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(job_id)
            rows = cur.execute(
                "SELECT shard, rows, info FROM shards WHERE job_id = ? ORDER BY shard",
                (job_id,),
            ).fetchall()
            return {s: {**json.loads(info), "rows": n} for s, n, info in rows}

    def events(self, job_id: str) -> list[dict]:
        """The job's event log, oldest first: ts, transition, from_status, to_status, reason."""
        with self._read("events") as cur:
            if cur.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(job_id)
            cur.row_factory = sqlite3.Row
            rows = cur.execute(
                "SELECT ts, transition, from_status, to_status, reason FROM events"
                " WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
            return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        with self._read("counts") as cur:
            found = dict(cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            return {s: found.get(s, 0) for s in _STATUS_VALUES}

    def summary(self) -> dict[str, Any]:
        """The queue at a glance: counts per status, queued/running per priority (highest first), and the
        oldest waiting job and the next one to be claimed (``None`` when nothing waits)."""
        with self._read("summary") as cur:
            found = dict(cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            by_priority: dict[int, dict[str, int]] = {}
            for status, priority, n in cur.execute(
                "SELECT status, priority, COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                " GROUP BY status, priority"
            ):
                by_priority.setdefault(priority, {"queued": 0, "running": 0})[status] = n
            now = self._now()

            def waiting(order: str) -> dict | None:
                row = cur.execute(
                    "SELECT id, priority, created_at, total_rows FROM jobs WHERE status = 'queued'"
                    f" ORDER BY {order} LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                job_id, priority, created_at, rows = row
                return {
                    "id": job_id,
                    "priority": priority,
                    "created_at": created_at,
                    "waiting_s": max(0.0, now - created_at),
                    "total_rows": rows,
                }

            return {
                "counts": {s: found.get(s, 0) for s in _STATUS_VALUES},
                "by_priority": [{"priority": p, **by_priority[p]} for p in sorted(by_priority, reverse=True)],
                "oldest_queued": waiting("seq"),
                "next_queued": waiting("priority DESC, seq"),
                "now": now,
            }

    def find_by_idempotency_key(self, key: str) -> dict | None:
        """The job submitted with this idempotency key, or None."""
        with self._read("find_by_idempotency_key") as cur:
            cur.row_factory = sqlite3.Row
            row = cur.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
            return None if row is None else self._record(row)
