"""WideResNet-depth-widen as used by Madry et al., TRADES and Rice et al. (WRN-28-10, WRN-34-10).

Zagoruyko & Komodakis, "Wide Residual Networks" (arXiv:1605.07146), in the form of ``wideresnet.py``
of yaodongyu/TRADES and locuslab/robust_overfitting. Module names match that code, so its checkpoints
load into ``model.net``.

NOTE: the TRADES / robust_overfitting file also builds a ``sub_block1`` that ``forward`` never uses:
2,102,112 dead parameters, so that code counts 48,262,586 parameters for WRN-34-10 where the network
really has 46,160,474. It is left out here; drop the ``sub_block1.*`` keys from such a checkpoint (or
load it with ``strict=False``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustrain.errors import ConfigError
from robustrain.models.registry import register_model

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet", "wide_resnet", "wrn28_10", "wrn34_10"]


class BasicBlock(nn.Module):
    """Pre-activation wide basic block with optional dropout between the two 3x3 convolutions.

    When the channel count changes, the 1x1 projection shortcut takes the pre-activated input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None  # reference name, kept for checkpoint compatibility
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: the in-place ReLU is applied to bn1's output, never to x, so x stays intact for the
        # identity shortcut.
        out = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` wide basic blocks; the first one changes width and stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for small images: 3x3 stem with 16 channels, three stages of width
    ``16k, 32k, 64k`` (strides 1, 2, 2), final BN-ReLU, global average pooling and a linear layer.

    Args:
        depth: Total depth; ``(depth - 4)`` must be divisible by 6 (10, 16, 28, 34, 40, ...).
        widen: Widening factor ``k``.
        num_classes: Number of output logits.
        in_channels: Image channels.
        drop_rate: Dropout probability inside each block (0 in the adversarial-training papers).

    Shape:
        ``[B, in_channels, H, W]`` normalised images to logits ``[B, num_classes]``; global average
        pooling replaces the reference's 8x8 pooling (identical on 32x32 inputs).

    Raises:
        ConfigError: For a depth that is not ``6n + 4``, a non-positive widen or a dropout outside [0, 1).
    """

    def __init__(
            self,
            depth: int = 34,
            widen: int = 10,
            num_classes: int = 10,
            in_channels: int = 3,
            drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40), got {depth!r}.")
        if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
            raise ConfigError(f"WideResNet widen must be a positive integer (10 for WRN-34-10), got {widen!r}.")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"WideResNet drop_rate must be in [0, 1), got {drop_rate!r}.")
        n = (depth - 4) // 6
        channels = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference initialisation: He-normal (fan-out) convs, unit BN, zero linear bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = torch.flatten(self.pool(out), 1)
        return self.fc(out)


@register_model
def wide_resnet(*, num_classes: int, in_channels: int = 3, depth: int, widen: int, dropout: float = 0.0) -> WideResNet:
    """WRN-``depth``-``widen``, e.g. ``depth=16, widen=4``."""
    return WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels, drop_rate=dropout)


@register_model
def wrn28_10(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (36,479,194 parameters for CIFAR-10)."""
    return WideResNet(28, 10, num_classes=num_classes, in_channels=in_channels, drop_rate=dropout)


@register_model
def wrn34_10(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-34-10 (46,160,474 parameters for CIFAR-10)."""
    return WideResNet(34, 10, num_classes=num_classes, in_channels=in_channels, drop_rate=dropout)
