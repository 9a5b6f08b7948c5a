"""`BatchLoader`: seeded, exactly resumable batches of an in-memory `ArrayDataset`."""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch

from robustrain.data.augment import AUGMENTATIONS, random_crop_flip
from robustrain.data.dataset import ArrayDataset
from robustrain.distributed import shard_bounds
from robustrain.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` (stable across processes, platforms and versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


class BatchLoader:
    """Iterates a dataset in batches of float images in [0, 1] and int64 labels on ``device``.

    Every batch is a pure function of (seed, epoch, batch index): the order of an epoch comes from a
    generator seeded with (seed, epoch), the augmentation of batch i from one seeded with
    (seed, epoch, i), never from the global RNG. So ``iterate(epoch, start_batch=k)`` yields exactly
    the batches ``k, k+1, ...`` of ``iterate(epoch)``, which is what an exact resume needs: the
    trainer only has to save the epoch and the index of the next batch.

    The uint8 images are moved to ``device`` once; each batch is gathered, augmented and converted to
    float there.

    Distributed sampler: with ``world_size`` > 1 the loader serves rank ``rank``'s shard of every batch. Every
    rank computes the same order (a function of (seed, epoch)) and takes its contiguous slice
    (:func:`robustrain.distributed.shard_bounds`) of each global batch of ``batch_size`` images, so the global
    batch size, the number of steps per epoch and the per-epoch shuffling are those of a single process, and the
    shards of ranks 0, 1, ... concatenate to the single-process batch (augmentation included: the whole batch's
    random draws are made and the shard's rows used).
    """

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        augment: str | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        crop_padding: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}.")
        if augment is not None and augment not in AUGMENTATIONS:
            raise ConfigError(
                f"unknown augmentation {augment!r}; expected None or one of: {', '.join(AUGMENTATIONS)}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int; got {seed!r}.")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError(f"crop_padding must be a non-negative int; got {crop_padding!r}.")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1 \
                or isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"expected 0 <= rank < world_size; got rank={rank!r}, world_size={world_size!r}.")
        n = len(ds)
        smallest = n % batch_size if (n % batch_size and not drop_last) else min(n, batch_size)
        if 0 < smallest < world_size:
            raise ConfigError(
                f"a batch of {smallest} examples of {ds.name!r} (batch_size {batch_size}, {n} examples) cannot be "
                f"split over {world_size} processes; use a batch size of at least {world_size} whose last batch "
                "is that large too, or drop_last=True."
            )
        if drop_last and 0 < n < batch_size:
            raise ConfigError(
                f"batch_size {batch_size} is larger than the {n} examples of {ds.name!r} and drop_last=True, "
                "so every epoch would be empty; lower batch_size or set drop_last=False."
            )
        self.dataset = ds
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.seed = seed
        self.crop_padding = crop_padding
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self._images = ds.images.to(self.device)
        self._labels = ds.labels.to(self.device)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)

    def iterate(self, epoch: int, start_batch: int = 0, *, with_indices: bool = False) -> Iterator[Batch]:
        """The batches ``start_batch, start_batch + 1, ...`` of epoch ``epoch``; with ``with_indices`` each batch is
        ``(x, y, indices)``, the dataset indices (int64, on ``device``) of its examples (this rank's shard), for
        attacks that keep per-example state (``fgsm_mep``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative int; got {epoch!r}.")
        if isinstance(start_batch, bool) or not isinstance(start_batch, int) or not 0 <= start_batch <= len(self):
            raise ConfigError(
                f"start_batch must be an int in [0, {len(self)}] (this loader has {len(self)} batches "
                f"per epoch); got {start_batch!r}."
            )
        return self._batches(epoch, start_batch, with_indices)

    def order(self, epoch: int) -> torch.Tensor:
        """The example indices of epoch ``epoch`` in the order they are served (CPU, int64)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator("order", self.seed, epoch))

    def _batches(self, epoch: int, start_batch: int, with_indices: bool = False) -> Iterator[Batch]:
        order = self.order(epoch).to(self.device) if self.shuffle else None
        n, bs = len(self.dataset), self.batch_size
        for i in range(start_batch, len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            rows = None
            if self.world_size > 1:  # this rank's shard of the global batch
                a, b = shard_bounds(hi - lo, self.rank, self.world_size)
                rows, total = slice(a, b), hi - lo
                lo, hi = lo + a, lo + b
            if order is None:
                x, y = self._images[lo:hi], self._labels[lo:hi].clone()  # never hand out a view
                idx = torch.arange(lo, hi, device=self.device) if with_indices else None
            else:
                idx = order[lo:hi]
                x, y = self._images.index_select(0, idx), self._labels.index_select(0, idx)
            if self.augment is not None:
                x = random_crop_flip(
                    x,
                    _generator("augment", self.seed, epoch, i),
                    pad=self.crop_padding,
                    flip=self.augment == "crop_flip",
                    **({"rows": rows, "total": total} if rows is not None else {}),
                )
            if with_indices:
                yield x.float().div_(255.0), y, idx.clone()
            else:
                yield x.float().div_(255.0), y

    def __repr__(self) -> str:
        return (
            f"BatchLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, seed={self.seed}, device={self.device}"
            + (f", rank={self.rank}, world_size={self.world_size})" if self.world_size > 1 else ")")
        )


def first_examples(loader: BatchLoader, n: int) -> Batch:
    """The first ``n`` examples of a loader's epoch 0 (a fixed batch)."""
    xs, ys, have = [], [], 0
    for x, y in loader.iterate(0):
        xs.append(x)
        ys.append(y)
        have += len(y)
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]
