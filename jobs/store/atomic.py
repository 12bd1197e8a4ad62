"""Committing bytes: write so that a final name never holds a partial file, on local disk or an object store.

Local disk: a temporary file beside the target, fsynced, then renamed. S3/GCS: one upload to the final
key, visible only once complete. Paths here are ``pyarrow.fs`` paths (``BUCKET/KEY`` for object stores)."""

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


def write_local_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMP_PREFIX = ".tmp-"


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
    the upload completed (and on a failed upload the key is deleted again, best effort). Other
    filesystems: a temporary file beside ``path`` (fsynced on local disk), then a move; the temporary
    file is removed on any error.
    """
    if is_object_store(fs):
        try:
            with fs.open_output_stream(path) as f:
                f.write(data)
        except BaseException:
            delete_quietly(fs, path)
            raise
        return
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = temp_path(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if getattr(fs, "type_name", None) == "local":
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
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
