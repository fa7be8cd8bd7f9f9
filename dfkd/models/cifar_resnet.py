"""ResNet-18/34/50 for 32x32 images (He et al. 2016, the CIFAR variant used by DAFL, DFAD and CMI).

Differences from the ImageNet ResNet: a 3x3 stride-1 stem and no max-pool, so the four stages see
32, 16, 8 and 4 pixels. Module names follow timm's ResNet (``conv1``, ``layerN``, ``downsample``,
``fc``); checkpoints that name them ``shortcut``/``linear`` load through ``checkpoint_filter_fn``.
``PooledClassifier`` and ``cifar_cfg`` are shared by the other CIFAR families of dfkd's zoo.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # DFAD's normalization


Rename = Tuple[str, Union[str, Callable[[re.Match], str]]]  # (pattern, replacement) for re.sub


def rename_keys(state_dict: Dict[str, torch.Tensor], own_keys: Iterable[str],
                renames: Sequence[Rename]) -> Dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` of ``renames`` to each key that ``own_keys`` lacks.

    The renamed key is kept only if it is an own key, so no rule can break a checkpoint that already fits.
    """
    own, out = set(own_keys), {}
    for key, value in state_dict.items():
        if key not in own:
            mapped = key
            for pattern, repl in renames:
                mapped = re.sub(pattern, repl, mapped)
            key = mapped if mapped in own else key
        out[key] = value
    return out


class PooledClassifier(nn.Module):
    """timm's classifier interface for a network that ends in global average pooling and a linear ``fc``.

    A subclass defines ``forward_features`` and ``feature_info`` and calls ``_build_head`` where it creates
    its head: seeded weights depend on the order in which parameters are created.
    """

    def _build_head(self, num_features: int, num_classes: int) -> None:
        # timm's "avg" pooling is AdaptiveAvgPool2d(1) + Flatten(1); at 0 classes ``fc`` is an nn.Identity.
        self.num_classes, self.num_features = num_classes, num_features
        self.global_pool, self.fc = create_classifier(num_features, num_classes, pool_type="avg")
        self.head_hidden_size = num_features * self.global_pool.feat_mult()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling and the classifier; ``pre_logits`` returns the pooled features."""
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier module (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised ``fc`` for ``num_classes`` (0: nn.Identity); keeps the pooling if None."""
        like = self.fc.weight if isinstance(self.fc, nn.Linear) else next(self.parameters())
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool_type)
        self.fc.to(device=like.device, dtype=like.dtype).train(self.training)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()


def _downsample(in_planes: int, planes: int, stride: int) -> nn.Module:
    """1x1 projection on the skip path when shape changes (option B of the ResNet paper)."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        changes = stride != 1 or in_planes != planes
        self.downsample = _downsample(in_planes, planes, stride) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.act = nn.ReLU(inplace=True)
        changes = stride != 1 or in_planes != out_planes
        self.downsample = _downsample(in_planes, out_planes, stride) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.downsample(x))


class CifarResNet(PooledClassifier):
    """Stem (3x3 conv, BN, ReLU) -> four stages (64..512 planes) -> global average pool -> ``fc``."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 10,
                 in_chans: int = 3, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = nn.ReLU(inplace=True)
        self.feature_info = [{"num_chs": 64, "reduction": 1, "module": "act"}]
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for j in range(blocks):
                stage.append(block(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.feature_info.append({"num_chs": in_planes, "reduction": 2 ** i, "module": f"layer{i + 1}"})
        self._build_head(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 4x4 (at 32x32 input) map of ``layer4``, before pooling."""
        x = self.act(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def cifar_cfg(**kwargs) -> dict:
    """The ``pretrained_cfg`` of a 32x32 CIFAR network (shared by the CIFAR families of dfkd's zoo).

    DFAD normalises CIFAR-10 and CIFAR-100 alike with these CIFAR-10 statistics.
    """
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "conv1", "classifier": "fc", **kwargs,
    }


default_cfgs = generate_default_cfgs({f"resnet{d}_cifar.untrained": cifar_cfg() for d in (18, 34, 50)})


# Renames for CIFAR ResNet checkpoints of DAFL/DFAD (resnet_8x.py) and CMI (resnet.py): classifier
# ``linear`` -> ``fc``, skip ``shortcut`` -> ``downsample``.
KEY_RENAMES = [(r"^linear\.", "fc."), (r"\.shortcut\.(\d)\.", r".downsample.\1.")]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A DAFL/DFAD/CMI CIFAR ResNet state dict renamed to ``model``'s keys (timm's ``pretrained_filter_fn``)."""
    return rename_keys(state_dict, model.state_dict().keys(), KEY_RENAMES)


def _create(variant: str, pretrained: bool, block, layers: List[int], **kwargs) -> CifarResNet:
    # Stem and stages are direct children, so timm's default FeatureListNet taps them without flattening.
    return build_model_with_cfg(CifarResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                block=block, layers=layers, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18 for 32x32 inputs: 11.17 M parameters at 10 classes (DFAD's CIFAR student)."""
    return _create("resnet18_cifar", pretrained, BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-34 for 32x32 inputs: 21.28 M parameters at 10 classes (DFAD's CIFAR teacher)."""
    return _create("resnet34_cifar", pretrained, BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50 (bottleneck) for 32x32 inputs: 23.52 M parameters at 10 classes."""
    return _create("resnet50_cifar", pretrained, Bottleneck, [3, 4, 6, 3], **kwargs)
