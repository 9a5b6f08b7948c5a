"""PreActResNet-18, the CIFAR-10 architecture of the fast adversarial training literature.

Follows ``preactresnet.py`` of locuslab/fast_adversarial (Wong et al., "Fast is better than free",
arXiv:2001.03994) and locuslab/robust_overfitting (Rice et al., arXiv:2002.11569), itself He et al.,
"Identity Mappings in Deep Residual Networks" (arXiv:1603.05027). Module names match the reference
code, so its checkpoints load into ``model.net`` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustrain.errors import ConfigError
from robustrain.models.registry import register_model

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (projected) shortcut.

    The 1x1 projection shortcut, when needed, takes the pre-activated input, as in the reference code.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images: 3x3 stem, four stages, final BN-ReLU, pooling, linear.

    Args:
        num_blocks: Blocks per stage, ``[2, 2, 2, 2]`` for PreActResNet-18.
        num_classes: Number of output logits.
        in_channels: Image channels.
        width: Channels of the first stage; stages have ``width, 2w, 4w, 8w`` (64 in the papers; 16 is
            a CPU-scale model).

    Shape:
        ``[B, in_channels, H, W]`` normalised images to logits ``[B, num_classes]``; any ``H, W >= 1``
        (global average pooling replaces the reference's fixed 4x4 pooling, identical on 32x32 inputs).
    """

    def __init__(
            self,
            num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
            num_classes: int = 10,
            in_channels: int = 3,
            width: int = 64,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"PreActResNet width must be a positive integer (64 in the papers), got {width!r}.")
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(8 * width * PreActBlock.expansion)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width * PreActBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes * PreActBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = torch.flatten(self.pool(out), 1)
        return self.linear(out)


@register_model
def preact_resnet18(*, num_classes: int, in_channels: int = 3, width: int = 64) -> PreActResNet:
    """PreActResNet-18 (11,172,170 parameters for CIFAR-10 at the default width 64)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width)
