"""The per-channel normalisation layer that every robustrain model starts with."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustrain.errors import ConfigError

__all__ = ["Normalise", "NormalisedModel", "as_channel_values"]


def as_channel_values(values: float | Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    """Expand a scalar or a length-1 sequence to ``channels`` values and check the length.

    Args:
        values: One value per channel, or a single value shared by all channels.
        channels: The number of input channels.
        what: The argument name, for the error message.

    Raises:
        ConfigError: When the length is neither 1 nor ``channels`` or a value is not finite.
    """
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        seq = (float(values),)
    else:
        try:
            seq = tuple(float(v) for v in values)  # type: ignore[union-attr]
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{what} must be a number or a sequence of numbers, got {values!r}.") from err
    if len(seq) == 1:
        seq = seq * channels
    if len(seq) != channels:
        raise ConfigError(
            f"{what} has {len(seq)} values {seq} but the model has {channels} input channels; "
            f"give one value per channel or a single value."
        )
    if not all(math.isfinite(v) for v in seq):
        raise ConfigError(f"{what} must be finite, got {seq}.")
    return seq


class Normalise(nn.Module):
    """Per-channel ``(x - mean) / std``: the first layer of every robustrain model.

    Inputs live in [0, 1]; attacks and data loaders never normalise, the model does. ``mean`` and
    ``std`` are buffers, so they move with ``.to()`` and are saved in the ``state_dict``.

    Args:
        mean: One value per channel (or one value for all channels).
        std: One positive value per channel (or one value for all channels).
        channels: Number of input channels; defaults to ``len(mean)``.

    Shape:
        ``[B, C, H, W]`` in, same shape and memory format out.

    Raises:
        ConfigError: On mismatched lengths, non-finite values or a non-positive ``std``.

    Example:
        >>> norm = Normalise((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
        >>> norm(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
            self,
            mean: float | Sequence[float],
            std: float | Sequence[float],
            channels: int | None = None,
    ) -> None:
        super().__init__()
        if channels is None:
            channels = 1 if isinstance(mean, (int, float)) else len(mean)
        mean_t = as_channel_values(mean, channels, "mean")
        std_t = as_channel_values(std, channels, "std")
        if min(std_t) <= 0:
            raise ConfigError(f"std must be positive for every channel, got {std_t}.")
        self.register_buffer("mean", torch.tensor(mean_t, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std_t, dtype=torch.float32).view(1, channels, 1, 1))

    @property
    def channels(self) -> int:
        """The number of input channels this layer expects."""
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected images of shape [B, {self.channels}, H, W] in [0, 1], got shape {tuple(x.shape)}; "
                f"build the model with in_channels={x.shape[1] if x.dim() == 4 else '?'} to match the data."
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


class NormalisedModel(nn.Sequential):
    """A classifier whose first module is :class:`Normalise`: ``net(normalise(x))``.

    Built with ``create_model(..., normalise=False)`` (``model.normalise: false`` in a config) the first module
    is an ``nn.Identity`` instead, and the network sees the raw [0, 1] inputs.

    It is an ``nn.Sequential`` with two named children, so ``model[0]`` and ``model.normalise`` are the
    normalisation layer and ``model[1]`` and ``model.net`` the bare network (whose ``state_dict`` keys
    match the reference implementations). The output is logits ``[B, num_classes]``.

    Args:
        normalise: The normalisation layer.
        net: The network that takes normalised inputs.
    """

    normalise: Normalise | nn.Identity
    net: nn.Module

    def __init__(self, normalise: Normalise | nn.Identity, net: nn.Module) -> None:
        super().__init__()
        self.add_module("normalise", normalise)
        self.add_module("net", net)
