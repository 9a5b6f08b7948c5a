"""CIFAR-10 and CIFAR-100 readers: torchvision's python-pickle layout and the official binary layout."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robustrain.data.dataset import ArrayDataset
from robustrain.data.files import Layout, corrupt, load_pickle, find_layout, to_tensor
from robustrain.data.sources import register_dataset

# Published per-channel statistics of the training sets (inputs in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_PIXELS = 3 * 32 * 32
CIFAR10_RECORDS_PER_FILE = 10_000  # data_batch_1..5 and test_batch


def _cifar10_layouts(root: Path, train: bool) -> list[Layout]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return [
        Layout(root / "cifar-10-batches-py", tuple(names), "torchvision python layout"),
        Layout(root / "cifar-10-batches-bin", tuple(n + ".bin" for n in names), "official binary layout"),
    ]


def _cifar100_layouts(root: Path, train: bool) -> list[Layout]:
    name = "train" if train else "test"
    return [
        Layout(root / "cifar-100-python", (name,), "torchvision python layout"),
        Layout(root / "cifar-100-binary", (name + ".bin",), "official binary layout"),
    ]


def download_cifar10(root: Path, train: bool) -> None:
    """Let torchvision download CIFAR-10 into ``root/cifar-10-batches-py``."""
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=train, download=True)


def download_cifar100(root: Path, train: bool) -> None:
    """Let torchvision download CIFAR-100 into ``root/cifar-100-python``."""
    from torchvision.datasets import CIFAR100

    CIFAR100(str(root), train=train, download=True)


@register_dataset("cifar10", download=download_cifar10)
def read_cifar10(root: Path, train: bool) -> ArrayDataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision) or ``root/cifar-10-batches-bin``."""
    layouts = _cifar10_layouts(root, train)
    found = find_layout(
        "CIFAR-10", train, layouts,
        "point data.root at the folder that holds cifar-10-batches-py/ (data_batch_1..5, test_batch) "
        "or cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin).",
    )
    paths = found.paths()
    if found.folder.name.endswith("-bin"):
        parts = [_read_binary(p, label_bytes=1, label_index=0) for p in paths]
    else:
        parts = [_read_pickle(p, "labels") for p in paths]
    for path, (images, _) in zip(paths, parts):
        if images.shape[0] != CIFAR10_RECORDS_PER_FILE:  # every official file holds 10,000 images
            # a warning, not an error: tests and demos use small files in the official layout
            warnings.warn(f"{path} holds {images.shape[0]} images ({path.stat().st_size} bytes); the official CIFAR-10 "
                          f"{path.name} holds {CIFAR10_RECORDS_PER_FILE}"
                          + (f" ({CIFAR10_RECORDS_PER_FILE * (1 + _PIXELS)} bytes)" if path.suffix == ".bin" else "")
                          + ": a cut or partial copy; results on it are not comparable with published CIFAR-10 "
                          "numbers. Get the full file again if this is not intended.", RuntimeWarning, stacklevel=3)
    images, labels = _concat(parts)
    return _dataset(images, labels, 10, CIFAR10_MEAN, CIFAR10_STD, "cifar10", paths)


@register_dataset("cifar100", download=download_cifar100)
def read_cifar100(root: Path, train: bool) -> ArrayDataset:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (torchvision) or ``root/cifar-100-binary``."""
    layouts = _cifar100_layouts(root, train)
    found = find_layout(
        "CIFAR-100", train, layouts,
        "point data.root at the folder that holds cifar-100-python/ (train, test) "
        "or cifar-100-binary/ (train.bin, test.bin).",
    )
    (path,) = found.paths()
    if found.folder.name.endswith("-binary"):
        images, labels = _read_binary(path, label_bytes=2, label_index=1)  # coarse byte, then fine byte
    else:
        images, labels = _read_pickle(path, "fine_labels")
    return _dataset(images, labels, 100, CIFAR100_MEAN, CIFAR100_STD, "cifar100", [path])


def _read_binary(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes then 3072 pixel bytes (R, G, B planes, row-major)."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise corrupt(path, f"size {raw.size} bytes is not a positive multiple of the {record}-byte record "
                            f"({label_bytes} label byte{'s' if label_bytes > 1 else ''} + {_PIXELS} pixels)")
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_index]


def _read_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision-layout batch: a dict with 'data' (N x 3072 uint8) and a label list."""
    batch: dict[str, Any] = load_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise corrupt(path, f"expected keys 'data' and {label_key!r}, found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise corrupt(path, f"'data' should be uint8 of shape N x {_PIXELS}, found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise corrupt(path, f"{data.shape[0]} images but {labels.shape} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _concat(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    name: str,
    paths: Sequence[Path],
) -> ArrayDataset:
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt(paths[0].parent, f"labels outside [0, {num_classes}): {labels.min()}..{labels.max()}")
    return ArrayDataset(
        images=to_tensor(images),
        labels=to_tensor(labels),
        num_classes=num_classes,
        mean=mean,
        std=std,
        name=name,
    )
