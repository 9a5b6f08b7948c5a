"""Datasets held in memory as uint8, a seeded validation split, and exactly resumable batch loaders.

Public API:

* :class:`ArrayDataset`: images (uint8) and labels in memory, with the dataset's statistics.
* :class:`BatchLoader`: seeded, exactly resumable batches (crop + flip augmentation, distributed shards).
* :func:`first_examples`: the first ``n`` examples of a loader's epoch 0 (a fixed check or evaluation batch).
* :data:`DATASETS`, :func:`load_dataset`, :func:`register_dataset`: the registered datasets (each reader registered
  at its definition), their loader, the decorator that registers a reader.
* :func:`split_validation`: a seeded held-out validation split.
"""
from robustrain.data.dataset import ArrayDataset
from robustrain.data.loader import BatchLoader, first_examples
from robustrain.data.registry import DATASETS, load_dataset, register_dataset
from robustrain.data.split import split_validation
from robustrain.registry import import_modules

import_modules(__name__, __path__)  # a dataset file registers its reader with @register_dataset

__all__ = ["ArrayDataset", "BatchLoader", "DATASETS", "first_examples", "load_dataset", "register_dataset",
           "split_validation"]
