"""Batch augmentation done on whole tensors: random crop with zero padding and horizontal flip."""
from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS: tuple[str, ...] = ("crop_flip", "crop")


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image of ``x`` (B x C x H x W) from its zero-padded copy, then flip the chosen ones.

    ``offsets`` (B x 2, int64) gives the top-left corner (row, column) of each crop inside the image
    padded by ``pad`` on every side, each in ``[0, 2 * pad]``; ``(pad, pad)`` is the identity crop.
    ``flips`` (B, bool) selects the images mirrored left-right after cropping. Works for any dtype and
    device, with two gathers and no per-image Python loop.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # B x H
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # B x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flipped crop reads its columns backwards
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True, *,
    rows: slice | None = None, total: int | None = None,
) -> torch.Tensor:
    """`crop_flip` with offsets uniform in ``[0, 2 * pad]`` and flips with probability 1/2.

    The random draws come from ``generator`` (a CPU generator), so the result does not depend on
    the device of ``x`` or on the global RNG. When ``x`` holds only the rows ``rows`` of a batch of
    ``total`` images (a distributed rank's shard), the draws of the whole batch are made and the
    shard's rows of them used, so every image is augmented as it would be in the whole batch.
    """
    n = x.shape[0] if total is None else total
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    if rows is not None:
        offsets, flips = offsets[rows], flips[rows]
    return crop_flip(x, offsets.to(x.device), flips.to(x.device), pad)
