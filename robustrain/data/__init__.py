"""Datasets held in memory as uint8, a seeded validation split, and exactly resumable batch loaders."""
from robustrain.data.dataset import ArrayDataset
from robustrain.data.loader import BatchLoader
from robustrain.data.registry import DATASETS, load_dataset
from robustrain.data.split import split_validation

__all__ = ["ArrayDataset", "BatchLoader", "DATASETS", "load_dataset", "split_validation"]
