"""Crash consistency in the ALICE style (Pillai et al., OSDI 2014): record the system calls of real commits
and check, from the trace, that no ordering a power cut could expose loses a commit that was recorded.

``tests/jobs/store/crash_driver.py`` registers a model and runs a 3-shard generation job through the real
queue owner, generator replica body and SQLite queue, under ``strace -f``. For every rename into a final
name under the storage root (a shard, ``manifest.json``, ``README.md``, ``_SUCCESS``, the registry's
``v<k>`` folder, the version's files inside it) the trace must show, in this order:

1. an fsync of the renamed file (for a folder: of each of its files and of the folder) - else the new
   name can point at data that never reached the disk;
2. the rename;
3. an fsync of the folder holding the final name, by the same thread - else the rename itself can be
   lost although the caller went on;
4. only then the queue's record of it (the SQLite WAL sync that commits the shard row, or the job's
   ``succeeded`` row after ``_SUCCESS``).

And every folder created on the way is fsynced into its parent before a file is renamed into it. The SQLite
side: WAL with ``synchronous=FULL``, so the transaction that records a shard or a success is synced to the
WAL before the call returns (``test_queue_durability_settings``).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.queue import JobStore

REPO = Path(__file__).resolve().parents[3]
SYSCALLS = "%file,fsync,fdatasync,rename,renameat2"

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?)[^<]*(?:<([\d.]+)>)?\s*$")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Call:
    """One system call of the trace: thread, name, arguments, where it starts and ends in the trace."""

    tid: int
    name: str
    args: str
    start: int  # line index of the call
    start_ts: float
    end: int = -1  # line index where it returned
    end_ts: float = 0.0
    result: str = ""

    @property
    def fd_path(self) -> str:
        m = _FD_PATH.match(self.args)
        return m.group(1) if m else ""

    @property
    def strings(self) -> list[str]:
        return _STRING.findall(self.args)


def parse_strace(text: str) -> list[Call]:
    """Calls of an ``strace -f -y -ttt -T`` log, with ``<unfinished ...>``/``resumed`` halves joined."""
    calls: list[Call] = []
    pending: dict[int, Call] = {}
    for i, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        tid, ts, body = int(m.group(1)), float(m.group(2)), m.group(3)
        resumed = _RESUMED.match(body)
        if resumed:
            call = pending.pop(tid, None)
            if call is not None:
                _finish(call, i, ts, ")" + resumed.group(2).lstrip(")"), resumed_line=True)
            continue
        c = _CALL.match(body)
        if not c:
            continue  # "+++ exited", "--- SIGCHLD"
        call = Call(tid, c.group(1), c.group(2), i, ts)
        calls.append(call)
        if body.endswith("<unfinished ...>"):
            pending[tid] = call
        else:
            _finish(call, i, ts, body, resumed_line=False)
    return calls


def _finish(call: Call, i: int, ts: float, tail: str, resumed_line: bool) -> None:
    m = _RESULT.search(tail)
    call.end, call.result = i, m.group(1) if m else "?"
    duration = float(m.group(2)) if m and m.group(2) else 0.0
    call.end_ts = ts if resumed_line else ts + duration


def _ok(call: Call) -> bool:
    return call.result == "0"


def _renames(calls: list[Call]) -> list[tuple[Call, str, str]]:
    out = []
    for c in calls:
        if c.name in ("rename", "renameat", "renameat2") and _ok(c):
            src, dst = c.strings[:2]
            assert src.startswith("/") and dst.startswith("/"), f"relative rename in the trace: {c}"
            out.append((c, src, dst))
    return out


def _syncs(calls: list[Call], path: str) -> list[Call]:
    return [c for c in calls if c.name in ("fsync", "fdatasync") and _ok(c) and c.fd_path == path]


def _is_final(path: str, home: str) -> bool:
    """Under the root, and no hidden (temporary) component: ``.tmp-...`` names and folders."""
    rel = posixpath.relpath(path, home)
    return not rel.startswith("..") and not any(part.startswith(".") for part in rel.split("/"))


def crash_consistency_violations(
    calls: list[Call], home: str, wal: str, records: dict[str, float]
) -> list[str]:
    """What a power cut could lose, by the rules of the module docstring; ``records``: final path -> the
    time the queue recorded it (its row's timestamp), for those the queue records."""
    problems: list[str] = []
    wal_syncs = _syncs(calls, wal)
    created = [c for c in calls if c.name in ("mkdir", "mkdirat") and _ok(c)]
    for r, src, dst in _renames(calls):
        if not _is_final(dst, home):
            continue  # inside a temporary folder: published later by that folder's own rename
        what = posixpath.relpath(dst, home)
        files = [posixpath.join(src, p.name) for p in Path(dst).iterdir()] if Path(dst).is_dir() else []
        for path in [*files, src]:
            if not any(s.end < r.start for s in _syncs(calls, path)):
                problems.append(f"{what}: no fsync of {posixpath.relpath(path, home)} before its rename")
        folder = posixpath.dirname(dst)
        after = [s for s in _syncs(calls, folder) if s.tid == r.tid and s.start > r.end]
        if not after:
            problems.append(
                f"{what}: its folder {posixpath.relpath(folder, home)} is not fsynced after the rename"
            )
            continue
        folder_sync = min(after, key=lambda s: s.start)
        if dst in records:
            recorded = [s for s in wal_syncs if s.start_ts >= records[dst]]
            if not recorded:
                problems.append(f"{what}: no WAL sync after the queue recorded it")
            elif folder_sync.end > min(recorded, key=lambda s: s.start).start:
                problems.append(f"{what}: the queue recorded it before its folder was fsynced")
        for d in created:
            new = d.strings[0]
            if new != folder and not folder.startswith(new + "/"):
                continue
            parent = posixpath.dirname(new)
            if not any(d.end < s.start and s.end < r.start for s in _syncs(calls, parent)):
                problems.append(
                    f"{what}: the new folder {posixpath.relpath(new, home)} is not fsynced into its parent"
                )
    return problems


# ----------------------------------------------------------------------------- running it


def strace_binary() -> str:
    """Debian's strace; installed with apt-get when missing and this is root, else the test skips."""
    found = shutil.which("strace")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "strace is missing and cannot be installed here (needs root and apt-get): apt-get install strace"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "strace"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "strace"],
    ):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if argv[1] == "install" and proc.returncode == 0:
            break
    found = shutil.which("strace")
    if not found:
        pytest.skip(f"apt-get install strace failed: {(proc.stdout + proc.stderr)[-500:]}")
    return found


def traced_run(tmp_path: Path) -> tuple[list[Call], Path, str]:
    """Run the driver under strace; return the calls, the storage root and the job id."""
    strace = strace_binary()
    probe = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[-300:]}")
    home = (tmp_path / "home").resolve()
    home.mkdir()
    log = tmp_path / "strace.log"
    argv = [strace, "-f", "-y", "-s", "4096", "-ttt", "-T", "-e", f"trace={SYSCALLS}", "-o", str(log)]
    argv += [sys.executable, "-m", "tests.jobs.store.crash_driver", str(home)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENAUG_HOME": str(home)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return parse_strace(log.read_text()), home, proc.stdout.split()[-1]


def _queue_records(home: Path, job_id: str) -> dict[str, float]:
    """Final path -> when the queue recorded it: each shard's row, and ``_SUCCESS`` by the job's success."""
    with sqlite3.connect(home / "state" / "queue.sqlite") as db:
        (output, status, finished_at) = db.execute(
            "SELECT output, status, finished_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        assert status == "succeeded"
        rows = db.execute("SELECT info, committed_at FROM shards WHERE job_id = ?", (job_id,)).fetchall()
    import json

    records = {posixpath.join(output, json.loads(info)["path"]): at for info, at in rows}
    records[posixpath.join(output, "_SUCCESS")] = finished_at
    return records


def test_commits_are_durable_before_they_are_recorded(tmp_path):
    calls, home, job_id = traced_run(tmp_path)
    records = _queue_records(home, job_id)
    finals = {posixpath.relpath(dst, home) for _, _, dst in _renames(calls) if _is_final(dst, str(home))}
    dataset = f"datasets/{job_id}"
    assert finals == {
        "models/crash-cvae/v1",
        *(f"{dataset}/data/train-{k:05d}-of-00003.parquet" for k in range(3)),
        f"{dataset}/manifest.json",
        f"{dataset}/README.md",
        f"{dataset}/_SUCCESS",
    }
    assert len(records) == 4  # three shard rows and the job's success
    wal = str(home / "state" / "queue.sqlite-wal")
    problems = crash_consistency_violations(calls, str(home), wal, records)
    assert not problems, "a power cut could lose these commits:\n" + "\n".join(problems)


def test_the_checker_sees_a_missing_folder_fsync():
    """The rules catch a commit whose folder is never fsynced (and one recorded before its folder sync)."""
    trace = "\n".join(
        [
            '7 1.000000 mkdir("/h/d", 0777) = 0 <0.000010>',
            "7 1.000100 fsync(3</h>) = 0 <0.000010>",
            "7 1.000200 fsync(3</h/d/.tmp-x.1>) = 0 <0.000010>",
            '7 1.000300 rename("/h/d/.tmp-x.1", "/h/d/x") = 0 <0.000010>',
            "8 1.000400 fdatasync(5</h/state/queue.sqlite-wal>) = 0 <0.000010>",
            "7 1.000500 fsync(3</h/d>) = 0 <0.000010>",
            '7 1.000600 rename("/h/d/.tmp-y.1", "/h/d/y") = 0 <0.000010>',
        ]
    )
    calls = parse_strace(trace)
    got = crash_consistency_violations(calls, "/h", "/h/state/queue.sqlite-wal", {"/h/d/x": 1.0003})
    assert got == [
        "d/x: the queue recorded it before its folder was fsynced",
        "d/y: no fsync of d/.tmp-y.1 before its rename",
        "d/y: its folder d is not fsynced after the rename",
    ]


def test_queue_durability_settings(tmp_path):
    """WAL and synchronous=FULL: every committed transaction (a shard row, a success) is synced to the WAL."""
    store = JobStore(tmp_path / "state" / "queue.sqlite")
    try:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (
            conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        )  # FULL (NORMAL, 1, may lose the last commits)
    finally:
        store.close()
