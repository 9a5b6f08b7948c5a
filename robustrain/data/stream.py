"""The streaming path, for data that does not fit in memory: :class:`StreamDataset` and :class:`StreamLoader`.

Items are decoded (and, with ``augment: random_resized_crop``, cropped and flipped) per batch by torch DataLoader
worker processes, then moved to the device, where ``crop_flip`` / ``crop`` augment the batch exactly as the
in-memory :class:`~robustrain.data.loader.BatchLoader` does. The order of an epoch, the batches, the per-batch
augmentation draws and the per-example crops are pure functions of (seed, epoch, batch or example index), as in
the in-memory loader, so ``iterate(epoch, start_batch=k)`` resumes exactly and, on the same data without
``random_resized_crop``, both loaders yield the same batches.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from robustrain.data.augment import AUGMENTATIONS, random_crop_flip
from robustrain.data.items import ImageSource, _Collate, _Decode
from robustrain.data.loader import _generator, derive_seed
from robustrain.distributed import shard_bounds
from robustrain.errors import ConfigError

#: ``data.stream: null`` streams an image-file dataset whose decoded training split would exceed this many bytes
STREAM_ABOVE_BYTES = 4 * 2**30
STREAM_AUGMENTATIONS = (*AUGMENTATIONS, "random_resized_crop")
STATS_SAMPLE = 1000


class StreamDataset:
    """A split whose images stay on disk: an :class:`ImageSource` and the positions of its items in this split.

    Has what model building and the loaders need from a dataset (``len``, ``num_classes``, ``mean``, ``std``,
    ``name``, ``image_shape``, ``subset``), like :class:`~robustrain.data.dataset.ArrayDataset` without the tensors.
    ``mean`` / ``std``: the source's published statistics, else those of up to 1,000 images drawn with ``seed``.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int] | None = None, *, seed: int = 0,
                 stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 image_shape: tuple[int, int, int] | None = None):
        self.source = source
        self.indices = torch.arange(len(source)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
        self.name = source.name
        self.num_classes = source.num_classes
        if image_shape is None:
            image_shape = tuple(int(s) for s in source.load(int(self.indices[0]))[0].shape) if len(self.indices) \
                else (source.channels, 0, 0)
        self.image_shape: tuple[int, int, int] = image_shape  # type: ignore[assignment]
        if stats is None:
            if source.mean is not None and source.std is not None:
                stats = (tuple(source.mean), tuple(source.std))
            else:
                n = len(self.indices)
                pick = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("stats", seed)))
                sample = [source.load(int(self.indices[int(i)]))[0] for i in pick[:STATS_SAMPLE]]
                stats = source.stats(torch.stack(sample))
        self.mean, self.std = stats

    def __len__(self) -> int:
        return int(self.indices.numel())

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "StreamDataset":
        """The examples at ``indices`` of this split (in that order), same statistics."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return StreamDataset(self.source, self.indices[index], stats=(self.mean, self.std),
                             image_shape=self.image_shape)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"StreamDataset(name={self.name!r}, n={len(self)}, image_shape=({c}, {h}, {w}), "
                f"num_classes={self.num_classes})")


class _Positions(torch.utils.data.Dataset):
    """Position ``p`` of a StreamDataset, decoded: the source item ``indices[p]``, cropped from a generator seeded by
    the source index (so a subset crops an example as the whole split would)."""

    def __init__(self, ds: StreamDataset, crop_seed: tuple | None):
        self.decode = _Decode(ds.source, crop_seed)
        self.indices = ds.indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, p: int) -> tuple[torch.Tensor, int, int]:
        x, y, _ = self.decode[int(self.indices[p])]
        return x, y, int(p)


class StreamLoader:
    """Batches of a :class:`StreamDataset` decoded by ``workers`` DataLoader processes; the interface of
    :class:`~robustrain.data.loader.BatchLoader` (``iterate(epoch, start_batch, with_indices=...)``, ``len``,
    ``dataset``, ``batch_size``), the same order, sharding and batch augmentation.

    ``augment``: None, ``crop_flip`` / ``crop`` (pad ``crop_padding``, on the device, per batch) or
    ``random_resized_crop`` (Inception-style crop to ``image_size`` and a flip, per example in the workers; the
    ImageNet training augmentation; needs data.options.image_size).
    """

    def __init__(self, ds: StreamDataset, batch_size: int, *, shuffle: bool, drop_last: bool = False,
                 augment: str | None = None, seed: int = 0, device: str | torch.device = "cpu", crop_padding: int = 4,
                 rank: int = 0, world_size: int = 1, workers: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}.")
        if augment is not None and augment not in STREAM_AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {augment!r}; expected None or one of: "
                              f"{', '.join(STREAM_AUGMENTATIONS)}.")
        if augment == "random_resized_crop" and ds.source.image_size is None:
            raise ConfigError("data.augment: random_resized_crop crops to data.options.image_size, which is not set; "
                              "set it (e.g. 224 for ImageNet).")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"data.workers must be a non-negative int; got {workers!r}.")
        self.dataset, self.batch_size = ds, batch_size
        self.shuffle, self.drop_last, self.augment = bool(shuffle), bool(drop_last), augment
        self.seed, self.crop_padding, self.workers = seed, crop_padding, workers
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator:
        return self.iterate(0)

    def order(self, epoch: int) -> torch.Tensor:
        """The positions of epoch ``epoch`` in the order they are served (that of the in-memory loader)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator("order", self.seed, epoch))

    def _batches_of(self, epoch: int, start_batch: int) -> list[tuple[list[int], slice | None, int]]:
        order, n, bs = self.order(epoch), len(self.dataset), self.batch_size
        out = []
        for i in range(start_batch, len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            rows, total = None, hi - lo
            if self.world_size > 1:
                a, b = shard_bounds(hi - lo, self.rank, self.world_size)
                rows, lo, hi = slice(a, b), lo + a, lo + b
            out.append((order[lo:hi].tolist(), rows, total))
        return out

    def iterate(self, epoch: int, start_batch: int = 0, *, with_indices: bool = False) -> Iterator:
        """The batches ``start_batch, ...`` of epoch ``epoch`` (float images in [0, 1] and labels on the device)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative int; got {epoch!r}.")
        if isinstance(start_batch, bool) or not isinstance(start_batch, int) or not 0 <= start_batch <= len(self):
            raise ConfigError(f"start_batch must be an int in [0, {len(self)}]; got {start_batch!r}.")
        plan = self._batches_of(epoch, start_batch)
        crop_seed = (self.seed, epoch) if self.augment == "random_resized_crop" else None
        loader = torch.utils.data.DataLoader(
            _Positions(self.dataset, crop_seed), batch_sampler=[p for p, _, _ in plan], num_workers=self.workers,
            collate_fn=_Collate(self.dataset.name), pin_memory=self.device.type == "cuda")
        for i, ((x, y, idx), (_, rows, total)) in enumerate(zip(loader, plan), start=start_batch):
            x = x.to(self.device, non_blocking=True)
            if self.augment in AUGMENTATIONS:
                x = random_crop_flip(x, _generator("augment", self.seed, epoch, i), pad=self.crop_padding,
                                     flip=self.augment == "crop_flip",
                                     **({"rows": rows, "total": total} if rows is not None else {}))
            y = y.to(self.device)
            if with_indices:
                yield x.float().div_(255.0), y, idx.to(self.device)
            else:
                yield x.float().div_(255.0), y

    def __repr__(self) -> str:
        return (f"StreamLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"augment={self.augment!r}, workers={self.workers}, seed={self.seed}, device={self.device})")


def estimated_bytes(source: ImageSource) -> int:
    """The bytes the decoded split would take in memory (its first image's size times the number of items)."""
    c, h, w = source.load(0)[0].shape
    return int(c) * int(h) * int(w) * len(source)
