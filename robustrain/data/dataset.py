"""`ArrayDataset`: a whole image-classification split held in memory as uint8."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from robustrain.errors import ConfigError


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images and labels of one split, in memory.

    Attributes:
        images: uint8 tensor, N x C x H x W, pixel values 0..255.
        labels: int64 tensor, N, values in ``[0, num_classes)``.
        num_classes: number of classes of the dataset (not only those present in this split).
        mean, std: per-channel statistics of the inputs scaled to [0, 1], for the model's
            normalisation layer (inputs themselves are never normalised here).
        name: the dataset's registered name, e.g. ``"cifar10"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(
                f"{self.name}: images must be a uint8 tensor of shape N x C x H x W; got "
                f"{_describe(images)}. Convert with (x * 255).round().to(torch.uint8)."
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise ConfigError(
                f"{self.name}: labels must be an int64 tensor of shape N; got {_describe(labels)}."
            )
        if labels.shape[0] != images.shape[0]:
            raise ConfigError(
                f"{self.name}: {images.shape[0]} images but {labels.shape[0]} labels; "
                "every image needs exactly one label."
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"{self.name}: num_classes must be a positive int; got {self.num_classes!r}.")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"{self.name}: labels must lie in [0, {self.num_classes}); got values from "
                f"{int(labels.min())} to {int(labels.max())}."
            )
        channels = images.shape[1]
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(
                f"{self.name}: mean and std need one value per channel ({channels}); "
                f"got mean={mean}, std={std}."
            )
        if any(not s > 0 for s in std):
            raise ConfigError(f"{self.name}: every std must be > 0; got {std}.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ArrayDataset":
        """A new dataset holding the examples at ``indices`` (in that order), same metadata."""
        index = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
        return ArrayDataset(
            images=self.images.index_select(0, index),
            labels=self.labels.index_select(0, index.to(self.labels.device)),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
        )

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, image_shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes})"
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N x C x H x W images scaled to [0, 1].

    Computed exactly from per-channel histograms, so it needs no float copy of the images. A channel with one value
    throughout (std 0) gets std 1, so that normalising by it stays defined.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()) or 1.0)
    return tuple(means), tuple(stds)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
