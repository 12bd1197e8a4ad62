"""Committing bytes: write so that a final name never holds a partial file, on local disk or an object store,
and so that what was committed survives a power cut.

Local disk (the one commit helper, :func:`commit_rename`): the new file or folder is written under a
temporary name beside the target and fsynced (file contents; for a folder every file in it and the folder
itself), renamed to the final name, then the containing folder is fsynced so that the rename itself is on
disk. Folders created on the way are made durable too (their parent is fsynced after the ``mkdir``). Only
after that does a caller record the commit anywhere else (the job queue, a marker file). S3/GCS: one
upload to the final key, visible only once complete; the store commits it on upload (no fsync, no
rename). Paths here are ``pyarrow.fs`` paths (``BUCKET/KEY`` for object stores)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def is_object_store(fs: Any) -> bool:
    """True for S3/GCS filesystems: a single upload is atomic there and there is no rename."""
    return getattr(fs, "type_name", None) in ("s3", "gcs")


# --------------------------------------------------------------------------------------------------
# Durable local commits: fsync the new bytes, rename, fsync the folder
# --------------------------------------------------------------------------------------------------


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder by name (a folder's fsync makes its entries, renames included, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file below ``folder``, then each folder bottom-up (``folder`` itself last)."""
    for parent, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(os.path.join(parent, name))
        fsync_path(parent)


def make_dirs(folder: str | os.PathLike) -> None:
    """``mkdir -p folder``, fsyncing the parent of each folder it creates (so that a power cut cannot
    take away the folder a committed file was renamed into)."""
    folder = Path(folder)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_path(new.parent)


def commit_rename(tmp: str | os.PathLike, final: str | os.PathLike, *, synced: bool = False) -> None:
    """The local commit: make ``tmp`` durable, rename it to ``final``, fsync ``final``'s folder.

    ``tmp`` is a written file (its contents are fsynced) or a folder of written files (each file and the
    folder are fsynced); ``synced=True`` says the caller already fsynced it (a file it still holds open).
    An existing file ``final`` is replaced; a non-empty folder ``final`` makes the rename fail with
    ``OSError`` (the registry relies on that to take version numbers). Returns once the new name is on
    disk: only then may the caller record the commit anywhere else.
    """
    if not synced:
        if os.path.isdir(tmp):
            fsync_tree(tmp)
        else:
            fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(os.path.dirname(os.path.abspath(final)))


# --------------------------------------------------------------------------------------------------
# Atomic writes and reads (Path, URI or Location)
# --------------------------------------------------------------------------------------------------


def json_bytes(obj: Any) -> bytes:
    """The JSON genaug writes: 2-space indent, sorted keys, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _umask() -> int:
    mask = os.umask(0o022)  # read by setting: once, at import, before any thread writes files
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; committed files get the usual mode (0644 under umask 022) so that other
# users of a shared root (another team reading a dataset's manifest) can read them.
FILE_MODE = 0o666 & ~_umask()


TEMP_PREFIX = ".tmp-"


def write_local_atomic(path: Path, data: Any) -> None:
    """Write ``data`` (bytes or a buffer) to the local ``path`` durably: temp file, fsync, rename, fsync
    the folder (:func:`commit_rename`)."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit_rename(tmp, path, synced=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_path(path: str) -> str:
    """A unique temporary name beside ``path`` (``dir/.tmp-<name>.<hex>``), for write-then-rename."""
    import uuid

    parent, _, name = path.rpartition("/")
    return f"{parent}/{TEMP_PREFIX}{name}.{uuid.uuid4().hex}"


def join_path(base: str, *parts: str) -> str:
    """Join relative names onto a ``pyarrow.fs`` path with ``/`` (``base`` as the filesystem takes it).

    Each part may hold several levels (``data/x.parquet``); absolute parts, URIs, empty, ``.`` or ``..``
    segments and NUL bytes raise ``ValueError``.
    """
    segments: list[str] = []
    for part in parts:
        text = os.fspath(part) if isinstance(part, os.PathLike) else part
        if not isinstance(text, str) or not text or text.startswith("/") or "://" in text or "\x00" in text:
            raise ValueError(f"path part {part!r} invalid; valid: a relative name like 'models/x'")
        for seg in text.split("/"):
            if seg in ("", ".", ".."):
                raise ValueError(f"path part {part!r} invalid; valid: no empty, '.' or '..' segments")
            segments.append(seg)
    if not segments:
        return base
    head = base.rstrip("/")
    return "/".join([head, *segments]) if head else "/" + "/".join(segments)


def put_atomic(fs: pafs.FileSystem, path: str, data: Any) -> None:
    """Write ``data`` under ``path`` in ``fs`` so that the final name never holds a partial file.

    Object stores (S3, GCS): one upload straight to the final key; the object becomes visible only when
    the upload completed (and on a failed upload the key is deleted again, best effort). Local disk:
    :func:`write_local_atomic` (fsynced file, rename, fsynced folder). Any other filesystem: a temporary
    file beside ``path``, then a move; the temporary file is removed on any error.
    """
    if is_object_store(fs):
        try:
            with fs.open_output_stream(path) as f:
                f.write(data)
        except BaseException:
            delete_quietly(fs, path)
            raise
        return
    if getattr(fs, "type_name", None) == "local":
        write_local_atomic(Path(path), data)
        return
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = temp_path(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        delete_quietly(fs, tmp)
        raise


def read_bytes(fs: pafs.FileSystem, path: str, shown: str | None = None) -> bytes:
    """The whole file at ``path``; ``FileNotFoundError`` naming it (as ``shown``) when it is missing."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file {shown or path}") from None
    except OSError as e:  # pyarrow reports some missing objects/dirs as plain OSError
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"missing file {shown or path}") from None
        raise e


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass
