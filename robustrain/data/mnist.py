"""MNIST reader: idx files in torchvision's layout (``ROOT/MNIST/raw``) or directly in ``ROOT``.

Each file may be uncompressed (``train-images-idx3-ubyte``) or gzipped (``train-images-idx3-ubyte.gz``),
as distributed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustrain.data.dataset import ArrayDataset
from robustrain.data.files import Layout, corrupt, find_layout, read_bytes, to_tensor
from robustrain.data.sources import register_dataset

# Published statistics of the MNIST training set (inputs in [0, 1]).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

_UBYTE = 0x08  # idx type code of unsigned bytes, the only one MNIST uses


def _stems(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _layouts(root: Path, train: bool) -> list[Layout]:
    files = _stems(train)
    gz = ("", ".gz")
    return [
        Layout(root / "MNIST" / "raw", files, "torchvision layout", gz),
        Layout(root, files, "flat folder of the official files", gz),
    ]


def download_mnist(root: Path, train: bool) -> None:
    """Let torchvision download MNIST into ``root/MNIST/raw``."""
    from torchvision.datasets import MNIST

    MNIST(str(root), train=train, download=True)


@register_dataset("mnist", download=download_mnist)
def read_mnist(root: Path, train: bool) -> ArrayDataset:
    """MNIST, 1 x 28 x 28, from the first folder that holds both the image and the label file."""
    layouts = _layouts(root, train)
    images_stem, labels_stem = _stems(train)
    found = find_layout(
        "MNIST", train, layouts,
        f"put {images_stem}[.gz] and {labels_stem}[.gz] (the official files, gzipped or not) "
        "in data.root or in data.root/MNIST/raw/.",
    )
    images_path, labels_path = found.paths()
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise corrupt(images_path, f"expected N x 28 x 28 images, found shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise corrupt(labels_path, f"expected {images.shape[0]} labels, found shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise corrupt(labels_path, f"labels should be 0..9, found up to {labels.max()}")
    return ArrayDataset(
        images=to_tensor(images[:, None]),
        labels=to_tensor(labels.astype(np.int64)),
        num_classes=10,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        name="mnist",
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian int32 sizes, data."""
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise corrupt(path, "missing idx magic number (two zero bytes, type, number of dimensions)")
    if raw[2] != _UBYTE:
        raise corrupt(path, f"idx type code 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt(path, "idx header is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise corrupt(path, f"idx header announces {shape} = {expected} bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
