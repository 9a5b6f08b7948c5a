"""`split_validation`: a seeded held-out validation split carved from a training set."""
from __future__ import annotations

import torch

from robustrain.data.dataset import ArrayDataset
from robustrain.errors import ConfigError


def split_validation(ds: ArrayDataset, val_size: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``ds`` into (train, validation) with ``val_size`` examples held out.

    The held-out examples are a uniformly random subset chosen by a generator seeded with ``seed``
    (never the global RNG), so the split is the same on every call and machine; both parts keep the
    original order of ``ds``, share no example and together hold all of it. Rice et al. (2020) hold
    out 1,000 CIFAR-10 training images.
    """
    n = len(ds)
    if isinstance(val_size, bool) or not isinstance(val_size, int):
        raise ConfigError(f"val_size must be an int number of examples; got {val_size!r}.")
    if not 0 <= val_size < n:
        raise ConfigError(
            f"val_size must be in [0, {n}) for {ds.name!r} (it has {n} training examples and some must "
            f"remain for training); got {val_size}. Rice et al. hold out 1000 of CIFAR-10's 50000."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int; got {seed!r}.")
    perm = torch.randperm(n, generator=torch.Generator(device="cpu").manual_seed(seed))
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values
    return ds.subset(train_idx), ds.subset(val_idx)
