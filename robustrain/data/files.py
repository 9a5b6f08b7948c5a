"""File helpers shared by the readers: locating files, the missing-data error, safe unpickling."""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from robustrain.errors import DataNotFoundError

DOWNLOAD_HINT = "set `data.download: true` (load_dataset(..., download=True)) to let torchvision download it"


@dataclass(frozen=True)
class Layout:
    """One place a dataset may live: a folder and the files it must hold there.

    A file counts as present under its name plus any of ``suffixes`` (e.g. ``("", ".gz")``).
    """

    folder: Path
    files: tuple[str, ...]
    description: str  # e.g. "torchvision layout"
    suffixes: tuple[str, ...] = ("",)

    def find(self, name: str) -> Path | None:
        """The path of file ``name`` (first matching suffix), or None when absent."""
        for suffix in self.suffixes:
            path = self.folder / (name + suffix)
            if path.is_file():
                return path
        return None

    def paths(self) -> list[Path]:
        """The paths of all ``files``; only valid when none is missing."""
        found = [self.find(f) for f in self.files]
        assert all(p is not None for p in found), "paths() called on an incomplete layout"
        return [p for p in found if p is not None]

    def missing(self) -> list[str]:
        """The required files not present in ``folder``."""
        return [f for f in self.files if self.find(f) is None]

    def report(self) -> str:
        """One line saying what was found at this place."""
        if not self.folder.is_dir():
            state = "folder does not exist"
        else:
            optional = "".join(f"[{s}]" for s in self.suffixes if s)
            state = "missing " + ", ".join(f + optional for f in self.missing())
        return f"  {self.folder}  ({self.description}: {state})"


def first_complete(layouts: Sequence[Layout]) -> Layout | None:
    """The first layout whose files are all present, else None."""
    for layout in layouts:
        if layout.folder.is_dir() and not layout.missing():
            return layout
    return None


def not_found(dataset: str, split: str, layouts: Sequence[Layout], how_to_fix: str) -> DataNotFoundError:
    """The error for a dataset whose files are in none of ``layouts``."""
    looked = "\n".join(layout.report() for layout in layouts)
    return DataNotFoundError(
        f"{dataset} ({split} split) not found. Looked in:\n{looked}\n"
        f"To fix: {DOWNLOAD_HINT}, or {how_to_fix}"
    )


def find_layout(dataset: str, train: bool, layouts: Sequence[Layout], how_to_fix: str) -> Layout:
    """The first complete layout, or the :func:`not_found` error naming every place looked in."""
    found = first_complete(layouts)
    if found is None:
        raise not_found(dataset, "train" if train else "test", layouts, how_to_fix)
    return found


def corrupt(path: Path, problem: str) -> DataNotFoundError:
    """The error for a data file that exists but cannot be what it claims to be."""
    return DataNotFoundError(
        f"{path} is not a valid data file: {problem}. It is probably truncated or corrupted; "
        f"delete it and get it again ({DOWNLOAD_HINT})."
    )


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as e:
            raise corrupt(path, f"gzip error ({e})") from e
    return path.read_bytes()


# Globals a dataset pickle (CIFAR python version, written by Python 2 or 3 and any numpy) may use.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays, never arbitrary callables."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict[str, Any]:
    """Load a dataset pickle (dict) safely; bytes keys (b'data') become str keys ('data')."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise corrupt(path, f"cannot unpickle ({e})") from e
    if not isinstance(obj, dict):
        raise corrupt(path, f"expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over ``a`` without copying when ``a`` is writable and contiguous, else over a copy."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C", copy=True)
    return torch.from_numpy(a)
