"""LeNet-5, LeNet-5-half and LeNet-5-wide for grey images of any size: the MNIST teacher/student pair of DFAD.

Registered in timm, so ``timm.create_model("lenet5", num_classes=10)`` builds one and its
``pretrained_cfg`` carries the input size (32x32) and the MNIST normalization.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from dfkd.models.cifar_resnet import PooledClassifier

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
NATIVE = 32  # the input LeNet-5 was designed for: its third 5x5 conv then ends in a 1x1 map


class CentrePad(nn.Module):
    """Zero-pads height and width up to ``size``, centred (LeCun's 28x28 digits in a 32x32 field); larger
    inputs pass unchanged. Zero is the data's mean once normalised, as the convolutions' own padding is."""

    def __init__(self, size: int = NATIVE):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h >= self.size and w >= self.size:
            return x
        dh, dw = max(0, self.size - h), max(0, self.size - w)
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class LeNet5(PooledClassifier):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; ``width`` scales every layer.

    Any input size works, the way LeCun fed 28x28 digits: a smaller input is first zero-padded, centred, to
    32x32 (``pad``, a module so timm's ``features_only`` applies it too), and ``features`` ends in a 1x1 map;
    a larger one leaves a bigger map, which the head averages to 1x1 (timm's global pooling). At 32x32 the
    network is the original one, bit for bit. The head is ``fc1`` (flatten, linear, ReLU: the pre-logits) and
    the classifier ``fc``. ``forward`` and ``get_classifier`` are the zoo's shared ones; the head and
    ``reset_classifier`` are LeNet's own.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: float = 1.0, **_):
        super().__init__()
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.num_classes, self.num_features, self.head_hidden_size = num_classes, c3, f1
        self.pad = CentrePad(NATIVE)  # before ``features``: timm's FeatureListNet runs the children in this order
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 5), nn.ReLU(inplace=True),
        )
        # One tap per conv, after its ReLU (before the pool, as timm's VGG). Reduction is the stride; the
        # unpadded 5x5 convs shrink the maps further (28, 10 and 1 pixels at 32x32 input and below).
        self.feature_info = [{"num_chs": c, "reduction": r, "module": f"features.{i}"}
                             for c, r, i in ((c1, 1, 1), (c2, 2, 4), (c3, 4, 7))]
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(c3, f1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(f1, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The third conv's ``num_features`` x 1 x 1 map (at 32x32 input or smaller; larger: a bigger map)."""
        return self.features(self.pad(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pooling of a map larger than 1x1, ``fc1``, then the classifier; ``pre_logits`` returns
        ``fc1``'s ``head_hidden_size`` features."""
        if x.shape[-2:] != (1, 1):  # inputs above 32x32; at 32 the map is 1x1 and is left as it is
            x = F.adaptive_avg_pool2d(x, 1)
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


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in ("lenet5", "lenet5_half", "lenet5_wide")})


def _create(variant: str, pretrained: bool, width: float, **kwargs) -> LeNet5:
    kwargs.setdefault("in_chans", 1)
    # Three taps in the ``features`` Sequential: timm's FeatureListNet reaches them once it is flattened.
    return build_model_with_cfg(LeNet5, variant, pretrained, width=width,
                                feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2)}, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5, 61.7k parameters at 10 classes (DFAD's MNIST teacher)."""
    return _create("lenet5", pretrained, **{"width": 1.0, **kwargs})  # student.kwargs.width= overrides


@register_model
def lenet5_half(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 with every layer at half width (DFAD's MNIST student)."""
    return _create("lenet5_half", pretrained, **{"width": 0.5, **kwargs})  # student.kwargs.width= overrides


@register_model
def lenet5_wide(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 with every layer at 4.5x width: 1.23M parameters, 20x LeNet-5 (a wide, normalisation-free teacher)."""
    return _create("lenet5_wide", pretrained, **{"width": 4.5, **kwargs})  # student.kwargs.width= overrides
