"""Tests for jobs.datasets: list / show / verify and the ``genaug datasets`` CLI glue (exit codes)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs import datasets
from jobs.store.manifest import finalize_dataset
from jobs.store.png import encode_pngs
from jobs.store.shards import write_shard

CLASSES = ["zero", "one", "two"]
MODEL = "digits-cvae:v2"


def _write(out: Path, shard_counts: list[list[int]], *, finalize: bool = True) -> None:
    infos, n = [], len(shard_counts)
    for k, counts in enumerate(shard_counts):
        rng = np.random.default_rng(k)
        labels = rng.permutation(np.repeat(np.arange(3), counts))
        pngs = encode_pngs(rng.integers(0, 256, (len(labels), 8, 8), dtype=np.uint8))
        infos.append(write_shard(out, k, n, pngs, labels, CLASSES, MODEL, 10 + k))
    if finalize:
        request = {"job_id": out.name, "model": "digits-cvae", "per_class": None}
        lineage = {"model": MODEL, "checkpoint_sha256": "ab" * 32}
        finalize_dataset(out, request, lineage, infos, CLASSES, 1.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root: job-done (finished), job-running (2 shards committed + a temp file), job-empty."""
    home = tmp_path_factory.mktemp("home")
    root = home / "datasets"
    _write(root / "job-done", [[5, 4, 3], [2, 2, 1]])
    _write(root / "job-running", [[3, 3, 3], [1, 1, 1], [0, 0, 0]][:2], finalize=False)
    (root / "job-running" / "data" / ".tmp-train-00002-of-00002.parquet.1234").write_bytes(b"half")
    (root / "job-empty").mkdir()
    (root / "stray.txt").write_text("not a dataset")
    old = 1_600_000_000  # the unfinished folders look older than job-done's manifest created_at
    for name in ("job-running", "job-empty"):
        os.utime(root / name, (old, old))
    return home


@pytest.fixture
def damaged(store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "job-done"
    shutil.copytree(store / "datasets" / "job-done", dst)
    return dst


# ---------------------------------------------------------------------------------------- library


def test_list_flags_incomplete_and_counts_rows(store: Path) -> None:
    entries = datasets.list_datasets(store)
    assert [e["job_id"] for e in entries] == ["job-done", "job-empty", "job-running"]  # newest first
    done, empty, running = entries
    assert done["complete"] and not running["complete"] and not empty["complete"]
    assert (done["rows"], done["shards"], done["model"]) == (17, 2, MODEL)
    assert done["created_at"].endswith("+00:00") and done["problem"] is None
    folder = store / "datasets" / "job-done"
    assert done["size_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert (running["rows"], running["shards"], running["model"]) == (12, 2, None)  # temp file not counted
    assert (empty["rows"], empty["shards"]) == (0, 0)
    assert datasets.list_datasets(store / "nowhere") == []


def test_list_reports_a_damaged_manifest_without_raising(tmp_path: Path) -> None:
    _write(tmp_path / "datasets" / "job-x", [[2, 2, 2]])
    (tmp_path / "datasets" / "job-x" / "manifest.json").write_text("{not json")
    (entry,) = datasets.list_datasets(tmp_path)
    assert entry["problem"].startswith("unreadable manifest.json") and entry["rows"] == 6


def test_show_has_card_counts_totals_and_lineage(store: Path) -> None:
    info = datasets.show_dataset(store / "datasets" / "job-done")
    assert info["complete"] and info["job_id"] == "job-done" and info["model"] == MODEL
    assert info["per_class"] == {"zero": 7, "one": 6, "two": 4}
    assert info["totals"]["rows"] == 17 and info["totals"]["shards"] == 2
    assert info["lineage"]["checkpoint_sha256"] == "ab" * 32
    assert info["card"].startswith("---\n") and "| 0 | zero | 7 |" in info["card"]
    assert [s["rows"] for s in info["shards"]] == [12, 5]
    with pytest.raises(FileNotFoundError, match="has no manifest.json: its job did not finish"):
        datasets.show_dataset(store / "datasets" / "job-running")
    with pytest.raises(FileNotFoundError, match="no dataset folder at"):
        datasets.show_dataset(store / "datasets" / "missing")


def test_verify_passes_clean_and_catches_flipped_byte_and_deleted_shard(store: Path, damaged: Path) -> None:
    clean = datasets.verify(store / "datasets" / "job-done")
    assert clean.ok and clean.shards_checked == 2 and clean.rows == 17
    shard = damaged / "data" / "train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "sha256_mismatch" in datasets.verify(damaged).kinds()
    assert datasets.verify(damaged, check_hash=False).kinds() <= {"unreadable"}  # size unchanged
    (damaged / "data" / "train-00001-of-00002.parquet").unlink()
    assert {"sha256_mismatch", "missing_shard"} <= datasets.verify(damaged).kinds()
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        datasets.verify(damaged.parent / "missing")


def test_resolve_dataset_accepts_paths_uris_and_job_ids(store: Path, tmp_path: Path) -> None:
    folder = store / "datasets" / "job-done"
    assert datasets.resolve_dataset("job-done", store) == str(folder)
    assert datasets.resolve_dataset(str(folder), store) == str(folder)
    assert datasets.resolve_dataset("s3://bucket/ds", store) == "s3://bucket/ds"
    with pytest.raises(FileNotFoundError, match=r"no dataset 'job-nope'; valid: .*job-done, job-empty"):
        datasets.resolve_dataset("job-nope", store)


# -------------------------------------------------------------------------------------------- CLI


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = datasets.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_list_and_show(store: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = _cli(capsys, "--home", str(store), "list")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:4] == ["JOB", "MODEL", "ROWS", "SHARDS"]
    assert "job-done" in lines[1] and "complete" in lines[1] and "17" in lines[1]
    assert any("job-running" in line and "INCOMPLETE" in line for line in lines)
    rc, out, _ = _cli(capsys, "list", "--home", str(store), "--json")
    assert rc == 0 and [e["job_id"] for e in json.loads(out)][0] == "job-done"
    rc, out, _ = _cli(capsys, "show", "job-done", "--home", str(store))
    assert rc == 0 and "17 rows in 2 shards" in out and "---- README.md ----" in out
    assert "| 0 | zero | 7 |" in out and f"model = {MODEL}" in out
    rc, out, _ = _cli(capsys, "show", "--home", str(store), "--json", "job-done")
    assert rc == 0 and json.loads(out)["per_class"]["two"] == 4


def test_cli_verify_exit_codes(store: Path, damaged: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = _cli(capsys, "--home", str(store), "verify", "job-done")
    assert rc == 0 and out.strip().endswith("ok (2 shards, 17 rows)")
    (damaged / "data" / "train-00001-of-00002.parquet").unlink()
    rc, out, _ = _cli(capsys, "--home", str(store), "verify", str(damaged))
    assert rc == 1 and "missing_shard:" in out and "train-00001-of-00002.parquet" in out
    rc, _, err = _cli(capsys, "--home", str(store), "verify", "job-nope")
    assert rc == 2 and "genaug datasets verify: error: no dataset 'job-nope'" in err
    rc, _, err = _cli(capsys, "--home", str(store), "show", "job-running")
    assert rc == 2 and "did not finish" in err
    rc, _, err = _cli(capsys, "--home", "ftp://host/x", "list")  # s3:// and gs:// roots are valid now
    assert rc == 2 and "unsupported scheme" in err and "s3://BUCKET" in err


def test_cli_glue_keeps_home_in_either_position(store: Path, capsys: pytest.CaptureFixture) -> None:
    """How cluster/cli.py wires it: a ``datasets`` parser with the --home parent, then add_arguments."""
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", default=None)
    parser = argparse.ArgumentParser(prog="genaug")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("datasets", parents=[home])
    datasets.add_arguments(p)
    p.set_defaults(func=datasets.run)
    for argv in (["datasets", "--home", str(store), "list"], ["datasets", "list", "--home", str(store)]):
        args = parser.parse_args(argv)
        assert args.home == str(store)
        assert args.func(args) == 0 and "job-done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["datasets", "frobnicate"])
    capsys.readouterr()
