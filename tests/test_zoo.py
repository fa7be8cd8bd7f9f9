"""The timm-registered model zoo: published parameter counts, output shapes, normalization in pretrained_cfg."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
import torchvision

import dfkd.models  # noqa: F401  (registers the zoo)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def free_models():
    yield
    zoo_model.cache_clear()


@functools.lru_cache(maxsize=None)
def zoo_model(name: str, classes: int) -> torch.nn.Module:
    """Each network is built once per class count (initialising ResNet-50 is not free)."""
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=classes).eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_count_with_3x3_stem(name: str, **kwargs) -> int:
    """torchvision's ImageNet net has the same blocks; only its 7x7 stem (64 filters) differs from a 3x3 one."""
    return n_params(getattr(torchvision.models, name)(num_classes=10, **kwargs)) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3


@pytest.mark.parametrize("name, reference", [
    ("resnet18_cifar", "resnet18"), ("resnet34_cifar", "resnet34"), ("resnet50_cifar", "resnet50")])
def test_cifar_resnet_parameter_count_equals_torchvision_with_a_3x3_stem(name, reference):
    # An exact, independent count: same blocks, BN and fc as torchvision, only the stem conv differs.
    assert n_params(zoo_model(name, 10)) == torchvision_count_with_3x3_stem(reference)


def test_mobilenetv2_cifar_parameter_count_equals_torchvision():
    # Strides do not change parameter counts, so the 32x32 variant matches torchvision's exactly.
    assert n_params(zoo_model("mobilenetv2_cifar", 10)) == n_params(
        torchvision.models.mobilenet_v2(num_classes=10))


# Published counts at 10 classes, rounded as published (ResNet: 11.17 M / 21.28 M / 23.52 M, e.g. DAFL,
# DFAD; WRN: Zagoruyko & Komodakis, CRD/CMI tables; VGG-BN for CIFAR: 9.2 M / 9.4 M; LeNet-5: 61.7 k).
# The tolerance is half a unit of the last published digit: the count must round to the published number.
PUBLISHED = {
    "resnet18_cifar": (11.17e6, 0.005e6), "resnet34_cifar": (21.28e6, 0.005e6), "resnet50_cifar": (23.52e6, 0.005e6),
    "wrn_16_1": (0.18e6, 0.005e6), "wrn_16_2": (0.7e6, 0.05e6), "wrn_40_1": (0.6e6, 0.05e6),
    "wrn_40_2": (2.2e6, 0.05e6), "vgg11_bn_cifar": (9.2e6, 0.05e6), "vgg13_bn_cifar": (9.4e6, 0.05e6),
    "mobilenetv2_cifar": (2.24e6, 0.005e6), "lenet5": (61.7e3, 0.05e3),
}
# The exact counts, pinned so that an accidental architecture change shows up.
EXACT = {
    "resnet18_cifar": 11_173_962, "resnet34_cifar": 21_282_122, "resnet50_cifar": 23_520_842, "wrn_16_1": 175_066,
    "wrn_16_2": 691_674, "wrn_40_1": 563_930, "wrn_40_2": 2_243_546, "vgg11_bn_cifar": 9_231_114,
    "vgg13_bn_cifar": 9_416_010, "mobilenetv2_cifar": 2_236_682, "lenet5": 61_706,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_rounds_to_the_published_one(name):
    count = n_params(zoo_model(name, 10))
    published, tolerance = PUBLISHED[name]
    assert abs(count - published) <= tolerance, f"{name}: {count:,} vs published {published:,.0f}"
    assert count == EXACT[name]


def test_wrn_16_1_has_projection_skips_only_where_the_width_changes():
    model = zoo_model("wrn_16_1", 10)
    with_projection = [name for name, block in model.stages.named_children() if block[0].shortcut is not None]
    assert with_projection == ["1", "2"]  # stage 0 keeps 16 channels: identity skip, as in WRN's code


CIFAR_MODELS = ["resnet18_cifar", "resnet34_cifar", "resnet50_cifar", "wrn_16_1", "wrn_16_2", "wrn_40_1",
                "wrn_40_2", "vgg11_bn_cifar", "vgg13_bn_cifar", "mobilenetv2_cifar"]


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("classes", [10, 100])
def test_forward_shape_and_pretrained_cfg(name, classes):
    model = zoo_model(name, classes)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert tuple(cfg["mean"]) == CIFAR_MEAN and tuple(cfg["std"]) == CIFAR_STD
    assert model.num_classes == classes
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_zoo_is_listed_by_timm():
    for name in CIFAR_MODELS + ["lenet5", "lenet5_half"]:
        assert timm.is_model(name), name
