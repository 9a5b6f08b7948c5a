"""The dataset registry: every reader is registered at its definition with ``@register_dataset``.

A reader is ``read(root, train, **options) -> ArrayDataset | ImageSource`` (``root`` is ``data.root`` as a Path;
None for a dataset that needs none; its keyword-only arguments are the ``data.options`` a recipe may set),
registered with the function that lets torchvision fetch its files (``download(root, train)``) if there is one.
A reader returning an :class:`~robustrain.data.items.ImageSource` (items decoded on demand) can also be streamed.
:func:`robustrain.data.load_dataset` reads any registered name, a user's reader included. Example::

    import numpy as np, torch
    from robustrain.data import ArrayDataset, register_dataset
    from robustrain.data.dataset import channel_stats

    @register_dataset("my_scans")
    def read_scans(root, train, *, limit=None):
        arrays = np.load(root / ("train.npz" if train else "test.npz"))
        x = torch.from_numpy(arrays["images"][:limit])                # uint8, N x C x H x W
        mean, std = channel_stats(x)
        return ArrayDataset(x, torch.from_numpy(arrays["labels"][:limit]).long(), num_classes=4, mean=mean,
                            std=std, name="my_scans")

    # recipe: data: {name: my_scans, root: /data/scans, options: {limit: 1000}}

Import the module that registers a reader before the data is read (in Python: before ``robustrain.train``); from
the command line, ``data.name: my_module:read_scans`` names a reader without registering it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustrain.registry import Registry

Reader = Callable[..., Any]  # (root: Path | None, train: bool, **options) -> ArrayDataset | ImageSource
Downloader = Callable[[Path, bool], None]


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: its reader, its downloader (None: nothing to download) and whether it needs a root."""

    name: str
    read: Reader
    download: Downloader | None = None
    needs_root: bool = True


DATASETS: Registry[DatasetSource] = Registry("dataset")
"""The datasets by name, in registration order (cifar10, cifar100, svhn, mnist, digits, then any user reader)."""


def register_dataset(name: str, *, download: Downloader | None = None,
                     needs_root: bool = True) -> Callable[[Reader], Reader]:
    """Decorator: register the reader it decorates as dataset ``name`` (returned unchanged). A name already
    registered is refused."""

    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"register_dataset: {name!r} is not a valid dataset name (a word without ':'; "
                         "'torchvision:<Class>' and 'module:function' are read without registering).")

    def register(read: Reader) -> Reader:
        DATASETS.register(DatasetSource(name, read, download, needs_root), name=name)
        return read

    return register
