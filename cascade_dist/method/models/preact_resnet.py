"""Pre-activation ResNets of depth 6n+2 for CIFAR-sized images (He et al. 2016), as in the paper.

A 3x3 stem of 16 filters, three stages of n basic units with 16/32/64 filters; the first unit of
stages 2 and 3 doubles the width and halves the map (1x1 projection shortcut).
"""

from __future__ import annotations

from torch import nn

from .registry import register_classifier


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus identity (or 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem, three stages of `blocks_per_stage` units with `widths`, BN-ReLU, pool, linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        dropout: float = 0.0,
        stem_width: int = 16,
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        layers, in_planes = [], stem_width
        for i, planes in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(PreActBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.head(self.stages(self.stem(x))))


def preact_resnet(depth: int, num_classes: int, in_channels: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet of any depth 6n+2."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"preact ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return PreActResNet((depth - 2) // 6, num_classes, in_channels, **kwargs)


@register_classifier
def preact_resnet8(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(8, num_classes, in_channels, **kw)


@register_classifier
def preact_resnet14(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(14, num_classes, in_channels, **kw)


@register_classifier
def preact_resnet20(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(20, num_classes, in_channels, **kw)


@register_classifier
def preact_resnet32(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(32, num_classes, in_channels, **kw)


@register_classifier
def preact_resnet56(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(56, num_classes, in_channels, **kw)


@register_classifier
def preact_resnet110(num_classes: int, in_channels: int = 3, **kw):
    return preact_resnet(110, num_classes, in_channels, **kw)
