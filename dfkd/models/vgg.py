"""VGG-11/13 with BatchNorm for 32x32 images (Simonyan & Zisserman 2015, CIFAR layout of CRD and CMI).

Five conv stages; max-pool after the first three only (32 -> 4 pixels), then global average pooling and a
single linear classifier, so the classifier sees 512 features instead of VGG's 25,088.
"""
from __future__ import annotations

from typing import List

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from dfkd.models.cifar_resnet import PooledClassifier, cifar_cfg

STAGES = {  # conv widths per stage: VGG configuration "A" (11 layers) and "B" (13 layers)
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(PooledClassifier):
    """``features`` (conv-BN-ReLU stages, three max-pools) -> global average pool -> ``fc``."""

    def __init__(self, stages: List[List[int]], num_classes: int = 10, in_chans: int = 3, **_):
        super().__init__()
        layers, c = [], in_chans
        self.feature_info = []
        for i, widths in enumerate(stages):
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            # Each stage is tapped at its last ReLU, before its max-pool (as in timm's VGG).
            tap = f"features.{len(layers) - 1}"
            self.feature_info.append({"num_chs": c, "reduction": 2 ** min(i, 3), "module": tap})
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self._build_head(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's 4x4 map (at 32x32 input), before pooling."""
        return self.features(x)


default_cfgs = generate_default_cfgs({f"vgg{d}_bn_cifar.untrained": cifar_cfg(first_conv="features.0") for d in (11, 13)})


def _create(variant: str, pretrained: bool, depth: int, **kwargs) -> CifarVGG:
    # The taps are layers of the ``features`` Sequential, which timm's FeatureListNet reaches once flattened.
    return build_model_with_cfg(CifarVGG, variant, pretrained, feature_cfg={"flatten_sequential": True},
                                stages=STAGES[depth], **kwargs)


@register_model
def vgg11_bn_cifar(pretrained: bool = False, **kwargs) -> CifarVGG:
    """VGG-11 with BN for 32x32 inputs: 9.23 M parameters at 10 classes (CMI's VGG teacher)."""
    return _create("vgg11_bn_cifar", pretrained, 11, **kwargs)


@register_model
def vgg13_bn_cifar(pretrained: bool = False, **kwargs) -> CifarVGG:
    """VGG-13 with BN for 32x32 inputs: 9.42 M parameters at 10 classes."""
    return _create("vgg13_bn_cifar", pretrained, 13, **kwargs)
