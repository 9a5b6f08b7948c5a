"""The dataset registry: every reader is registered at its definition with ``@register_dataset``.

A reader is ``read(root, train) -> ArrayDataset`` (``root`` is ``data.root`` as a Path; None for a dataset that
needs none), registered with the function that lets torchvision fetch its files (``download(root, train)``) if
there is one. :func:`robustrain.data.load_dataset` reads any registered name, a user's reader included.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from robustrain.data.dataset import ArrayDataset
from robustrain.registry import Registry

Reader = Callable[[Path | None, bool], ArrayDataset]
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

    def register(read: Reader) -> Reader:
        DATASETS.register(DatasetSource(name, read, download, needs_root), name=name)
        return read

    return register
