"""LeNet-5 and LeNet-5-half for 32x32 grey images: the MNIST teacher/student pair of DFAD.

Registered in timm, so ``timm.create_model("lenet5", num_classes=10)`` builds one and its
``pretrained_cfg`` carries the input size and the MNIST normalization.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from dfkd.models.cifar_resnet import PooledClassifier

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class LeNet5(PooledClassifier):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; ``width`` scales every layer.

    ``features`` ends in a 1x1 map at 32x32 input, so there is no global pooling: the head is ``fc1``
    (flatten, linear, ReLU: the pre-logits) and the classifier ``fc``. ``forward`` and ``get_classifier``
    are the zoo's shared ones; the head and ``reset_classifier`` are LeNet's own.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: float = 1.0, **_):
        super().__init__()
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.num_classes, self.num_features, self.head_hidden_size = num_classes, c3, f1
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 5), nn.ReLU(inplace=True),
        )
        # One tap per conv, after its ReLU (before the pool, as timm's VGG). Reduction is the stride; the
        # unpadded 5x5 convs shrink the maps further (28, 10 and 1 pixels at 32x32 input).
        self.feature_info = [{"num_chs": c, "reduction": r, "module": f"features.{i}"}
                             for c, r, i in ((c1, 1, 1), (c2, 2, 4), (c3, 4, 7))]
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(c3, f1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(f1, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The third conv's ``num_features`` x 1 x 1 map (at 32x32 input)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``fc1`` then the classifier; ``pre_logits`` returns ``fc1``'s ``head_hidden_size`` features."""
        x = self.fc1(x)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: nn.Identity); ``global_pool`` is accepted for timm's
        interface and ignored, as LeNet has no pooling to choose."""
        like = self.fc1[1].weight
        self.num_classes = num_classes
        fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.fc = fc.to(device=like.device, dtype=like.dtype).train(self.training)


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 10, "input_size": (1, 32, 32), "mean": MNIST_MEAN, "std": MNIST_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "features.0", "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"lenet5.untrained": _cfg(), "lenet5_half.untrained": _cfg()})


def _create(variant: str, pretrained: bool, width: float, **kwargs) -> LeNet5:
    kwargs.setdefault("in_chans", 1)
    # Three taps in the ``features`` Sequential: timm's FeatureListNet reaches them once it is flattened.
    return build_model_with_cfg(LeNet5, variant, pretrained, width=width,
                                feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2)}, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5, 61.7k parameters at 10 classes (DFAD's MNIST teacher)."""
    return _create("lenet5", pretrained, width=1.0, **kwargs)


@register_model
def lenet5_half(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 with every layer at half width (DFAD's MNIST student)."""
    return _create("lenet5_half", pretrained, width=0.5, **kwargs)
