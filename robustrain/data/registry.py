"""`load_dataset`: the one entry point that reads a registered dataset split into memory."""
from __future__ import annotations

import os
from pathlib import Path

from robustrain.data.dataset import ArrayDataset
from robustrain.data.sources import DATASETS, DatasetSource, register_dataset
from robustrain.errors import ConfigError, DataNotFoundError

# Importing the reader modules registers their datasets, in this order.
from robustrain.data import cifar, svhn, mnist, digits  # noqa: E402,F401  isort: skip

SPLITS = ("train", "test")

__all__ = ["DATASETS", "DatasetSource", "SPLITS", "load_dataset", "register_dataset"]


def load_dataset(
    name: str, root: str | os.PathLike[str] | None, split: str, download: bool = False
) -> ArrayDataset:
    """Read split ``split`` ("train" or "test") of dataset ``name`` from ``root`` into memory.

    ``name`` is one of :data:`DATASETS` (a reader registered with ``@register_dataset``). ``digits`` is bundled
    with scikit-learn and ignores ``root`` and ``download``; every other built-in dataset needs ``root``. When its
    files are missing, ``download=True`` lets torchvision fetch them into ``root`` first; otherwise a
    `DataNotFoundError` lists the places looked in and the fix.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    source = DATASETS.get(key if key in DATASETS else name)
    if split not in SPLITS:
        raise ConfigError(
            f"unknown split {split!r} for dataset {key!r}; expected 'train' or 'test'. "
            "A validation split is carved from 'train' with split_validation(ds, val_size, seed)."
        )
    train = split == "train"
    if not source.needs_root:
        return source.read(None if root is None else Path(root).expanduser(), train)
    if root is None or (isinstance(root, str) and not root.strip()):
        raise ConfigError(
            f"dataset {key!r} needs a data root (data.root), the folder that holds or will hold its files; "
            f"got none. Datasets that need no root: {', '.join(n for n in DATASETS if not DATASETS[n].needs_root)}."
        )
    folder = Path(root).expanduser()
    try:
        return source.read(folder, train)
    except DataNotFoundError as missing:
        if not download or source.download is None:
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
