"""`as_loader`: any iterable of ``(x, y)`` batches (a ``torch.utils.data.DataLoader``, a list of tensor pairs, ...)
with the loader interface the Trainer and the evaluation use.

Batches are checked and converted: ``x`` a float tensor in [0, 1] (uint8 images are divided by 255), ``y`` int64
class labels; both moved to the device. Inputs outside [0, 1] are refused: normalisation is a layer inside the
model, never a transform of the data.

Exact resume is NOT supported for such iterables: resuming a run stopped mid-epoch starts a new pass over the
iterable and skips the batches the run had already trained on, which are the same batches only if the iterable
yields them in the same order every time (e.g. a DataLoader without shuffling, or with a seeded ``generator`` and no
random augmentation). A warning says so when it happens; robustrain's own loaders resume exactly.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator

import torch

from robustrain.errors import ConfigError

FORMAT = "(x, y) pairs: x images of shape B x C x H x W (float in [0, 1] or uint8 0..255), y integer labels of shape B"


class IterableLoader:
    """An iterable of ``(x, y)`` batches, iterated anew every epoch; see the module docstring."""

    def __init__(self, batches: Iterable, device: torch.device | str | None = None):
        if isinstance(batches, Iterator):
            raise ConfigError(
                f"got a one-shot iterator ({type(batches).__name__}); training iterates the data once per epoch, so "
                "pass something that can be iterated again: a torch DataLoader, a list of (x, y) batches, or an "
                "object whose __iter__ returns a fresh iterator.")
        if not hasattr(batches, "__iter__"):
            raise ConfigError(f"expected an iterable of {FORMAT}; got {type(batches).__name__}.")
        self.batches = batches
        self.device = None if device is None else torch.device(device)
        self.dataset = getattr(batches, "dataset", None)
        self.batch_size = getattr(batches, "batch_size", None)
        self._warned = False

    def __len__(self) -> int:
        try:
            return len(self.batches)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(
                f"{type(self.batches).__name__} has no len(): the learning-rate schedule needs the number of batches "
                "per epoch. Pass a torch DataLoader (over a map-style dataset) or a list of batches.") from None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, epoch: int, start_batch: int = 0, *, with_indices: bool = False) -> Iterator:
        if with_indices:
            raise ConfigError(
                "this training attack keeps per-example state (e.g. fgsm_mep) and needs each example's dataset index, "
                "which only robustrain's loaders provide; use a registered dataset (robustrain.data.register_dataset) "
                "or another attack.")
        sampler = getattr(self.batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a different shuffle every epoch
            sampler.set_epoch(epoch)
        if start_batch and not self._warned:
            self._warned = True
            warnings.warn(
                f"resuming at batch {start_batch} of epoch {epoch + 1} of a user iterable ({type(self.batches).__name__}): "
                f"its first {start_batch} batches of a new pass are skipped; the resume is exact only if the iterable "
                "yields the same batches in the same order every time.", stacklevel=2)
        for i, batch in enumerate(self.batches):
            if i < start_batch:
                continue
            yield self.convert(batch, i)

    def convert(self, batch: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` as (float images in [0, 1], int64 labels) on the device."""
        if isinstance(batch, dict):
            keys = [k for k in ("image", "img", "x", "input", "pixel_values") if k in batch]
            labels = [k for k in ("label", "labels", "y", "target") if k in batch]
            if not keys or not labels:
                raise ConfigError(f"batch {i} is a mapping with keys {sorted(batch)}; expected {FORMAT}.")
            batch = (batch[keys[0]], batch[labels[0]])
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError(f"batch {i} is {type(batch).__name__}; expected {FORMAT}.")
        x, y = batch[0], batch[1]
        x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
        y = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
        if x.dim() != 4:
            raise ConfigError(f"batch {i}: x has shape {tuple(x.shape)}; expected B x C x H x W "
                              "(add the channel dimension for grey images: x[:, None]).")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ConfigError(f"batch {i}: y is {y.dtype} of shape {tuple(y.shape)} for {x.shape[0]} images; expected "
                              "integer class labels, one per image.")
        if self.device is not None:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.dtype.is_floating_point:
            raise ConfigError(f"batch {i}: x is {x.dtype}; expected float images in [0, 1] or uint8 0..255.")
        else:
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ConfigError(
                    f"batch {i}: inputs range over [{lo:.3g}, {hi:.3g}]; robustrain needs images in [0, 1] (the "
                    "threat model and the box constraint are defined there). Remove transforms.Normalize from the "
                    "data pipeline: the model normalises inside (robustrain models take mean and std).")
            x = x.float()
        return x, y.long()


def as_loader(data: Any, device: torch.device | str | None = None) -> Any:
    """``data`` itself when it is a robustrain loader (it has ``iterate``), else an :class:`IterableLoader`."""
    if data is None or hasattr(data, "iterate"):
        return data
    return IterableLoader(data, device)
