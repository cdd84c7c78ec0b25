"""Files metareg writes: complete or absent, never through a planted symlink, never torn.

* :func:`write_atomic` writes to a unique temporary file in the same folder, created exclusively
  and without following symlinks (``O_CREAT | O_EXCL | O_NOFOLLOW``), fsyncs it, renames it over
  the target (a rename replaces a symlink itself, never the file it points to) and fsyncs the
  folder, so after a crash either the old or the new file is there, whole.
* :class:`AppendLog` appends whole lines (``metrics.jsonl``); a write that fails half-way (a full
  disk) is cut back to the last complete line.
* :class:`FolderLock` is an exclusive ``flock`` on ``DIR/.lock``: one run per folder.
* Every failure to write is an :class:`~metareg.errors.OutputError` naming the path and what could
  not be written; JSON is strict (no bare NaN: non-finite numbers become ``null`` and are listed).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import OutputError

__all__ = ["write_atomic", "write_json", "save_torch", "AppendLog", "FolderLock", "strict_json", "dumps_strict",
           "describe_os_error"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    if e.errno == errno.ELOOP:
        return "it is a symbolic link (metareg does not write through links planted in a run folder)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte (os.write may write fewer); the one place bytes reach the disk (tests
    inject ENOSPC here)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes, *, what: str = "") -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except OSError as e:
        raise OutputError(f"cannot write {what or path.name} to {path}: {describe_os_error(e)}.") from None
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputError(f"cannot write {what or path.name} to {path}: {describe_os_error(e)}; "
                          f"the previous {path.name}, if any, is intact.") from None
    _fsync_dir(path.parent)


def strict_json(obj: Any, _path: str = "", _bad: list[str] | None = None) -> Any:
    """``obj`` with non-finite floats replaced by None (their keys collected in ``_bad``), tuples as
    lists, tensors as numbers or lists, anything else unknown as its str."""
    bad = _bad if _bad is not None else []
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        bad.append(_path or "value")
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v, f"{_path}.{k}" if _path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v, f"{_path}[{i}]", bad) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return strict_json(obj.tolist(), _path, bad)
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


def dumps_strict(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON: a record with non-finite numbers gets them as null and a ``nonfinite`` list
    naming them (a dict; other values just get the nulls)."""
    bad: list[str] = []
    clean = strict_json(obj, "", bad)
    if bad and isinstance(clean, dict):
        clean["nonfinite"] = bad
    return json.dumps(clean, indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, *, what: str = "") -> None:
    write_atomic(path, (dumps_strict(obj, indent=2) + "\n").encode(), what=what)


def save_torch(path: str | Path, obj: Any, *, what: str = "checkpoint") -> None:
    """``torch.save`` through :func:`write_atomic` (serialised in memory first, so a full disk
    never leaves half a checkpoint)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getbuffer(), what=what)


class AppendLog:
    """``metrics.jsonl``: whole lines appended and flushed to the OS; a failed write is cut back to
    the last complete line, so the file never ends in a torn line."""

    def __init__(self, path: str | Path, *, truncate_to: int | None = None) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"cannot open {self.path} for the metrics log: {describe_os_error(e)}.") from None
        if truncate_to is not None:  # resume: drop what was written after the checkpoint
            os.ftruncate(self.fd, truncate_to)
        self.size = os.fstat(self.fd).st_size

    def write(self, record: dict[str, Any]) -> None:
        line = (dumps_strict(record) + "\n").encode()
        try:
            _write_all(self.fd, line)
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise OutputError(f"cannot append to {self.path}: {describe_os_error(e)}; it keeps its "
                              f"{self.size} bytes of complete lines.") from None
        self.size += len(line)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FolderLock:
    """An exclusive lock on a run folder for the lifetime of a run (``DIR/.lock``, holding the pid)."""

    def __init__(self, folder: str | Path) -> None:
        import fcntl

        self.path = Path(folder) / ".lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock run folder {folder}: {describe_os_error(e)}.") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(self.fd)
            raise OutputError(f"run folder {folder} is in use by another metareg process (pid {holder}); wait for it "
                              "to finish or choose another --out.") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1
