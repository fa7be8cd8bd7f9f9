"""LeNet-5 and LeNet-5-half for 32x32 grey images: the MNIST teacher/student pair of DFAD.

Registered in timm, so ``timm.create_model("lenet5", num_classes=10)`` builds one and its
``pretrained_cfg`` carries the input size and the MNIST normalization.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; ``width`` scales every layer."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: float = 1.0, **_):
        super().__init__()
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 5), nn.ReLU(inplace=True),
        )
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(c3, f1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc1(self.features(x)))


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 10, "input_size": (1, 32, 32), "mean": MNIST_MEAN, "std": MNIST_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "features.0", "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"lenet5.untrained": _cfg(), "lenet5_half.untrained": _cfg()})


def _create(variant: str, pretrained: bool, width: float, **kwargs) -> LeNet5:
    kwargs.setdefault("in_chans", 1)
    return build_model_with_cfg(LeNet5, variant, pretrained, width=width, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5, 61.7k parameters at 10 classes (DFAD's MNIST teacher)."""
    return _create("lenet5", pretrained, width=1.0, **kwargs)


@register_model
def lenet5_half(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 with every layer at half width (DFAD's MNIST student)."""
    return _create("lenet5_half", pretrained, width=0.5, **kwargs)
