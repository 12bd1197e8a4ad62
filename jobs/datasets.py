"""Dataset management for the CLI: list, show and verify genaug datasets (format: ``jobs.store.shards``).

    genaug datasets list [--json]                 every folder under <home>/datasets, newest first
    genaug datasets show URI [--json]             card, per-class counts, totals, lineage
    genaug datasets verify URI [--no-hash]        exit 0 if consistent, 1 if problems were found

``URI`` is a dataset folder, a ``pyarrow.fs`` URI (``s3://bucket/ds``, ``file:///...``) or a job id, i.e.
the folder name under ``<home>/datasets``. Standalone: ``python -m jobs.datasets --home H list``.
Exit status 2 on bad input (no such dataset, bad home), with a message naming the valid options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.store import shards
from jobs.store.atomic import join_path
from jobs.store.location import HOME_HELP, Location, location, resolve_home
from jobs.store.manifest import VerifyReport, read_manifest, verify_dataset

DATASETS_DIR = "datasets"


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds") if ts is not None else None


def _committed_rows(folder: Location, files: list[pafs.FileInfo]) -> tuple[int, int, list[str]]:
    """(rows, shard files, problems) from the Parquet footers of the committed shards of a folder."""
    rows, count, problems = 0, 0, []
    data = join_path(folder.path, shards.DATA_DIR)
    for info in files:
        if (
            info.path.rpartition("/")[0] != data
            or not info.base_name.endswith(".parquet")
            or info.base_name.startswith(shards.TEMP_PREFIX)
        ):
            continue
        try:
            with folder.fs.open_input_file(info.path) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
            count += 1
        except Exception as e:  # noqa: BLE001 - a damaged shard is reported, not fatal, when listing
            problems.append(f"{info.base_name}: unreadable ({type(e).__name__})")
    return rows, count, problems


def describe_folder(folder: str | os.PathLike | Location) -> dict[str, Any]:
    """One ``list_datasets`` entry for a dataset folder (finished or not); never raises for damage.

    ``folder`` is a local path, a URI or a Location. Keys: path, job_id, model, rows, shards,
    size_bytes, created_at, complete (``_SUCCESS`` present), problem (None, or why the manifest could
    not be used). One recursive listing, plus the manifest (or the shard footers when it is missing).
    """
    loc = location(folder)
    files = [i for i in loc.list(recursive=True) if i.type == pafs.FileType.File]
    names = {i.path for i in files}
    folder_mtime = loc.info().mtime  # None on object stores: use the newest object instead
    newest = max((i.mtime for i in files if i.mtime is not None), default=None)
    entry: dict[str, Any] = {
        "path": loc.uri,
        "job_id": loc.name,
        "model": None,
        "rows": 0,
        "shards": 0,
        "size_bytes": sum(i.size or 0 for i in files),
        "created_at": _iso(folder_mtime or newest),
        "complete": join_path(loc.path, shards.SUCCESS) in names,
        "problem": None,
    }
    manifest = None
    if join_path(loc.path, shards.MANIFEST) in names:
        try:
            manifest = (loc / shards.MANIFEST).read_json()
            totals = manifest["totals"]
            entry["rows"], entry["shards"] = int(totals["rows"]), int(totals["shards"])
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            manifest, entry["problem"] = None, f"unreadable manifest.json ({type(e).__name__})"
    if manifest is None:
        rows, count, problems = _committed_rows(loc, files)
        entry["rows"], entry["shards"] = rows, count
        if problems and entry["problem"] is None:
            entry["problem"] = "; ".join(problems)
        return entry
    request, lineage = manifest.get("request") or {}, manifest.get("lineage") or {}
    entry["job_id"] = str(request.get("job_id") or loc.name)
    entry["model"] = lineage.get("model") or request.get("model")
    entry["created_at"] = manifest.get("created_at") or entry["created_at"]
    return entry


def _dataset_folders(root: Location) -> list[Location]:
    """The folders directly under ``root`` (local symlinks are skipped: they may point anywhere)."""
    return [
        root.child(i)
        for i in root.list()
        if i.type == pafs.FileType.Directory and not (root.is_local and os.path.islink(i.path))
    ]


def list_datasets(home: str | os.PathLike | Location | None = None) -> list[dict[str, Any]]:
    """Every dataset folder under ``<home>/datasets`` (finished, incomplete or damaged), newest first.

    Each entry: {path, job_id, model, rows, shards, size_bytes, created_at, complete, problem}; for a
    folder without a manifest (a running or crashed job) ``rows``/``shards`` count the committed shards.
    Works the same on a local root and on an ``s3://``/``gs://`` root.
    """
    entries = [describe_folder(p) for p in _dataset_folders(resolve_home(home) / DATASETS_DIR)]
    entries.sort(key=lambda e: e["path"])
    entries.sort(key=lambda e: e["created_at"] or "", reverse=True)
    return entries


def _open_folder(uri: str | os.PathLike, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    fs, base = shards.resolve_output(uri, filesystem)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no dataset folder at {os.fspath(uri)!r}; valid: a dataset folder or URI "
            "(see `genaug datasets list`)"
        )
    return fs, base


def show_dataset(uri: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None) -> dict[str, Any]:
    """A finished (or manifest-bearing) dataset: card text, per-class counts, totals, lineage, request.

    Keys: path, complete, job_id, model, created_at, classes, per_class {name: rows}, totals, lineage,
    request, shards [{path, rows, bytes}], card (README.md text or None). ``FileNotFoundError`` when the
    folder or its manifest is missing; ``ValueError`` when the manifest is not valid JSON.
    """
    fs, base = _open_folder(uri, filesystem)
    try:
        manifest = read_manifest(base, filesystem=fs)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{base} has no {shards.MANIFEST}: its job did not finish; valid: a finished dataset "
            "(`genaug datasets list` flags incomplete ones)"
        ) from None
    except ValueError as e:
        raise ValueError(f"{join_path(base, shards.MANIFEST)} is not valid JSON: {e}") from None
    try:
        with fs.open_input_stream(join_path(base, shards.CARD)) as f:
            card: str | None = f.read().decode()
    except FileNotFoundError:
        card = None
    complete = fs.get_file_info(join_path(base, shards.SUCCESS)).type == pafs.FileType.File
    request, lineage = manifest.get("request") or {}, manifest.get("lineage") or {}
    totals = manifest.get("totals") or {}
    return {
        "path": base,
        "complete": complete,
        "job_id": request.get("job_id") or base.rstrip("/").rsplit("/", 1)[-1],
        "model": lineage.get("model") or request.get("model"),
        "created_at": manifest.get("created_at"),
        "classes": list(manifest.get("classes") or []),
        "per_class": dict(totals.get("per_class") or {}),
        "totals": totals,
        "lineage": lineage,
        "request": request,
        "shards": [{k: s.get(k) for k in ("path", "rows", "bytes")} for s in manifest.get("shards") or []],
        "card": card,
    }


def verify(
    uri: str | os.PathLike, *, check_hash: bool = True, filesystem: pafs.FileSystem | None = None
) -> VerifyReport:
    """``jobs.store.shards.verify_dataset`` on an existing folder; ``FileNotFoundError`` if there is none."""
    fs, base = _open_folder(uri, filesystem)
    return verify_dataset(base, fs, check_hash=check_hash)


# --------------------------------------------------------------------------------------------------
# CLI glue
# --------------------------------------------------------------------------------------------------


def resolve_dataset(uri: str, home: str | os.PathLike | Location | None = None) -> str:
    """A CLI dataset argument -> folder/URI: URIs, existing paths, else ``<home>/datasets/URI``.

    The root may be local or an object store; a job id is looked up under its ``datasets/``.
    """
    if "://" in uri or Path(uri).expanduser().exists():
        return uri if "://" in uri else str(Path(uri).expanduser().absolute())
    root = resolve_home(home) / DATASETS_DIR
    if uri and "/" not in uri and os.sep not in uri and uri not in (".", "..") and (root / uri).is_dir():
        return (root / uri).uri
    names = sorted(p.name for p in _dataset_folders(root))
    raise FileNotFoundError(
        f"no dataset {uri!r}; valid: a dataset folder, a URI, or a job id under {root}: "
        f"{', '.join(names[:10]) or '(none)'}{' ...' if len(names) > 10 else ''}"
    )


_HOME_HELP = HOME_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list | show URI | verify URI`` actions to ``parser`` (the ``genaug datasets`` parser).

    Each action also accepts ``--home`` (default: suppressed), so ``genaug datasets --home H list`` and
    ``genaug datasets list --home H`` both work even when ``parser`` has a ``--home`` parent (a plain
    parent on the actions would reset an earlier ``--home`` to its default). Then
    ``parser.set_defaults(func=run)``.
    """
    sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    actions = {
        "list": "datasets under <home>/datasets, newest first",
        "show": "card, per-class counts, totals and lineage",
        "verify": "check a dataset against its manifest (exit 1 on problems)",
    }
    for name, text in actions.items():
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("--home", default=argparse.SUPPRESS, help=_HOME_HELP)
        if name != "list":
            q.add_argument("uri", help="dataset folder, URI, or job id under <home>/datasets")
        if name == "verify":
            q.add_argument(
                "--no-hash",
                action="store_true",
                help="skip each shard's sha256 (sizes, footers, schema still)",
            )
        else:
            q.add_argument("--json", action="store_true", help="print JSON instead of text")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cmd_list(args: argparse.Namespace) -> int:
    entries = list_datasets(getattr(args, "home", None))
    if getattr(args, "json", False):
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        root = resolve_home(getattr(args, "home", None)) / DATASETS_DIR
        print(f"no datasets under {root} (generate one: genaug generate --model NAME --per-class N)")
        return 0
    rows = []
    for e in entries:
        status = "complete" if e["complete"] else "INCOMPLETE"
        if e["problem"]:
            status += f" ({e['problem']})"
        rows.append(
            [
                e["job_id"],
                e["model"] or "?",
                f"{e['rows']:,}",
                str(e["shards"]),
                _human(e["size_bytes"]),
                e["created_at"] or "?",
                status,
                e["path"],
            ]
        )
    _print_table(["JOB", "MODEL", "ROWS", "SHARDS", "SIZE", "CREATED", "STATUS", "PATH"], rows)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    info = show_dataset(resolve_dataset(args.uri, getattr(args, "home", None)))
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
        return 0
    totals = info["totals"]
    print(f"path:     {info['path']}")
    print(f"status:   {'complete' if info['complete'] else 'INCOMPLETE (no _SUCCESS)'}")
    print(
        f"job:      {info['job_id']}    model: {info['model'] or '?'}    created: {info['created_at'] or '?'}"
    )
    print(
        f"totals:   {totals.get('rows', 0):,} rows in {totals.get('shards', 0)} shards, "
        f"{_human(int(totals.get('bytes', 0)))}"
    )
    for key, value in info["lineage"].items():
        print(f"lineage:  {key} = {value if isinstance(value, str) else json.dumps(value)}")
    print()
    _print_table(
        ["LABEL", "CLASS", "ROWS"],
        [[str(i), c, f"{int(info['per_class'].get(c, 0)):,}"] for i, c in enumerate(info["classes"])],
    )
    if info["card"] is not None:
        print(f"\n---- {shards.CARD} ----")
        print(info["card"].rstrip())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify(resolve_dataset(args.uri, getattr(args, "home", None)), check_hash=not args.no_hash)
    print(report)
    return 0 if report.ok else 1


_COMMANDS = {"list": _cmd_list, "show": _cmd_show, "verify": _cmd_verify}


def run(args: argparse.Namespace) -> int:
    """Run ``genaug datasets ACTION``: 0 ok, 1 when verify finds problems, 2 on bad input (on stderr)."""
    action = getattr(args, "datasets_command", None)
    if action not in _COMMANDS:
        print(
            f"genaug datasets: error: unknown action {action!r}; valid: {', '.join(_COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return _COMMANDS[action](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"genaug datasets {action}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.datasets [--home H] list | show URI | verify URI`` (same as ``genaug datasets``)."""
    parser = argparse.ArgumentParser(prog="genaug datasets", description="list, show or verify datasets")
    parser.add_argument("--home", default=None, help=_HOME_HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
