"""Wide ResNets WRN-d-k for 32x32 images (Zagoruyko & Komodakis 2016): the CMI / ZSKT teacher-student pairs.

Pre-activation blocks (BN, ReLU, conv); ``(depth - 4) / 6`` blocks per stage, stage widths 16k, 32k, 64k.
Module names: ``conv1``, ``stages.S.B.{bn1,conv1,bn2,conv2,shortcut}``, ``norm``, ``fc``; checkpoints
laid out as ``blockN.layer.B...convShortcut`` (ZSKT/CMI) load through ``checkpoint_filter_fn``.
"""
from __future__ import annotations

from typing import Dict

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from dfkd.models.cifar_resnet import PooledClassifier, cifar_cfg, rename_keys


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a skip; a 1x1 conv skip only when the width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop_rate)
        # WRN's blocks change stride only where they change width, so the width alone decides the skip.
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv2(self.drop(self.act(self.bn2(self.conv1(pre)))))
        # The projection reads the pre-activated input, the identity the raw one (as in the WRN reference code).
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(PooledClassifier):
    """conv3x3(16) -> three stages of ``(depth-4)/6`` wide blocks -> BN-ReLU -> global average pool -> ``fc``."""

    def __init__(self, depth: int = 16, widen: int = 1, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, **_):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        # Every tap is a group's raw output, the last one too (before the final BN-ReLU), as ZSKT's WRN
        # returns the maps its attention transfer matches; ``stages.N`` names need timm's flatten_sequential.
        self.feature_info = [{"num_chs": 16, "reduction": 1, "module": "conv1"}]
        stages, in_planes = [], 16
        for i, planes in enumerate(widths):
            blocks = [WideBlock(in_planes if j == 0 else planes, planes, 2 if i > 0 and j == 0 else 1, drop_rate)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
            self.feature_info.append({"num_chs": planes, "reduction": 2 ** i, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_planes)
        self.act = nn.ReLU(inplace=True)
        self._build_head(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage after the final BN-ReLU, before pooling (8x8 at 32x32 input)."""
        return self.act(self.norm(self.stages(self.conv1(x))))


default_cfgs = generate_default_cfgs({f"wrn_{d}_{k}.untrained": cifar_cfg() for d in (16, 40) for k in (1, 2)})


# Renames for WRN checkpoints of ZSKT/CMI (wresnet.py): ``blockN.layer.B`` -> ``stages.(N-1).B``,
# ``convShortcut`` -> ``shortcut``, the final ``bn1`` -> ``norm``.
KEY_RENAMES = [
    (r"^block(\d)\.layer\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.convShortcut\.", ".shortcut."),
    (r"^bn1\.", "norm."),
]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A ZSKT/CMI WRN state dict renamed to ``model``'s keys (timm's ``pretrained_filter_fn``)."""
    return rename_keys(state_dict, model.state_dict().keys(), KEY_RENAMES)


def _create(variant: str, pretrained: bool, depth: int, widen: int, **kwargs) -> WideResNet:
    return build_model_with_cfg(WideResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2, 3)},
                                depth=depth, widen=widen, **kwargs)


@register_model
def wrn_16_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-1: 0.18 M parameters at 10 classes (CMI's CIFAR student)."""
    return _create("wrn_16_1", pretrained, 16, 1, **kwargs)


@register_model
def wrn_16_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-2: 0.69 M parameters at 10 classes."""
    return _create("wrn_16_2", pretrained, 16, 2, **kwargs)


@register_model
def wrn_40_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-1: 0.57 M parameters at 10 classes."""
    return _create("wrn_40_1", pretrained, 40, 1, **kwargs)


@register_model
def wrn_40_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-2: 2.24 M parameters at 10 classes (CMI's CIFAR teacher)."""
    return _create("wrn_40_2", pretrained, 40, 2, **kwargs)
