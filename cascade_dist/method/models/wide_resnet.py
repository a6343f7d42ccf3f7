"""Wide ResNets WRN-40-k for ImageNet32 (Zagoruyko & Komodakis 2016; Chrabaszcz et al. 2017).

Depth 40 = 6n+4 with n = 6 pre-activation units per stage, widths 16k/32k/64k after a 16-filter stem.
"""

from __future__ import annotations

from .preact_resnet import PreActResNet
from .registry import register_classifier


def wide_resnet40(width: float, num_classes: int, in_channels: int = 3, dropout: float = 0.0):
    """WRN-40-`width`: the pre-activation ResNet body with widened stages."""
    widths = tuple(int(round(w * width)) for w in (16, 32, 64))
    return PreActResNet(6, num_classes, in_channels, widths=widths, dropout=dropout, stem_width=16)


@register_classifier
def wrn40_1(num_classes: int, in_channels: int = 3, **kw):
    return wide_resnet40(1, num_classes, in_channels, **kw)


@register_classifier
def wrn40_1_5(num_classes: int, in_channels: int = 3, **kw):
    return wide_resnet40(1.5, num_classes, in_channels, **kw)


@register_classifier
def wrn40_2(num_classes: int, in_channels: int = 3, **kw):
    return wide_resnet40(2, num_classes, in_channels, **kw)


@register_classifier
def wrn40_3(num_classes: int, in_channels: int = 3, **kw):
    return wide_resnet40(3, num_classes, in_channels, **kw)


@register_classifier
def wrn40_4(num_classes: int, in_channels: int = 3, **kw):
    return wide_resnet40(4, num_classes, in_channels, **kw)
