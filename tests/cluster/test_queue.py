"""Tests for cluster.queue: the SQLite job store and its state machine (real SQLite files in tmp_path)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cluster.queue import (
    TERMINAL,
    InvalidTransition,
    JobNotFound,
    JobStatus,
    JobStore,
    LeaseLost,
    MissingShards,
    QueueError,
)

REPO = Path(__file__).resolve().parents[2]
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
# Expected legal sources, written out here (not imported) so a change in the module is caught.
LEGAL = {
    "heartbeat": ["running"],
    "commit_shard": ["running"],
    "complete": ["running"],
    "fail": ["queued", "running"],
    "cancel": ["queued", "running"],
    "requeue": ["running"],
}


class Clock:
    """A controllable ``now``."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    s = JobStore(tmp_path / "state" / "queue.sqlite", lease_s=10.0, now=clock)
    yield s
    s.close()


def submit(store: JobStore, spec=None, **kw) -> dict:
    args = {"total_rows": 10, "total_shards": 2, "output": "datasets/x", **kw}
    return store.submit({"model": "cvae", "seed": 0} if spec is None else spec, **args)


def job_in(store: JobStore, state: str, owner: str = "w1") -> str:
    """A new job brought to ``state`` (the store must hold no other claimable job)."""
    job_id = submit(store)["id"]
    if state == "queued":
        return job_id
    if state == "failed":
        store.fail(job_id, "boom")
        return job_id
    if state == "cancelled":
        store.cancel(job_id)
        return job_id
    assert store.claim(owner)["id"] == job_id
    if state == "succeeded":
        store.commit_shard(job_id, owner, 0, 5, {"path": "a"})
        store.commit_shard(job_id, owner, 1, 5, {"path": "b"})
        store.complete(job_id, owner)
    return job_id


def do(store: JobStore, transition: str, job_id: str, owner: str = "w1"):
    """Call ``transition`` with plausible arguments."""
    if transition == "heartbeat":
        return store.heartbeat(job_id, owner)
    if transition == "commit_shard":
        return store.commit_shard(job_id, owner, 0, 5, {"path": "a"})
    if transition == "complete":
        return store.complete(job_id, owner)
    if transition == "fail":
        return store.fail(job_id, "boom")
    if transition == "cancel":
        return store.cancel(job_id)
    if transition == "requeue":
        return store.requeue(job_id, "worker died")
    raise AssertionError(transition)


# ---------------------------------------------------------------------------- lifecycle


def test_full_lifecycle_records_progress_timing_and_events(store: JobStore, clock: Clock):
    spec = {"model": "cvae", "counts": {"3": 6, "7": 4}, "seed": 7, "temperature": 0.8}
    rec = store.submit(spec, total_rows=10, total_shards=2, output="datasets/j1", priority=3)
    assert re.fullmatch(r"j-[0-9a-f]{12}", rec["id"])
    assert rec["status"] == "queued" and rec["existing"] is False
    assert rec["spec"] == spec and rec["priority"] == 3 and rec["output"] == "datasets/j1"
    assert (rec["rows_done"], rec["shards_done"], rec["attempts"], rec["progress"]) == (0, 0, 0, 0.0)
    assert rec["created_at"] == 1000.0 and rec["started_at"] is None
    assert rec["elapsed_s"] is None and rec["rows_per_s"] is None
    job_id = rec["id"]

    clock.advance(1)
    run = store.claim("w1")
    assert run["id"] == job_id and run["status"] == "running" and run["attempts"] == 1
    assert run["started_at"] == 1001.0 and run["lease_owner"] == "w1" and run["lease_expires_at"] == 1011.0

    clock.advance(2)
    assert store.commit_shard(job_id, "w1", 1, 4, {"path": "b.parquet", "sha256": "bb", "bytes": 40}) is True
    mid = store.get(job_id)
    assert (mid["rows_done"], mid["shards_done"], mid["progress"]) == (4, 1, 0.4)
    assert mid["elapsed_s"] == 2.0 and mid["rows_per_s"] == 2.0
    clock.advance(2)
    assert store.commit_shard(job_id, "w1", 0, 6, {"path": "a.parquet", "sha256": "aa", "bytes": 60}) is True

    clock.advance(1)
    done = store.complete(job_id, "w1", result={"manifest": "datasets/j1/manifest.json", "rows": 10})
    assert done["status"] == "succeeded" and done["finished_at"] == 1006.0
    assert done["lease_owner"] is None and done["lease_expires_at"] is None
    assert done["result"] == {"manifest": "datasets/j1/manifest.json", "rows": 10}
    assert done["progress"] == 1.0 and done["elapsed_s"] == 5.0 and done["rows_per_s"] == 2.0
    clock.advance(100)  # a finished job's running time no longer grows
    assert store.get(job_id)["elapsed_s"] == 5.0

    shards = store.committed_shards(job_id)
    assert sorted(shards) == [0, 1]
    assert shards[0]["path"] == "a.parquet" and shards[0]["rows"] == 6 and shards[1]["sha256"] == "bb"
    ev = store.events(job_id)
    assert [e["transition"] for e in ev] == ["submit", "claim", "commit_shard", "commit_shard", "complete"]
    assert [(e["from_status"], e["to_status"]) for e in ev] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "running"),
        ("running", "running"),
        ("running", "succeeded"),
    ]
    assert ev[1]["reason"] == "claimed by w1 (attempt 1)" and ev[2]["reason"] == "shard 1 (4 rows) by w1"
    assert [e["ts"] for e in ev] == [1000.0, 1001.0, 1003.0, 1005.0, 1006.0]
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    json.dumps([rec, run, done, shards, ev, store.list(), store.counts()])  # everything is JSON-able


def test_claim_orders_by_priority_then_fifo(store: JobStore):
    # The clock never moves: order among equal priorities comes from submission order, not timestamps.
    ids = {
        name: submit(store, priority=p, job_id=name)["id"]
        for name, p in [("a", 0), ("b", 5), ("c", 0), ("d", 5)]
    }
    assert ids == {"a": "a", "b": "b", "c": "c", "d": "d"}
    claimed = [store.claim("w")["id"] for _ in range(4)]
    assert claimed == ["b", "d", "a", "c"]
    assert store.claim("w") is None
    # a later, higher-priority job jumps the queue
    submit(store, job_id="e", priority=-1)
    submit(store, job_id="f", priority=9)
    assert [store.claim("w")["id"], store.claim("w")["id"]] == ["f", "e"]


def test_fifo_follows_submission_order_even_if_clocks_disagree(store: JobStore, clock: Clock):
    submit(store, job_id="first")
    clock.advance(-60)  # a second process whose clock is behind
    submit(store, job_id="second")
    assert store.get("second")["created_at"] < store.get("first")["created_at"]
    assert [store.claim("w")["id"], store.claim("w")["id"]] == ["first", "second"]


def test_limit_running_counts_live_leases_only(store: JobStore, clock: Clock):
    for name in "abc":
        submit(store, job_id=name)
    assert store.claim("w", limit_running=0) is None
    assert store.claim("w", limit_running=2)["id"] == "a"
    assert store.claim("w", limit_running=2)["id"] == "b"
    assert store.claim("w", limit_running=2) is None
    assert store.get("c")["status"] == "queued"
    store.fail("a", "out of memory")
    assert store.claim("w", limit_running=2)["id"] == "c"
    assert store.counts()["running"] == 2
    clock.advance(11)  # both leases expired: they no longer count, and b is re-claimable first (older)
    assert store.claim("w2", limit_running=1)["id"] == "b"
    assert store.claim("w2", limit_running=1) is None
    with pytest.raises(ValueError, match=r"limit_running -1 is invalid; valid: an integer >= 0"):
        store.claim("w", limit_running=-1)


def test_expired_lease_is_reclaimed_with_shards_intact(store: JobStore, clock: Clock):
    job_id = submit(store, total_rows=10, total_shards=2)["id"]
    clock.t = 0.0
    store.claim("w1")
    store.commit_shard(job_id, "w1", 0, 5, {"path": "a"})  # at t=0: lease until 10
    clock.t = 9.0
    assert store.claim("w2") is None  # still leased
    store.heartbeat(job_id, "w1")
    assert store.get(job_id)["lease_expires_at"] == 19.0
    clock.t = 15.0
    assert store.claim("w2") is None
    clock.t = 20.0
    again = store.claim("w2")
    assert again["id"] == job_id and again["attempts"] == 2 and again["lease_owner"] == "w2"
    assert again["started_at"] == 0.0 and again["rows_done"] == 5
    last = store.events(job_id)[-1]
    assert (last["transition"], last["from_status"], last["to_status"]) == ("claim", "running", "running")
    assert last["reason"] == "lease expired (owner w1); claimed by w2 (attempt 2)"
    # the stale worker is told it lost the lease, and cannot write anything
    for call in (
        lambda: store.heartbeat(job_id, "w1"),
        lambda: store.commit_shard(job_id, "w1", 1, 5, {"path": "stale"}),
        lambda: store.complete(job_id, "w1"),
        lambda: store.fail(job_id, "stale failure", owner="w1"),
    ):
        with pytest.raises(LeaseLost, match=rf"job {job_id}: it is running under lease owner 'w2', not 'w1'"):
            call()
    assert store.committed_shards(job_id)[0]["path"] == "a" and 1 not in store.committed_shards(job_id)
    assert store.commit_shard(job_id, "w2", 0, 5, {"path": "again"}) is False  # kept from attempt 1
    assert store.commit_shard(job_id, "w2", 1, 5, {"path": "b"}) is True
    clock.t = 25.0
    done = store.complete(job_id, "w2")
    # running time: attempt 1 counts until its lease ran out (19), attempt 2 from 20 to 25
    assert done["elapsed_s"] == 24.0 and done["rows_per_s"] == pytest.approx(10 / 24)
    assert store.committed_shards(job_id)[0]["path"] == "a"


def test_commit_shard_extends_the_lease(store: JobStore, clock: Clock):
    job_id = job_in(store, "running")
    clock.advance(8)
    store.commit_shard(job_id, "w1", 0, 5, {})
    assert store.get(job_id)["lease_expires_at"] == clock.t + 10
    clock.advance(9)
    assert store.claim("w2") is None


# ---------------------------------------------------------------------------- illegal transitions

ILLEGAL = [(t, s) for t in LEGAL for s in STATUSES if s not in LEGAL[t]]


def test_illegal_pairs_cover_every_terminal_state():
    assert len(ILLEGAL) == 22
    assert all((t, s) in ILLEGAL for t in LEGAL for s in ("succeeded", "failed", "cancelled"))


@pytest.mark.parametrize(("transition", "state"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(store: JobStore, transition: str, state: str):
    job_id = job_in(store, state)
    before, events_before = store.get(job_id), store.events(job_id)
    shards_before = store.committed_shards(job_id)
    legal = ", ".join(LEGAL[transition])
    with pytest.raises(InvalidTransition) as info:
        do(store, transition, job_id)
    assert str(info.value) == f"cannot {transition} job {job_id}: status is {state}; legal from: {legal}"
    assert (info.value.job_id, info.value.status, info.value.legal) == (
        job_id,
        state,
        tuple(LEGAL[transition]),
    )
    assert store.get(job_id) == before and store.events(job_id) == events_before
    assert store.committed_shards(job_id) == shards_before


@pytest.mark.parametrize("transition", sorted(LEGAL))
def test_transition_on_unknown_job_raises_job_not_found(store: JobStore, transition: str):
    with pytest.raises(JobNotFound, match="no job with id 'j-missing'"):
        do(store, transition, "j-missing")
    assert isinstance(JobNotFound("x"), KeyError)


def test_reads_of_unknown_job_raise_job_not_found(store: JobStore):
    for read in (store.get, store.events, store.committed_shards):
        with pytest.raises(JobNotFound, match="j-nope"):
            read("j-nope")


def test_claim_never_picks_terminal_jobs(store: JobStore, clock: Clock):
    for state in ("succeeded", "failed", "cancelled"):
        job_in(store, state)
    clock.advance(1000)
    assert store.claim("w") is None


# ---------------------------------------------------------------------------- shards and completion


def test_commit_shard_is_exactly_once(store: JobStore):
    job_id = job_in(store, "running")
    assert store.commit_shard(job_id, "w1", 0, 5, {"path": "a", "sha256": "x1"}) is True
    assert store.commit_shard(job_id, "w1", 0, 5, {"path": "a2", "sha256": "x2"}) is False
    assert store.commit_shard(job_id, "w1", 0, 3, {"path": "a3"}) is False
    rec = store.get(job_id)
    assert (rec["rows_done"], rec["shards_done"]) == (5, 1)
    assert store.committed_shards(job_id)[0]["sha256"] == "x1"
    assert [e["transition"] for e in store.events(job_id)].count("commit_shard") == 1


def test_commit_shard_rejects_bad_input_and_writes_nothing(store: JobStore):
    job_id = job_in(store, "running")
    with pytest.raises(ValueError, match=rf"shard 2 is out of range for job {job_id}; valid: 0..1"):
        store.commit_shard(job_id, "w1", 2, 5, {})
    with pytest.raises(ValueError, match=r"shard -1 is invalid; valid: an integer >= 0"):
        store.commit_shard(job_id, "w1", -1, 5, {})
    with pytest.raises(ValueError, match=r"has 11 rows but only 10 of 10 remain"):
        store.commit_shard(job_id, "w1", 0, 11, {})
    with pytest.raises(ValueError, match=r"shard info is not JSON-serialisable"):
        store.commit_shard(job_id, "w1", 0, 5, {"bad": object()})
    with pytest.raises(ValueError, match=r"shard info is not JSON-serialisable"):
        store.commit_shard(job_id, "w1", 0, 5, {"nan": math.nan})
    assert store.committed_shards(job_id) == {}
    assert store.get(job_id)["rows_done"] == 0 and len(store.events(job_id)) == 2


def test_complete_refuses_missing_shards_or_rows(store: JobStore):
    job_id = submit(store, total_rows=9, total_shards=3)["id"]
    store.claim("w1")
    store.commit_shard(job_id, "w1", 0, 3, {})
    store.commit_shard(job_id, "w1", 2, 3, {})
    with pytest.raises(
        MissingShards, match=rf"cannot complete job {job_id}: 1 of its shards are not committed: 1;"
    ):
        store.complete(job_id, "w1")
    try:
        store.complete(job_id, "w1")
    except MissingShards as exc:
        assert isinstance(exc, ValueError) and isinstance(exc, InvalidTransition) and exc.missing == [1]
    store.commit_shard(job_id, "w1", 1, 2, {})  # one row short
    with pytest.raises(MissingShards, match=r"rows_done 8 != total_rows 9"):
        store.complete(job_id, "w1")
    rec = store.get(job_id)
    assert rec["status"] == "running" and rec["finished_at"] is None


# ---------------------------------------------------------------------------- cancel, fail, requeue


@pytest.mark.parametrize("state", ["queued", "running"])
def test_cancel_from_queued_and_running(store: JobStore, clock: Clock, state: str):
    job_id = job_in(store, state)
    clock.advance(3)
    rec = store.cancel(job_id, reason="user asked")
    assert rec["status"] == "cancelled" and rec["finished_at"] == clock.t and rec["lease_owner"] is None
    last = store.events(job_id)[-1]
    assert (last["transition"], last["from_status"], last["to_status"], last["reason"]) == (
        "cancel",
        state,
        "cancelled",
        "user asked",
    )
    # the worker notices at its next heartbeat
    with pytest.raises(InvalidTransition, match="status is cancelled"):
        store.heartbeat(job_id, "w1")
    clock.advance(100)
    assert store.claim("w2") is None


def test_fail_records_error_and_checks_owner(store: JobStore):
    queued = job_in(store, "queued")
    with pytest.raises(
        InvalidTransition, match=rf"cannot fail job {queued}: status is queued; legal from: running"
    ):
        store.fail(queued, "boom", owner="w1")  # a worker can only fail its own running attempt
    rec = store.fail(queued, "spec rejected: unknown model 'x'")
    assert rec["status"] == "failed" and rec["error"] == "spec rejected: unknown model 'x'"
    running = job_in(store, "running")
    with pytest.raises(LeaseLost):
        store.fail(running, "boom", owner="w9")
    rec = store.fail(running, "CUDA out of memory", owner="w1")
    assert rec["status"] == "failed" and rec["error"] == "CUDA out of memory"
    assert store.events(running)[-1]["reason"] == "CUDA out of memory"
    with pytest.raises(ValueError, match="error '' is invalid"):
        store.fail(running, "")


def test_requeue_keeps_shards_and_clears_lease(store: JobStore):
    job_id = job_in(store, "running")
    store.commit_shard(job_id, "w1", 1, 4, {"path": "b"})
    rec = store.requeue(job_id, "worker node lost")
    assert rec["status"] == "queued" and rec["lease_owner"] is None and rec["lease_expires_at"] is None
    assert rec["rows_done"] == 4 and store.committed_shards(job_id)[1]["path"] == "b"
    assert store.events(job_id)[-1]["reason"] == "worker node lost"
    assert store.claim("w2")["attempts"] == 2


def test_requeue_running_after_restart(tmp_path: Path, clock: Clock):
    path = tmp_path / "q.sqlite"
    s = JobStore(path, now=clock)
    a = submit(s, job_id="a", total_rows=4, total_shards=2)["id"]
    b = submit(s, job_id="b")["id"]
    c = submit(s, job_id="c")["id"]
    d = submit(s, job_id="d")["id"]
    for job_id in (a, b, c):
        assert s.claim("w1")["id"] == job_id
    s.commit_shard(a, "w1", 0, 2, {"path": "a0", "sha256": "h"})
    for i in (0, 1):
        s.commit_shard(c, "w1", i, 5, {})
    s.complete(c, "w1")
    s.close()  # the queue process dies; the file survives

    clock.advance(5)
    s2 = JobStore(path, now=clock)
    assert s2.counts() == {"queued": 1, "running": 2, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert s2.requeue_running() == [a, b]
    assert s2.requeue_running() == []
    for job_id in (a, b):
        rec = s2.get(job_id)
        assert rec["status"] == "queued" and rec["lease_owner"] is None
        ev = s2.events(job_id)[-1]
        assert (ev["transition"], ev["from_status"], ev["to_status"], ev["reason"]) == (
            "requeue",
            "running",
            "queued",
            "queue restarted",
        )
    assert s2.get(a)["rows_done"] == 2 and s2.committed_shards(a) == {
        0: {"path": "a0", "sha256": "h", "rows": 2}
    }
    assert s2.get(c)["status"] == "succeeded" and s2.get(d)["status"] == "queued"
    # resume: only the missing shard is produced
    again = s2.claim("w2")
    assert again["id"] == a and again["attempts"] == 2
    missing = [i for i in range(again["total_shards"]) if i not in s2.committed_shards(a)]
    assert missing == [1]
    s2.commit_shard(a, "w2", 1, 2, {})
    assert s2.complete(a, "w2")["rows_done"] == 4
    s2.close()


# ---------------------------------------------------------------------------- submit, reads


def test_idempotency_key_returns_the_existing_job(tmp_path: Path, store: JobStore):
    first = submit(store, idempotency_key="req-42")
    second = submit(store, idempotency_key="req-42", spec={"model": "other"}, total_rows=99)
    assert second["existing"] is True and first["existing"] is False
    assert second["id"] == first["id"] and second["spec"] == first["spec"] and second["total_rows"] == 10
    assert sum(store.counts().values()) == 1
    assert store.find_by_idempotency_key("req-42")["id"] == first["id"]
    assert store.find_by_idempotency_key("req-43") is None
    # also across two stores on the same file, and after the job finished
    store.cancel(first["id"])
    other = JobStore(store.path)
    third = other.submit({"model": "x"}, idempotency_key="req-42", total_rows=1, total_shards=1, output="o")
    assert third["id"] == first["id"] and third["status"] == "cancelled" and third["existing"] is True
    other.close()


def test_list_filters_orders_and_rejects_bad_status(store: JobStore):
    for name in "abcd":
        submit(store, job_id=name)
    store.claim("w")  # a
    store.cancel("c")
    assert [r["id"] for r in store.list()] == ["d", "c", "b", "a"]
    assert [r["id"] for r in store.list(limit=2)] == ["d", "c"]
    assert [r["id"] for r in store.list(status="queued")] == ["d", "b"]
    assert [r["id"] for r in store.list("running")] == ["a"]
    assert store.list(status="failed") == []
    with pytest.raises(ValueError) as info:
        store.list(status="done")
    assert str(info.value) == "unknown status 'done'; valid: queued, running, succeeded, failed, cancelled"
    with pytest.raises(ValueError, match="limit 0 is invalid"):
        store.list(limit=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_rows": 0}, r"total_rows 0 is invalid; valid: an integer >= 1"),
        ({"total_shards": 0}, r"total_shards 0 is invalid; valid: an integer >= 1"),
        ({"total_rows": 2.5}, r"total_rows 2.5 is invalid"),
        ({"output": ""}, r"output '' is invalid"),
        ({"job_id": "../evil"}, r"invalid job id '../evil'"),
        ({"priority": "high"}, r"priority 'high' is invalid; valid: an integer"),
        ({"spec": {"x": math.inf}}, r"spec is not JSON-serialisable"),
        ({"spec": ["not", "a", "dict"]}, r"spec \['not', 'a', 'dict'\] is invalid; valid: a dict"),
        ({"idempotency_key": ""}, r"idempotency_key '' is invalid"),
    ],
)
def test_submit_rejects_bad_input_and_writes_nothing(store: JobStore, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        submit(store, **kwargs)
    assert sum(store.counts().values()) == 0


def test_submit_rejects_duplicate_job_id(store: JobStore):
    submit(store, job_id="gen-1")
    with pytest.raises(ValueError, match=r"job id 'gen-1' already exists"):
        submit(store, job_id="gen-1")
    assert store.counts()["queued"] == 1


# ---------------------------------------------------------------------------- the store itself


def test_readonly_store_reads_but_refuses_writes(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    with JobStore(path) as s:
        job_id = submit(s)["id"]
        ro = JobStore(path, readonly=True)  # while the writer is open (the CLI next to the dispatcher)
        assert ro.get(job_id)["status"] == "queued"
        ro.close()
    ro = JobStore(path, readonly=True)  # and after it closed
    assert ro.counts()["queued"] == 1 and ro.list()[0]["id"] == job_id
    for write in (lambda: ro.cancel(job_id), lambda: submit(ro), lambda: ro.claim("w"), ro.requeue_running):
        with pytest.raises(
            QueueError, match=rf"job store {re.escape(str(path))} is read-only .*readonly=True"
        ):
            write()
    ro.close()
    with JobStore(path) as s:
        assert s.get(job_id)["status"] == "queued"
    with pytest.raises(QueueError, match=r"no job store at .*missing\.sqlite"):
        JobStore(tmp_path / "missing.sqlite", readonly=True)


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_immutable_database_file_raises_queue_error(tmp_path: Path):
    """A really read-only file: the immutable attribute binds root too (chmod does not)."""
    path = tmp_path / "q.sqlite"
    with JobStore(path) as s:
        submit(s)
    if not _chattr("+i", path):
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
    try:
        with pytest.raises(QueueError, match=rf"{re.escape(str(path))} is read-only .*not writable"):
            JobStore(path)
    finally:
        _chattr("-i", path)
    with JobStore(path) as s:
        assert s.counts()["queued"] == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file modes")
def test_chmod_readonly_file_raises_queue_error(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    with JobStore(path) as s:
        submit(s)
    path.chmod(0o444)
    try:
        with pytest.raises(QueueError, match="read-only"):
            JobStore(path)
    finally:
        path.chmod(0o644)


def test_parent_is_a_file_raises_queue_error(tmp_path: Path):
    (tmp_path / "home").write_text("not a folder")
    with pytest.raises(QueueError, match=r"cannot create the folder for job store .*home/state/q\.sqlite"):
        JobStore(tmp_path / "home" / "state" / "q.sqlite")


def test_corrupted_file_raises_queue_error_and_is_left_alone(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    junk = b"this is not a database, it is a text file\n" * 200
    path.write_bytes(junk)
    with pytest.raises(QueueError, match=rf"{re.escape(str(path))} is corrupted or not a SQLite database"):
        JobStore(path)
    assert path.read_bytes() == junk


def test_newer_schema_version_is_refused(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    JobStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(QueueError, match=r"schema version 99, this genaug reads version 1"):
        JobStore(path)


def test_locked_database_raises_queue_error_without_damage(tmp_path: Path, clock: Clock):
    path = tmp_path / "q.sqlite"
    s = JobStore(path, now=clock, timeout_s=0.2)
    job_id = submit(s)["id"]
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE jobs SET priority = 7")  # an uncommitted write holds the lock
    try:
        t0 = time.monotonic()
        with pytest.raises(
            QueueError, match=rf"job store {re.escape(str(path))} is locked: .* 0\.2s \(submit\)"
        ):
            submit(s)
        waited = time.monotonic() - t0
        assert 0.15 < waited < 3.0
        with pytest.raises(QueueError, match="is locked"):
            s.claim("w")
        assert s.get(job_id)["priority"] == 0  # readers are not blocked in WAL mode
    finally:
        other.execute("ROLLBACK")
        other.close()
    # nothing half-done: the store still works and the file is intact
    assert s.claim("w")["id"] == job_id
    assert sum(s.counts().values()) == 1 and len(s.events(job_id)) == 2
    assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s.close()


def test_closed_store_raises_queue_error(tmp_path: Path):
    s = JobStore(tmp_path / "q.sqlite")
    s.close()
    s.close()
    with pytest.raises(QueueError, match="is closed"):
        s.counts()


def test_bad_lease_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="lease_s 0 is invalid"):
        JobStore(tmp_path / "q.sqlite", lease_s=0)


# ---------------------------------------------------------------------------- concurrency


def test_two_stores_on_one_file_never_share_a_claim(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    s1, s2 = JobStore(path), JobStore(path)
    ids = {submit(s1)["id"] for _ in range(6)}
    got1, got2 = [], []
    for _ in range(4):
        for s, got in ((s1, got1), (s2, got2)):
            rec = s.claim(f"w{id(s)}")
            if rec:
                got.append(rec["id"])
    assert sorted(got1 + got2) == sorted(ids) and len(got1) == len(got2) == 3
    s1.close()
    s2.close()


def test_threads_sharing_one_store_never_share_a_claim(store: JobStore):
    ids = {submit(store)["id"] for _ in range(40)}
    got: list[str] = []

    def worker(name: str) -> None:
        while (rec := store.claim(name)) is not None:
            got.append(rec["id"])
            store.commit_shard(rec["id"], name, 0, 5, {})

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)
    assert all(r["rows_done"] == 5 and r["attempts"] == 1 for r in store.list(limit=100))


_CHILD = """
import json, sys, time
from pathlib import Path
from cluster.queue import JobStore
path, owner, go, out = sys.argv[1:5]
store = JobStore(path, timeout_s=30)
while not Path(go).exists():
    time.sleep(0.005)
got = []
while (rec := store.claim(owner)) is not None:
    got.append(rec["id"])
Path(out).write_text(json.dumps(got))
"""


def test_processes_never_claim_the_same_job(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    with JobStore(path) as s:
        ids = {submit(s)["id"] for _ in range(60)}
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), f"p{i}", str(go), str(tmp_path / f"out{i}.json")],
            env=env,
        )
        for i in range(3)
    ]
    time.sleep(0.3)
    go.touch()  # start all claim loops together
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    got = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(3)]
    claimed = [j for g in got for j in g]
    assert sorted(claimed) == sorted(ids)  # every job exactly once
    with JobStore(path) as s:
        assert s.counts()["running"] == 60
        for job_id in ids:
            assert [e["transition"] for e in s.events(job_id)] == ["submit", "claim"]
            assert s.get(job_id)["attempts"] == 1


# ---------------------------------------------------------------------------- property test


class QueueMachine(RuleBasedStateMachine):
    """Random transition sequences, checked against a small model and against the store's own invariants."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="genaug-queue-")
        self.path = Path(self.dir) / "q.sqlite"
        self.clock = Clock(0.0)
        self.store = JobStore(self.path, lease_s=5.0, now=self.clock)
        self.model: dict[str, dict] = {}  # id -> status, owner, lease, shards {i: rows}, totals, seq
        self.frozen: dict[str, dict] = {}  # terminal job -> its record when it became terminal

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pick(self, which: str, index: int, right_owner: bool) -> tuple[str, str]:
        """A job (mostly a running one, to reach deep states) and an owner (mostly its lease owner)."""
        running = [i for i, m in self.model.items() if m["status"] == "running"]
        pool = running if which == "running" and running else list(self.model)
        job = pool[index % len(pool)]
        owner = self.model[job]["owner"] or "w1"
        return job, owner if right_owner else {"w1": "w2", "w2": "w1"}[owner]

    def expect(self, legal: bool, call):
        """Run ``call``; it must succeed iff ``legal`` (else raise InvalidTransition)."""
        if legal:
            return call()
        with pytest.raises(InvalidTransition):
            call()
        return None

    @initialize(sizes=st.lists(st.integers(1, 2), min_size=1, max_size=3))
    def start(self, sizes):
        for shards in sizes:
            self.submit(shards, 0)

    @rule(shards=st.integers(1, 3), priority=st.integers(0, 2))
    def submit(self, shards, priority):
        rec = self.store.submit(
            {"k": len(self.model)}, priority=priority, total_rows=2 * shards, total_shards=shards, output="o"
        )
        self.model[rec["id"]] = {
            "status": "queued", "owner": None, "lease": None, "shards": {}, "total_shards": shards,
            "total_rows": 2 * shards, "priority": priority, "seq": len(self.model),
        }  # fmt: skip

    @rule(owner=st.sampled_from(["w1", "w2"]), limit=st.sampled_from([None, None, None, 1, 2]))
    def claim(self, owner, limit):
        now = self.clock.t
        live = sum(m["status"] == "running" and m["lease"] > now for m in self.model.values())
        candidates = [
            (-m["priority"], m["seq"], i)
            for i, m in self.model.items()
            if m["status"] == "queued" or (m["status"] == "running" and m["lease"] <= now)
        ]
        rec = self.store.claim(owner, limit_running=limit)
        if not candidates or (limit is not None and live >= limit):
            assert rec is None
            return
        job_id = min(candidates)[2]
        assert rec["id"] == job_id and rec["lease_owner"] == owner
        self.model[job_id].update(status="running", owner=owner, lease=now + 5.0)

    JOB = {
        "which": st.sampled_from(["running", "running", "running", "any"]),
        "index": st.integers(0, 20),
        "right_owner": st.sampled_from([True, True, True, False]),
    }
    KILL = {**JOB, "which": st.sampled_from(["any", "any", "any", "running"])}  # let running jobs live longer

    @precondition(lambda self: self.model)
    @rule(**JOB)
    def heartbeat(self, which, index, right_owner):
        job, owner = self.pick(which, index, right_owner)
        m = self.model[job]
        ok = m["status"] == "running" and m["owner"] == owner
        self.expect(ok, lambda: self.store.heartbeat(job, owner))
        if ok:
            m["lease"] = self.clock.t + 5.0

    @precondition(lambda self: self.model)
    @rule(
        **JOB,
        kind=st.sampled_from(["next", "next", "next", "done", "out"]),
        rows=st.sampled_from([2, 2, 2, 1, 3]),
    )
    def commit_shard(self, which, index, right_owner, kind, rows):
        job, owner = self.pick(which, index, right_owner)
        m = self.model[job]
        missing = [i for i in range(m["total_shards"]) if i not in m["shards"]]
        if kind == "next" and missing:
            shard = missing[0]
        elif kind == "done" and m["shards"]:
            shard = min(m["shards"])
        else:
            shard = m["total_shards"]
        if not (m["status"] == "running" and m["owner"] == owner):
            self.expect(False, lambda: self.store.commit_shard(job, owner, shard, rows, {"s": shard}))
        elif shard >= m["total_shards"]:
            with pytest.raises(ValueError, match="out of range"):
                self.store.commit_shard(job, owner, shard, rows, {})
        elif shard in m["shards"]:
            assert self.store.commit_shard(job, owner, shard, rows, {}) is False
        elif sum(m["shards"].values()) + rows > m["total_rows"]:
            with pytest.raises(ValueError, match="remain"):
                self.store.commit_shard(job, owner, shard, rows, {})
        else:
            assert self.store.commit_shard(job, owner, shard, rows, {"s": shard}) is True
            m["shards"][shard] = rows
            m["lease"] = self.clock.t + 5.0

    @precondition(lambda self: self.model)
    @rule(**JOB)
    def complete(self, which, index, right_owner):
        job, owner = self.pick(which, index, right_owner)
        m = self.model[job]
        ok = m["status"] == "running" and m["owner"] == owner
        full = len(m["shards"]) == m["total_shards"] and sum(m["shards"].values()) == m["total_rows"]
        if ok and not full:
            with pytest.raises(MissingShards):
                self.store.complete(job, owner)
        elif self.expect(ok, lambda: self.store.complete(job, owner, {"rows": m["total_rows"]})):
            m.update(status="succeeded", owner=None)

    @precondition(lambda self: any(m["status"] == "running" for m in self.model.values()))
    @rule(index=st.integers(0, 20))
    def finish(self, index):
        """A well-behaved worker: commit each missing shard (remaining rows in the last one), complete."""
        job, owner = self.pick("running", index, True)
        m = self.model[job]
        missing = [i for i in range(m["total_shards"]) if i not in m["shards"]]
        left = m["total_rows"] - sum(m["shards"].values())
        if not missing and left:
            with pytest.raises(MissingShards, match="rows_done"):
                self.store.complete(job, owner)
            return
        for i in missing:
            rows = left if i == missing[-1] else 0
            assert self.store.commit_shard(job, owner, i, rows, {"s": i}) is True
            m["shards"][i] = rows
        rec = self.store.complete(job, owner, {"rows": m["total_rows"]})
        assert rec["status"] == "succeeded" and rec["rows_done"] == m["total_rows"] and rec["progress"] == 1.0
        m.update(status="succeeded", owner=None)

    @precondition(lambda self: self.model)
    @rule(**KILL, as_worker=st.booleans())
    def fail(self, which, index, right_owner, as_worker):
        job, owner = self.pick(which, index, right_owner)
        m = self.model[job]
        if as_worker:
            ok = (m["status"], m["owner"]) == ("running", owner)
        else:
            owner, ok = None, m["status"] in ("queued", "running")
        if self.expect(ok, lambda: self.store.fail(job, "boom", owner=owner)):
            m.update(status="failed", owner=None)

    @precondition(lambda self: self.model)
    @rule(**KILL)
    def cancel(self, which, index, right_owner):
        job, _ = self.pick(which, index, right_owner)
        m = self.model[job]
        if self.expect(m["status"] in ("queued", "running"), lambda: self.store.cancel(job)):
            m.update(status="cancelled", owner=None)

    @precondition(lambda self: self.model)
    @rule(**KILL)
    def requeue(self, which, index, right_owner):
        job, _ = self.pick(which, index, right_owner)
        m = self.model[job]
        if self.expect(m["status"] == "running", lambda: self.store.requeue(job, "test")):
            m.update(status="queued", owner=None)

    @precondition(lambda self: any(m["status"] == "running" for m in self.model.values()))
    @rule()
    def restart(self):
        self.store.close()
        self.store = JobStore(self.path, lease_s=5.0, now=self.clock)
        back = self.store.requeue_running()
        running = [i for i, m in self.model.items() if m["status"] == "running"]
        assert back == sorted(running, key=lambda i: self.model[i]["seq"])
        for i in back:
            self.model[i].update(status="queued", owner=None)

    @rule(dt=st.sampled_from([0.5, 3.0, 6.0]))
    def tick(self, dt):
        self.clock.advance(dt)

    @invariant()
    def consistent(self):
        records = {r["id"]: r for r in self.store.list(limit=1000)}
        assert set(records) == set(self.model)
        with closing(sqlite3.connect(self.path)) as raw:
            sums = dict(raw.execute("SELECT job_id, SUM(rows) FROM shards GROUP BY job_id").fetchall())
        for job_id, rec in records.items():
            m = self.model[job_id]
            assert rec["status"] in STATUSES and rec["status"] == m["status"]
            assert rec["rows_done"] == sums.get(job_id, 0) == sum(m["shards"].values())
            assert rec["shards_done"] == len(self.store.committed_shards(job_id)) == len(m["shards"])
            assert (rec["lease_owner"] is not None) == (rec["status"] == "running")
            assert 0.0 <= rec["progress"] <= 1.0
            if rec["status"] == "succeeded":
                assert rec["rows_done"] == rec["total_rows"] and rec["shards_done"] == rec["total_shards"]
            if JobStatus(rec["status"]) in TERMINAL:
                assert rec["finished_at"] is not None
                assert self.frozen.setdefault(job_id, rec) == rec  # terminal records never change
            assert self.store.events(job_id)[-1]["to_status"] == rec["status"]


QueueMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_queue_state_machine = QueueMachine.TestCase
