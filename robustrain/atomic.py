"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half of one.

The data goes to a temporary ``.NAME.<random>.tmp`` beside the target, is flushed and fsynced, then renamed over
the target (``os.replace``); on an error the temporary is removed. A process killed mid-write leaves only such a
temporary (:func:`remove_temporaries` deletes them; a run deletes its folder's when it starts or resumes).

* :func:`write_atomic`: the general form (a callback writes into the open temporary file).
* :func:`write_text_atomic`, :func:`write_json_atomic`: text and JSON.
* :func:`remove_temporaries`: delete what a killed write left behind.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable


def write_atomic(path: str | Path, write: Callable[[IO], Any], *, binary: bool = False,
                 private: bool = False) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` gives (0666 less the umask), or 0600 with
    ``private``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _create_temporary(path: Path, mode: int) -> tuple[int, str]:
    """A new ``.NAME.<random>.tmp`` beside ``path``, opened for writing (``mode`` less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:  # pragma: no cover - 2**32 names
            continue


def remove_temporaries(folder: str | Path, pattern: str = "*") -> list[Path]:
    """Delete the ``.NAME.<random>.tmp`` files a killed :func:`write_atomic` left in ``folder`` (for targets
    matching ``pattern``); returns what was removed. Call it only while no other process writes into ``folder``
    (e.g. holding its :mod:`~robustrain.runlock` lock)."""
    removed = []
    for tmp in sorted(Path(folder).glob(f".{pattern}.*.tmp")):
        token = tmp.name[:-len(".tmp")].rpartition(".")[2]
        if token.isalnum() and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_atomic(path, lambda f: json.dump(obj, f, indent=indent))


__all__ = ["remove_temporaries", "write_atomic", "write_json_atomic", "write_text_atomic"]
