"""A small CNN for MNIST and the 8x8 digits data set.

With the defaults and 28x28 inputs this is the MNIST model of Wong et al., "Fast is better than
free" (arXiv:2001.03994, locuslab/fast_adversarial ``mnist_net``): two stride-2 4x4 convolutions
(16 and 32 channels) with ReLU, a 100-unit ReLU hidden layer and a linear head.
"""
from __future__ import annotations

import torch
from torch import nn

from robustrain.errors import ConfigError
from robustrain.models.registry import register_model

__all__ = ["SmallCNN", "small_cnn"]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"SmallCNN {what} must be a positive integer, got {value!r}.")
    return value


class SmallCNN(nn.Module):
    """conv4x4/2 (``width``) - ReLU - conv4x4/2 (``2 * width``) - ReLU - flatten - linear(``hidden``) - ReLU - linear.

    The flatten size is computed at construction from ``input_size``, so the model is built for that
    input size and refuses any other with a message naming the fix.

    Args:
        num_classes: Number of output logits.
        in_channels: Image channels (1 for MNIST and digits).
        width: Channels of the first convolution; the second has twice as many (16 in the reference).
        hidden: Units of the hidden fully connected layer.
        input_size: Height and width of the inputs (28 for MNIST, 8 for digits).
        batchnorm: Add BatchNorm after each convolution (not in the reference model).

    Shape:
        ``[B, in_channels, input_size, input_size]`` to logits ``[B, num_classes]``.

    Raises:
        ConfigError: For non-positive sizes.
        ValueError: In ``forward``, for inputs whose size is not ``input_size``.
    """

    def __init__(
            self,
            num_classes: int = 10,
            in_channels: int = 1,
            width: int = 16,
            hidden: int = 100,
            input_size: int = 28,
            batchnorm: bool = False,
    ) -> None:
        super().__init__()
        width = _positive_int(width, "width")
        hidden = _positive_int(hidden, "hidden")
        self.input_size = _positive_int(input_size, "input_size")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(width) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.Flatten(),
        )
        # Each 4x4 stride-2 conv with padding 1 maps n to n // 2 (computed, not probed with a dummy
        # forward, which would update BatchNorm's running statistics).
        side = input_size // 2 // 2
        if side < 1:
            raise ConfigError(f"SmallCNN input_size must be at least 4, got {input_size}.")
        flat = 2 * width * side * side
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"small_cnn was built for {self.input_size}x{self.input_size} inputs but got "
                f"{x.shape[-2]}x{x.shape[-1]}; create it with input_size={x.shape[-1]}."
            )
        return self.classifier(self.features(x))


@register_model
def small_cnn(
        *,
        num_classes: int,
        in_channels: int = 1,
        width: int = 16,
        hidden: int = 100,
        input_size: int = 28,
        batchnorm: bool = False,
) -> SmallCNN:
    """The small MNIST/digits CNN; pass ``input_size=8`` for digits."""
    return SmallCNN(num_classes, in_channels, width=width, hidden=hidden, input_size=input_size, batchnorm=batchnorm)
