"""Datasets held in memory as uint8 or streamed from disk, a seeded validation split, and exactly resumable loaders.

Public API:

* :class:`ArrayDataset`: images (uint8) and labels in memory, with the dataset's statistics.
* :class:`BatchLoader`: seeded, exactly resumable batches (crop + flip augmentation, distributed shards).
* :class:`StreamDataset`, :class:`StreamLoader`: the streaming path (DataLoader workers decode and augment per
  batch) for data that does not fit in memory; the same order, resume and augmentation as :class:`BatchLoader`.
* :func:`first_examples`: the first ``n`` examples of a loader's epoch 0 (a fixed check or evaluation batch).
* :data:`DATASETS`, :func:`load_dataset`, :func:`register_dataset`: the registered datasets (each reader registered
  at its definition: cifar10, cifar100, svhn, mnist, digits, folder, imagenet, tiny_imagenet, npz, then any user
  reader; ``torchvision:<Class>`` and ``module:function`` are accepted besides them), reading a split into memory,
  the decorator that registers a reader. :func:`read_splits` reads both splits, in memory or streamed;
  :func:`open_source` one split as undecoded items; :func:`make_loader` the loader for either kind of split.
* :class:`ImageSource`: a split as items decoded on demand (image files, a torchvision dataset).
* :func:`as_loader`: any iterable of ``(x, y)`` batches (a ``torch.utils.data.DataLoader``) as a loader.
* :func:`split_validation`: a seeded held-out validation split.
"""
from robustrain.data.dataset import ArrayDataset
from robustrain.data.items import ImageSource
from robustrain.data.iterable import IterableLoader, as_loader
from robustrain.data.loader import BatchLoader, first_examples
from robustrain.data.registry import DATASETS, load_dataset, make_loader, open_source, read_splits, register_dataset
from robustrain.data.split import split_validation
from robustrain.data.stream import StreamDataset, StreamLoader
from robustrain.registry import import_modules

import_modules(__name__, __path__)  # a dataset file registers its reader with @register_dataset

__all__ = ["ArrayDataset", "BatchLoader", "DATASETS", "ImageSource", "IterableLoader", "StreamDataset",
           "StreamLoader", "as_loader", "first_examples", "load_dataset", "make_loader", "open_source", "read_splits",
           "register_dataset", "split_validation"]
