"""MobileNetV2 for 32x32 images (Sandler et al. 2018), width 1.0.

The ImageNet network downsamples 32x; on 32x32 inputs that leaves nothing, so (as is usual for CIFAR)
the stem and the second stage use stride 1: 32 -> 4 pixels overall.
"""
from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from dfkd.models.cifar_resnet import PooledClassifier, cifar_cfg

# (expansion t, output channels c, repeats n, stride of the first repeat s), the paper's Table 2 with
# the stem and stage-2 strides set to 1 for 32x32 inputs.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; a skip when shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class CifarMobileNetV2(PooledClassifier):
    """Stem conv3x3(32) -> 17 inverted residuals -> conv1x1(1280) -> global average pool -> ``fc``."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, num_features: int = 1280, **_):
        super().__init__()
        # The taps are the last block of each paper stage of 16, 24, 32, 96 and 320 channels, the stages timm's
        # mobilenetv2_100 taps (at half its reductions here); block names need timm's flatten_sequential.
        blocks, c, stride, self.feature_info = [], 32, 1, []
        for t, cout, n, s in STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
            stride *= s
            if cout in (16, 24, 32, 96, 320):
                self.feature_info.append({"num_chs": cout, "reduction": stride, "module": f"blocks.{len(blocks) - 1}"})
        # Created after the blocks as it always was (seeded weights follow creation order); registered first,
        # as it runs first (timm's feature extraction runs the children in registration order).
        self.stem = conv_bn(in_chans, 32, 3)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(c, num_features, 1)
        self._build_head(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 conv head's 1280-channel 4x4 map (at 32x32 input), before pooling."""
        return self.head(self.blocks(self.stem(x)))


default_cfgs = generate_default_cfgs({"mobilenetv2_cifar.untrained": cifar_cfg(first_conv="stem.0")})


@register_model
def mobilenetv2_cifar(pretrained: bool = False, **kwargs) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs: 2.24 M parameters at 10 classes."""
    return build_model_with_cfg(CifarMobileNetV2, "mobilenetv2_cifar", pretrained,
                                feature_cfg={"flatten_sequential": True}, **kwargs)
