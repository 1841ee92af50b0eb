"""What every command that writes a run folder needs: an exclusive lock, the removal of what
interrupted atomic writes left behind, and strict JSON.

A run folder is owned by one process at a time::

    with RunFolderLock("runs/search"):      # RunFolderLockedError if another process has it
        remove_interrupted_writes("runs/search")
        ...

The lock is the operating system's own (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on
Windows) on the file ``.autodeeplab.lock`` in the folder. The kernel releases it when the
process ends, however it ends, so the lock of a killed process never blocks the next run. The
file also records the holder (pid, host, start time, command line) for the refusal message; it
is left in place (empty) when the lock is released, because deleting a lock file races with a
process that has just opened it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

LOCK_FILE = ".autodeeplab.lock"
"""Name of the lock file inside a run folder."""

_WINDOWS_LOCK_OFFSET = 1 << 30
"""msvcrt locks a byte range that others can then not read: lock one byte far past the holder
record so that a refused process can still read who holds the folder."""

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.(?P<kind>tmp|old)$")
"""``.<name>.<random>.tmp`` (files and folders being written) and ``.<name>.<random>.old`` (a
model folder moved aside while its replacement is moved in), as written by
:mod:`autodeeplab.checkpoint`, :mod:`autodeeplab.saved_model`, :mod:`autodeeplab.report` and
:func:`autodeeplab.draw.save_figure`."""


class RunFolderLockedError(ValueError):
    """Another process holds the run folder; the message names it (pid, host, command)."""


# ---------------------------------------------------------------------------- lock
class RunFolderLock:
    """Exclusive lock on a run folder (created if missing) for the lifetime of a run.

    ``acquire()`` raises :class:`RunFolderLockedError` at once (it never waits) if another
    process, or another :class:`RunFolderLock` of this process, holds the folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunFolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # no O_TRUNC: opening must not wipe the record of a process that holds the lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
        except OSError as err:  # e.g. a network file system without lock support
            os.close(fd)
            raise OSError(f"cannot lock the run folder {self.folder} ({self.path}): {err}") from err
        if not locked:
            holder = _read_record(fd)
            os.close(fd)
            raise RunFolderLockedError(
                f"the run folder {self.folder} is in use by another process ({describe(holder)}); "
                "wait for that run to end or stop it, or choose another output folder"
            )
        self._fd = fd
        _write_record(fd, holder_record())
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _write_record(fd, None)  # still ours: nobody reads a stale holder afterwards
            _unlock(fd)
        finally:
            os.close(fd)  # closing releases the lock in any case

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # an engine that was never closed
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_record() -> dict[str, Any]:
    """What the lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }


def describe(holder: Mapping[str, Any] | None) -> str:
    """``pid 123 on host h, started ..., command: ...`` (or that the holder is not recorded)."""
    if not holder or "pid" not in holder:
        return "its pid is not recorded yet"
    parts = [f"pid {holder['pid']}"]
    if holder.get("host"):
        parts[0] += f" on host {holder['host']}"
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return ", ".join(parts)


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # held elsewhere
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _write_record(fd: int, record: Mapping[str, Any] | None) -> None:
    os.ftruncate(fd, 0)
    if record is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        record = json.loads(os.read(fd, 65536).decode())
    except (ValueError, UnicodeDecodeError):  # empty, or being written at this moment
        return None
    return record if isinstance(record, dict) else None


def read_lock_holder(folder: str | Path) -> dict[str, Any] | None:
    """The holder record in ``folder``'s lock file (``None`` if empty or absent). A record
    can outlive its process (``kill -9``); only a failed :meth:`RunFolderLock.acquire` proves
    the folder is held."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- leftovers
def remove_interrupted_writes(folder: str | Path) -> list[Path]:
    """Remove what interrupted atomic writes left in ``folder`` and its sub-folders; returns
    the paths removed. Call it only while holding the folder's lock.

    ``.<name>.<random>.tmp`` files and folders are unfinished copies and are deleted. A
    ``.<name>.<random>.old`` folder holds the previous ``<name>`` model folder, moved aside
    while its replacement was moved in: if ``<name>`` is missing (the write stopped between
    the two moves) the previous folder is put back, otherwise it is deleted. Sub-folders with
    their own lock file are other run folders and are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in sorted(current.iterdir()):
            match = _LEFTOVER.match(entry.name)
            if match is not None:
                if match["kind"] == "old":
                    _restore_moved_aside(entry, current / match["name"])
                _remove(entry)
                removed.append(entry)
            elif entry.is_dir() and not entry.is_symlink() and not (entry / LOCK_FILE).exists():
                pending.append(entry)
    return removed


def _restore_moved_aside(old: Path, target: Path) -> None:
    previous = old / target.name
    if old.is_dir() and previous.exists() and not target.exists():
        os.replace(previous, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- JSON
def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (and tuples as lists),
    so that it can be written as standard JSON (which has no NaN or Infinity). NumPy scalars
    become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def dumps_json(value: Any, indent: int | None = None) -> str:
    """Standard JSON text of ``value``; non-finite floats become ``null``. Anything else that
    JSON cannot hold raises (``allow_nan=False`` guards the conversion)."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a sibling temporary file, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
