"""torchvision AlexNet, GoogLeNet and ResNet-50 for ImageNet (the paper's ImageNet cascade).

Built with `weights=None` (nothing is downloaded); pass `weights=<local file>` to
`create_classifier` to load a state dict.
"""

from __future__ import annotations

from torch import nn

from .registry import register_classifier


def _tvm():
    """torchvision's model zoo, imported on first use (it costs seconds at every process start)."""
    from torchvision import models

    return models


def _rgb_stem_only(name: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ValueError(f"{name} takes 3-channel images, got in_channels={in_channels}")


@register_classifier
def alexnet(num_classes: int, in_channels: int = 3, **kw) -> nn.Module:
    _rgb_stem_only("alexnet", in_channels)
    return _tvm().alexnet(weights=None, num_classes=num_classes, **kw)


@register_classifier
def googlenet(num_classes: int, in_channels: int = 3, **kw) -> nn.Module:
    _rgb_stem_only("googlenet", in_channels)
    kw = {"aux_logits": False, "init_weights": True, "transform_input": False, **kw}
    return _tvm().googlenet(weights=None, num_classes=num_classes, **kw)


@register_classifier
def resnet50(num_classes: int, in_channels: int = 3, **kw) -> nn.Module:
    _rgb_stem_only("resnet50", in_channels)
    return _tvm().resnet50(weights=None, num_classes=num_classes, **kw)
