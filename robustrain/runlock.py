"""The run-folder lock: one writer per folder at a time.

Every command that writes into a folder (``robustrain train`` and ``--resume`` into the run folder, ``robustrain
eval`` into the run folder or its ``--out`` folder, ``robustrain report`` into its output folder) holds
:func:`folder_lock` while it writes. The lock is ``FOLDER/.robustrain.lock``: an advisory ``fcntl.flock`` on the
open file (the kernel releases it when the process ends, however it ends) plus a JSON record of the holder (pid,
host, command, start time) for the error message a second writer gets.

* A second writer gets :class:`FolderLockedError` naming the holder's pid, host, command and start time.
* Stale locks: a record left by a holder that is gone (killed with SIGKILL, its flock already released by the
  kernel, whatever host it ran on) is taken over with a warning. A flock still held on this host by a process that
  is not the recorded pid, while the recorded pid is dead (a child process that inherited the open file), is also
  taken over with a warning. A flock held on another host (network file systems forward flock) is respected.
* On release (normal exit, an exception, SIGTERM turned into an exception by the CLI) the record and the file are
  removed.

Where fcntl does not exist (Windows) the record alone is the lock (a recorded pid that is alive on this host
refuses; anything else is taken over with a warning).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from .errors import RobustrainError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".robustrain.lock"


class FolderLockedError(RobustrainError):
    """Another live process writes into the folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "command": f"(unreadable lock record {text[:60]!r})", "started": "?"}
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any]) -> str:
    """``pid 123 on host h (command '...', started 2026-01-01 12:00:00 UTC)``."""
    return (f"pid {record.get('pid')} on host {record.get('host')} (command {record.get('command')!r}, started "
            f"{record.get('started')})")


def _own_record(command: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "started_unix": time.time()}


class FolderLock:
    """A held lock on ``folder`` (release it with :meth:`release`, or use :func:`folder_lock`)."""

    def __init__(self, folder: Path, fd: int, record: dict[str, Any]):
        self.folder, self.fd, self.record = folder, fd, record
        self.path = folder / LOCK_NAME

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # releases the flock
            self.fd = -1


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _refuse(folder: Path, holder: dict[str, Any]) -> FolderLockedError:
    return FolderLockedError(
        f"folder {str(folder)!r} is in use by another robustrain process: {describe_holder(holder)}. Two writers "
        f"would overwrite each other's checkpoints and logs, so nothing was written. Wait for it to finish (or stop "
        f"it), or write elsewhere (--run-dir NEW_DIR / --out NEW_DIR). If that process is gone, remove "
        f"{str(folder / LOCK_NAME)!r}.")


def acquire(folder: str | Path, command: str) -> FolderLock:
    """Lock ``folder`` (which must exist) for this process; :class:`FolderLockedError` if a live process holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    me = _own_record(command)
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RobustrainError(f"cannot create the lock file {str(path)!r} ({e.strerror}); the folder must be "
                                  "writable by you: check its permissions or write elsewhere.") from e
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = _read_record(path) or {}
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and host == me["host"] and not _pid_alive(pid):
                    # the recorded holder died but a process it started keeps the open file: start a new lock file
                    warnings.warn(f"taking over the lock of {str(folder)!r}: its holder {describe_holder(holder)} "
                                  "is no longer running.", RuntimeWarning, stacklevel=2)
                    path.unlink(missing_ok=True)
                    continue
                raise _refuse(folder, holder or {"pid": "?", "host": "?", "command": "?", "started": "?"}) from None
            if not _same_file(fd, path):  # released (and removed) between our open and our flock: try again
                os.close(fd)
                continue
        stale = _read_record(path)
        if stale is not None and stale.get("pid") != me["pid"]:
            if fcntl is None and stale.get("host") == me["host"] and isinstance(stale.get("pid"), int) \
                    and _pid_alive(stale["pid"]):
                os.close(fd)
                raise _refuse(folder, stale)
            warnings.warn(f"took over a stale lock of {str(folder)!r}: {describe_holder(stale)} ended without "
                          "releasing it (killed?); its complete files are intact.", RuntimeWarning, stacklevel=2)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        return FolderLock(folder, fd, me)
    raise FolderLockedError(f"could not lock {str(folder)!r}: the lock file kept changing; another process is "
                            "starting in it. Try again.")  # pragma: no cover


def command_line() -> str:
    """How this process was started (for the lock record)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "robustrain")):
        argv[0] = "robustrain"
    return " ".join(argv)


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str | None = None, *, create: bool = True) -> Iterator[FolderLock]:
    """Hold the lock of ``folder`` inside the ``with`` block. ``create``: make the folder first; a folder this
    call created is removed again on the way out if it holds nothing but the lock (a failed command leaves no stub)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RobustrainError(f"{str(folder)!r} is a file, not a folder; choose a folder path (or move the file).")
    created: list[Path] = []  # the folders this call makes, deepest first
    if create and not folder.exists():
        missing = folder
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise RobustrainError(f"cannot create the folder {str(folder)!r} ({e.strerror}); choose a writable "
                                  "location.") from e
    try:
        lock = acquire(folder, command or command_line())
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield lock
    finally:
        lock.release()
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:
        try:
            f.rmdir()  # only if empty
        except OSError:
            return


__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME", "acquire", "command_line", "describe_holder",
           "folder_lock"]
