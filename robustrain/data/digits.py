"""scikit-learn's bundled digits (8 x 8 grey images, 10 classes): the embedded default, no download.

The data set has no official test split, so a fixed stratified one is carved here: 20 % of each class,
chosen with a seeded legacy numpy RandomState (whose stream numpy keeps stable), so ``train`` and
``test`` are disjoint and identical on every machine and version.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustrain.data.dataset import ArrayDataset, channel_stats
from robustrain.data.sources import register_dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@register_dataset("digits", needs_root=False)
def read_digits(root: Path | None, train: bool) -> ArrayDataset:
    """The train (1,438 images) or test (359 images) part of the digits data set, 1 x 8 x 8 uint8 (``root`` is
    not read: the data ship with scikit-learn)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # N x 8 x 8, values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    train_images = torch.from_numpy(images[train_idx])
    mean, std = channel_stats(train_images)  # statistics of the training part, for both splits
    idx = train_idx if train else test_idx
    return ArrayDataset(
        images=train_images if train else torch.from_numpy(images[idx]),
        labels=torch.from_numpy(labels[idx]),
        num_classes=10,
        mean=mean,
        std=std,
        name="digits",
    )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices; each class gives ``round(test_fraction * its count)`` to test."""
    rng = np.random.RandomState(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: int(round(test_fraction * members.size))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    return train_idx, test_idx

