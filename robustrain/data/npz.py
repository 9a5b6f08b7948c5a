"""``npz``: ``ROOT/train.npz`` and ``ROOT/test.npz``, each with ``x`` (uint8 images, N x H x W or N x H x W x C)
and ``y`` (integer labels, N), as ``np.savez(path, x=images, y=labels)`` writes them.

The number of classes is ``num_classes`` if given, else the largest label of the two files plus one. Statistics
are those of each split's images (the model uses the training split's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustrain.data.dataset import ArrayDataset, channel_stats
from robustrain.data.files import to_tensor
from robustrain.data.sources import register_dataset
from robustrain.errors import ConfigError, DataNotFoundError

EXPECTED = ("ROOT/train.npz and ROOT/test.npz, each holding x (uint8 images, N x H x W or N x H x W x C with C 1 or 3) "
            "and y (integer labels, N), e.g. np.savez('train.npz', x=images, y=labels); data.root = ROOT")


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        folder = path.parent
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise DataNotFoundError(f"npz: {str(path)!r} does not exist"
                                + (f" ({str(folder)!r} holds: {', '.join(present[:10]) or 'nothing'})" if folder.is_dir()
                                   else f" ({str(folder)!r} is not a folder)") + f". Expected {EXPECTED}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise ConfigError(f"npz: {str(path)!r} holds the arrays {f.files}; expected x and y. Expected "
                                  f"{EXPECTED}.")
            return {"x": f["x"], "y": f["y"]}
    except (ValueError, OSError) as e:
        raise ConfigError(f"npz: {str(path)!r} could not be read as an .npz file without pickles ({e}). Expected "
                          f"{EXPECTED}.") from e


def _images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        hint = (" The values look like [0, 1] floats: convert with (x * 255).round().astype(np.uint8)."
                if x.dtype.kind == "f" and x.size and float(x.min()) >= 0 and float(x.max()) <= 1 else "")
        raise ConfigError(f"npz: {str(path)!r}: x is {x.dtype}; images must be uint8 (0..255).{hint}")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ConfigError(f"npz: {str(path)!r}: x has shape {x.shape}; expected N x H x W (grey) or N x H x W x C with "
                      "C = 1 or 3 (channels last, as PIL and numpy images are).")


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ConfigError(f"npz: {str(path)!r}: y is {y.dtype}; labels must be integers 0..num_classes-1.")
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (n,):
        raise ConfigError(f"npz: {str(path)!r}: {n} images but y has shape {y.shape}; expected one label per image.")
    return y.astype(np.int64)


@register_dataset("npz")
def read_npz(root: Path | None, train: bool, *, num_classes: int | None = None) -> ArrayDataset:
    """The ``train`` or ``test`` split of an npz dataset."""
    if root is None:
        raise ConfigError(f"npz: data.root is not set; expected {EXPECTED}.")
    root = Path(root)
    path = root / ("train.npz" if train else "test.npz")
    arrays = _load(path)
    images = _images(arrays["x"], path)
    labels = _labels(arrays["y"], images.shape[0], path)
    if images.shape[0] == 0:
        raise ConfigError(f"npz: {str(path)!r} holds no images; every split needs at least one.")
    if labels.min() < 0:
        raise ConfigError(f"npz: {str(path)!r}: negative label {labels.min()}; labels must be 0..num_classes-1.")
    if num_classes is None:
        other = root / ("test.npz" if train else "train.npz")
        top = int(labels.max())
        if other.is_file():
            with np.load(other, allow_pickle=False) as f:
                if "y" in f.files and f["y"].size and f["y"].dtype.kind in "iu":
                    top = max(top, int(f["y"].max()))
        num_classes = top + 1
    elif labels.max() >= num_classes:
        raise ConfigError(f"npz: {str(path)!r}: label {labels.max()} is outside [0, {num_classes}) (num_classes = "
                          f"{num_classes}); fix the labels or data.options.num_classes.")
    tensor = to_tensor(images)
    mean, std = channel_stats(tensor)
    return ArrayDataset(images=tensor, labels=to_tensor(labels), num_classes=num_classes, mean=mean, std=std, name="npz")
