"""`ImageSource`: a split as a list of undecoded items (image files, or a torchvision dataset's entries).

A source decodes one item at a time (:meth:`ImageSource.load`), so the same source feeds the in-memory path
(:func:`materialise`: every item decoded once, by DataLoader workers, into an `ArrayDataset`) and the streaming
path (:class:`~robustrain.data.stream.StreamLoader`: items decoded and augmented per batch, every epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from robustrain.data.dataset import ArrayDataset, channel_stats
from robustrain.data.images import CHANNELS, open_image, random_resized_crop, resize_center, to_pil, to_tensor
from robustrain.errors import ConfigError


@dataclass
class ImageSource:
    """One split of an image-classification dataset whose items are decoded on demand.

    Attributes:
        name: the dataset's name (``folder``, ``tiny_imagenet``, ``torchvision:CIFAR10`` ...).
        split: ``train`` or ``test``.
        count: the number of items.
        get: ``get(i) -> (image, label)``; image a PIL image, a uint8 array (H x W [x C]) or a uint8 C x H x W tensor.
        num_classes: the number of classes.
        classes: the class names, label order (may be empty).
        channels: 1 (grey) or 3 (RGB): every image is converted to it.
        image_size: resize to this square size (None: keep the files' size, which must then be the same for all).
        resize: the shorter side before the centre crop (None: ``image_size``; ImageNet evaluation: 256 for 224).
        mean, std: published per-channel statistics, or None to compute them from the decoded training images.
        where: what to name in an error about an item (a folder, a class name).
    """

    name: str
    split: str
    count: int
    get: Callable[[int], tuple[Any, int]]
    num_classes: int
    classes: Sequence[str] = ()
    channels: int = 3
    image_size: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    where: str = ""
    describe: Callable[[int], str] = field(default=lambda i: f"item {i}")

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ConfigError(f"{self.name}: channels must be 1 (grey) or 3 (RGB); got {self.channels!r}.")
        for key in ("image_size", "resize"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{self.name}: {key} must be a positive number of pixels or null; got {value!r}.")
        if self.resize is not None and self.image_size is None:
            raise ConfigError(f"{self.name}: resize = {self.resize} needs image_size (the side of the centre crop).")
        if self.count == 0:
            raise ConfigError(f"{self.name}: the {self.split} split is empty ({self.where or 'no items'}); "
                              "every split needs at least one image.")

    def __len__(self) -> int:
        return self.count

    def label(self, i: int) -> int:
        return int(self.get(i)[1])

    def load(self, i: int, crop: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Item ``i`` as (uint8 ``channels`` x H x W tensor, label). ``crop``: a generator for a random resized crop
        to ``image_size`` with a random flip (training); without it the deterministic resize and centre crop."""
        image, label = self.get(i)
        dtype = getattr(image, "dtype", None)  # PIL images have none: decoded files are 8-bit
        if dtype is not None and str(dtype) not in ("uint8", "torch.uint8"):
            raise ConfigError(f"{self.name}: {self.describe(i)} is of dtype {image.dtype}; images must be uint8 "
                              "(0..255). Remove a ToTensor / Normalize transform (robustrain scales and normalises "
                              "inside the model) or convert with (x * 255).round() to uint8.")
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ConfigError(f"{self.name}: {self.describe(i)} has label {label}, outside [0, {self.num_classes}); "
                              f"labels must be 0..{self.num_classes - 1} (one per class).")
        try:
            img = to_pil(image, f"{self.name}: {self.describe(i)}")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if crop is not None and self.image_size is not None:
            img = random_resized_crop(img, self.image_size, crop)
        elif self.image_size is not None:
            img = resize_center(img, self.image_size, self.resize)
        return to_tensor(img, self.channels), label

    def stats(self, images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The published statistics, or those of ``images`` (uint8 N x C x H x W)."""
        if self.mean is not None and self.std is not None:
            return tuple(self.mean), tuple(self.std)
        return channel_stats(images)


def file_source(name: str, split: str, files: Sequence[tuple[Path, int]], classes: Sequence[str], where: str,
                **options: Any) -> ImageSource:
    """An :class:`ImageSource` over image files, each with its label."""
    paths = [str(p) for p, _ in files]
    labels = [int(y) for _, y in files]

    def get(i: int) -> tuple[Any, int]:
        try:
            return open_image(paths[i]), labels[i]
        except ValueError as e:
            raise ConfigError(str(e)) from e

    return ImageSource(name, split, len(paths), get, len(classes), tuple(classes), where=where,
                       describe=lambda i: paths[i], **options)


class _Decode(torch.utils.data.Dataset):
    """Item ``i`` of a source, decoded (in a DataLoader worker); with a seed, randomly cropped and flipped from a
    generator seeded by (seed, epoch, i), so the result does not depend on the worker or the order."""

    def __init__(self, source: ImageSource, crop_seed: tuple | None = None):
        self.source, self.crop_seed = source, crop_seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        gen = None
        if self.crop_seed is not None:
            from robustrain.data.loader import derive_seed

            gen = torch.Generator().manual_seed(derive_seed("crop", *self.crop_seed, int(i)))
        x, y = self.source.load(int(i), gen)
        return x, y, int(i)


def collate(items: list[tuple[torch.Tensor, int, int]], name: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack decoded items into (uint8 B x C x H x W, int64 labels, int64 indices); different sizes are an error."""
    shapes = {tuple(x.shape) for x, _, _ in items}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ConfigError(
            f"{name}: images of different sizes ({a[1]}x{a[2]} and {b[1]}x{b[2]}, C x H x W {a} and {b}) cannot be "
            "stacked into one batch; set data.options.image_size (e.g. 64) to resize every image to that square "
            "(shorter side scaled, centre crop).")
    x = torch.stack([x for x, _, _ in items])
    return x, torch.tensor([y for _, y, _ in items], dtype=torch.int64), torch.tensor([i for _, _, i in items])


class _Collate:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, items):  # a class, not a lambda: DataLoader workers may need to pickle it
        return collate(items, self.name)


def materialise(source: ImageSource, workers: int = 0, batch_size: int = 256) -> ArrayDataset:
    """Decode every item of ``source`` once (``workers`` DataLoader worker processes) into an `ArrayDataset`."""
    loader = torch.utils.data.DataLoader(_Decode(source), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=_Collate(source.name))
    xs, ys = [], []
    shape = None
    for x, y, idx in loader:
        if shape is not None and x.shape[1:] != shape:
            raise ConfigError(
                f"{source.name}: images of different sizes (C x H x W {tuple(shape)} and {tuple(x.shape[1:])}, e.g. "
                f"{source.describe(int(idx[0]))}); set data.options.image_size (e.g. 64) to resize every image to "
                "that square.")
        shape = x.shape[1:]
        xs.append(x)
        ys.append(y)
    images = torch.cat(xs)
    mean, std = source.stats(images)
    return ArrayDataset(images=images, labels=torch.cat(ys), num_classes=source.num_classes, mean=mean, std=std,
                        name=source.name)
