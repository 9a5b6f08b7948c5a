"""`load_dataset`: the one entry point that reads a registered dataset split into memory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from robustrain.data.cifar import download_cifar10, download_cifar100, read_cifar10, read_cifar100
from robustrain.data.dataset import ArrayDataset
from robustrain.data.digits import read_digits
from robustrain.data.mnist import download_mnist, read_mnist
from robustrain.data.svhn import download_svhn, read_svhn
from robustrain.errors import ConfigError, DataNotFoundError, unknown_name

SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Source:
    read: Callable[[Path, bool], ArrayDataset]
    download: Callable[[Path, bool], None]


_SOURCES: dict[str, _Source] = {
    "cifar10": _Source(read_cifar10, download_cifar10),
    "cifar100": _Source(read_cifar100, download_cifar100),
    "svhn": _Source(read_svhn, download_svhn),
    "mnist": _Source(read_mnist, download_mnist),
}

DATASETS: tuple[str, ...] = (*_SOURCES, "digits")


def load_dataset(
    name: str, root: str | os.PathLike[str] | None, split: str, download: bool = False
) -> ArrayDataset:
    """Read split ``split`` ("train" or "test") of dataset ``name`` from ``root`` into memory.

    ``digits`` is bundled with scikit-learn and ignores ``root`` and ``download``; every other dataset
    needs ``root``. When its files are missing, ``download=True`` lets torchvision fetch them into
    ``root`` first; otherwise a `DataNotFoundError` lists the places looked in and the fix.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise unknown_name("dataset", str(name), DATASETS)
    if split not in SPLITS:
        raise ConfigError(
            f"unknown split {split!r} for dataset {key!r}; expected 'train' or 'test'. "
            "A validation split is carved from 'train' with split_validation(ds, val_size, seed)."
        )
    train = split == "train"
    if key == "digits":
        return read_digits(train)
    if root is None or (isinstance(root, str) and not root.strip()):
        raise ConfigError(
            f"dataset {key!r} needs a data root (data.root), the folder that holds or will hold its files; "
            "got none. Only 'digits' (bundled with scikit-learn) needs no root."
        )
    folder = Path(root).expanduser()
    source = _SOURCES[key]
    try:
        return source.read(folder, train)
    except DataNotFoundError as missing:
        if not download:
            raise
        not_found = missing
    try:
        folder.mkdir(parents=True, exist_ok=True)
        source.download(folder, train)
    except Exception as e:  # no network, checksum mismatch, no space, ...
        raise DataNotFoundError(
            f"downloading {key!r} into {folder} with torchvision failed ({type(e).__name__}: {e}). "
            f"Get the files by hand instead; before downloading: {not_found}"
        ) from e
    return source.read(folder, train)
