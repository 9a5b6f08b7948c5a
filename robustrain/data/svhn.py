"""SVHN reader: torchvision's layout (``ROOT/train_32x32.mat``, ``ROOT/test_32x32.mat``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustrain.data.dataset import ArrayDataset
from robustrain.data.files import Layout, corrupt, find_layout, to_tensor
from robustrain.data.sources import register_dataset

# Published per-channel statistics of the SVHN training set (inputs in [0, 1]).
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


def _layouts(root: Path, train: bool) -> list[Layout]:
    name = "train_32x32.mat" if train else "test_32x32.mat"
    return [Layout(root, (name,), "torchvision layout, MATLAB files of the cropped-digits format")]


def download_svhn(root: Path, train: bool) -> None:
    """Let torchvision download the SVHN split into ``root``."""
    from torchvision.datasets import SVHN

    SVHN(str(root), split="train" if train else "test", download=True)


@register_dataset("svhn", download=download_svhn)
def read_svhn(root: Path, train: bool) -> ArrayDataset:
    """SVHN cropped digits; label 10 (the digit 0) becomes 0, as in torchvision."""
    layouts = _layouts(root, train)
    found = find_layout(
        "SVHN", train, layouts,
        "put train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/) "
        "directly in the folder data.root points at.",
    )
    (path,) = found.paths()
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # scipy raises several unrelated types for a damaged file
        raise corrupt(path, f"scipy.io.loadmat failed ({type(e).__name__}: {e})") from e
    if "X" not in mat or "y" not in mat:
        raise corrupt(path, f"expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise corrupt(path, f"'X' should be uint8 of shape 32 x 32 x 3 x N, found {x.dtype} {x.shape}")
    n = x.shape[3]
    if y.size != n:
        raise corrupt(path, f"{n} images but {y.size} labels")
    labels = y.reshape(n).astype(np.int64)
    labels[labels == 10] = 0
    if n and (labels.min() < 0 or labels.max() > 9):
        raise corrupt(path, f"labels should be 1..10, found {labels.min()}..{labels.max()}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # H x W x C x N -> N x C x H x W
    return ArrayDataset(
        images=to_tensor(images),
        labels=to_tensor(labels),
        num_classes=10,
        mean=SVHN_MEAN,
        std=SVHN_STD,
        name="svhn",
    )
