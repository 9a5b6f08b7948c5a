"""Reading datasets: :func:`load_dataset` (a split in memory), :func:`read_splits` (both, in memory or streamed),
:func:`open_source` (a split as undecoded items, for streaming) and :func:`make_loader`.

A reader is ``read(root, train, **options) -> ArrayDataset | ImageSource``, registered at its definition with
``@register_dataset`` (:mod:`.sources`): ``root`` is data.root (a Path, or None), ``train`` says which split, and its
keyword-only arguments are the options a recipe may set in ``data.options`` (checked against them, so a misspelt
option names the valid ones). A reader that returns an :class:`~robustrain.data.items.ImageSource` (items decoded
on demand) can also be streamed; the in-memory path decodes it once. Besides the registered names, ``data.name``
accepts ``torchvision:<Class>`` (any torchvision dataset class, :mod:`.torchvision_source`) and ``module:function``
(a reader of one's own, imported from the current folder or the installed packages, without registering it).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from robustrain.data.dataset import ArrayDataset
from robustrain.data.items import ImageSource, materialise
from robustrain.data.sources import DATASETS, DatasetSource, Reader, register_dataset
from robustrain.data.torchvision_source import PREFIX as TORCHVISION, torchvision_source
from robustrain.errors import ConfigError, DataNotFoundError, unknown_choice, unknown_key

# Importing the reader modules registers their datasets, in this order.
from robustrain.data import cifar, svhn, mnist, digits, folder, npz  # noqa: E402,F401  isort: skip

SPLITS = ("train", "test")
#: what ``data.name`` accepts besides the registered names
OTHER_NAMES = f"Also accepted: {TORCHVISION}<Class> (any torchvision dataset class), module:function (a reader of yours)."

__all__ = ["DATASETS", "DatasetSource", "SPLITS", "load_dataset", "make_loader", "open_source", "read_splits",
           "register_dataset"]


def _key(name: Any) -> str:
    if not isinstance(name, str):
        return ""
    name = name.strip()
    head, sep, tail = name.partition(":")
    return head.lower() + sep + tail  # torchvision class names keep their case


def _import_reader(spec: str) -> Reader:
    """The reader ``module:function`` names (imported, never evaluated; the current folder is importable), so a
    reader of one's own works from ``robustrain train`` too: ``data.name: my_readers:read_scans``."""
    from robustrain.registry import import_callable

    return import_callable(spec, "data.name =", "my_readers:read_scans")


def _check_options(key: str, source: DatasetSource, options: dict[str, Any]) -> None:
    """Every ``data.options`` key must be a keyword-only argument of the reader (unless it takes ``**options``)."""
    params = inspect.signature(source.read).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    for option in options:
        if option not in valid:
            raise unknown_key(option, valid, "data.options", owner=f"dataset {key!r}")


def _read(name: str, root: str | os.PathLike[str] | None, split: str, download: bool,
          options: dict[str, Any]) -> ArrayDataset | ImageSource:
    key = _key(name)
    if split not in SPLITS:
        raise ConfigError(
            f"unknown split {split!r} for dataset {key!r}; expected 'train' or 'test'. "
            "A validation split is carved from 'train' with split_validation(ds, val_size, seed)."
        )
    train = split == "train"
    folder = None if root is None or (isinstance(root, str) and not root.strip()) else Path(root).expanduser()
    if key.startswith(TORCHVISION):
        class_name = key[len(TORCHVISION):]
        if not class_name:
            raise ConfigError(f"data.name = {name!r}: name the class, e.g. {TORCHVISION}FashionMNIST.")
        return torchvision_source(class_name, folder, train, download=download, **options)
    if ":" in key:
        source = DatasetSource(key, _import_reader(name.strip()))
    elif key in DATASETS:
        source = DATASETS[key]
    elif isinstance(name, str) and name.strip() in DATASETS:  # a user's reader registered with capitals
        source = DATASETS[name.strip()]
    else:
        raise unknown_choice("dataset", name, DATASETS.names(), note=OTHER_NAMES)
    _check_options(key, source, options)
    if folder is None and source.needs_root:
        raise ConfigError(
            f"dataset {key!r} needs a data root (data.root), the folder that holds or will hold its files; got "
            f"none. Datasets that need no root: {', '.join(n for n in DATASETS if not DATASETS[n].needs_root)}."
        )
    try:
        return source.read(folder, train, **options)
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
    return source.read(folder, train, **options)


def load_dataset(name: str, root: str | os.PathLike[str] | None, split: str, download: bool = False, *,
                 workers: int = 0, options: dict[str, Any] | None = None) -> ArrayDataset:
    """Read split ``split`` ("train" or "test") of dataset ``name`` from ``root`` into memory.

    ``digits`` is bundled with scikit-learn and ignores ``root`` and ``download``; every other dataset
    needs ``root``. When its files are missing, ``download=True`` lets torchvision fetch them into
    ``root`` first; otherwise a `DataNotFoundError` lists the places looked in and the fix. ``options`` are the
    reader's keyword arguments (``data.options``); ``workers`` decode image files in that many processes.
    """
    out = _read(name, root, split, download, dict(options or {}))
    if isinstance(out, ImageSource):
        out = materialise(out, workers=workers)
    if not isinstance(out, ArrayDataset):
        raise ConfigError(f"the reader of dataset {name!r} returned {type(out).__name__}; a reader returns an "
                          "ArrayDataset or an ImageSource.")
    if len(out) == 0:
        raise ConfigError(f"dataset {name!r}: the {split} split is empty; every split needs at least one example.")
    return out


def open_source(name: str, root: str | os.PathLike[str] | None, split: str, download: bool = False, *,
                options: dict[str, Any] | None = None) -> ImageSource:
    """Split ``split`` of dataset ``name`` as undecoded items, for the streaming path (``data.stream: true``)."""
    out = _read(name, root, split, download, dict(options or {}))
    if not isinstance(out, ImageSource):
        streamable = [k for k in ("folder", "imagenet", "tiny_imagenet")] + [f"{TORCHVISION}<Class>"]
        raise ConfigError(f"dataset {name!r} is read into memory as a whole and cannot be streamed; set "
                          f"data.stream: false. Streamable: {', '.join(streamable)}, and registered readers that "
                          "return an ImageSource.")
    return out


def read_splits(name: str, root: str | os.PathLike[str] | None, download: bool = False, *,
                options: dict[str, Any] | None = None, stream: bool | None = None, workers: int = 0,
                seed: int = 0) -> tuple[Any, Any]:
    """The (train, test) splits of dataset ``name``, both in memory (:class:`ArrayDataset`) or both streamed
    (:class:`~robustrain.data.stream.StreamDataset`).

    ``stream``: True streams (image-file and torchvision datasets only), False reads into memory, None (data.stream:
    null) streams when the decoded training split would take more than
    :data:`~robustrain.data.stream.STREAM_ABOVE_BYTES` (4 GiB), judged from its first image."""
    from robustrain.data.stream import STREAM_ABOVE_BYTES, StreamDataset, estimated_bytes

    options = dict(options or {})
    train = _read(name, root, "train", download, options)
    if isinstance(train, ImageSource) and (stream or (stream is None and estimated_bytes(train) > STREAM_ABOVE_BYTES)):
        test = open_source(name, root, "test", download, options=options)
        train_ds = StreamDataset(train, seed=seed)
        return train_ds, StreamDataset(test, stats=(train_ds.mean, train_ds.std))
    if stream and not isinstance(train, ImageSource):
        open_source(name, root, "train", download, options=options)  # raises: this dataset cannot be streamed
    train_ds = materialise(train, workers=workers) if isinstance(train, ImageSource) else train
    return train_ds, load_dataset(name, root, "test", download, workers=workers, options=options)


def make_loader(ds: Any, batch_size: int, *, workers: int = 0, **kwargs: Any) -> Any:
    """A :class:`~robustrain.data.loader.BatchLoader` for an in-memory split, a
    :class:`~robustrain.data.stream.StreamLoader` (with ``workers``) for a streamed one."""
    from robustrain.data.loader import BatchLoader
    from robustrain.data.stream import StreamDataset, StreamLoader

    if isinstance(ds, StreamDataset):
        return StreamLoader(ds, batch_size, workers=workers, **kwargs)
    if kwargs.get("augment") == "random_resized_crop":
        raise ConfigError("data.augment: random_resized_crop is a streaming augmentation (per example, in the "
                          "workers); set data.stream: true, or use crop_flip for data held in memory.")
    return BatchLoader(ds, batch_size, **kwargs)
