"""The timm-registered model zoo: published parameter counts, output shapes, normalization in pretrained_cfg."""
from __future__ import annotations

import copy
import functools
import re

import pytest
import timm
import torch
import torchvision

import dfkd.models  # noqa: F401  (registers the zoo)
from dfkd.models import cifar_resnet, wrn

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


# timm's model interface. Channels and reductions (total stride) of each ``features_only`` tap, written out
# so that a change of taps shows up; the CIFAR nets keep their maps at 32 / reduction pixels.
FEATURES = {
    "resnet18_cifar": ([64, 64, 128, 256, 512], [1, 1, 2, 4, 8]),
    "resnet34_cifar": ([64, 64, 128, 256, 512], [1, 1, 2, 4, 8]),
    "resnet50_cifar": ([64, 256, 512, 1024, 2048], [1, 1, 2, 4, 8]),
    "wrn_16_1": ([16, 16, 32, 64], [1, 1, 2, 4]), "wrn_16_2": ([16, 32, 64, 128], [1, 1, 2, 4]),
    "wrn_40_1": ([16, 16, 32, 64], [1, 1, 2, 4]), "wrn_40_2": ([16, 32, 64, 128], [1, 1, 2, 4]),
    "vgg11_bn_cifar": ([64, 128, 256, 512, 512], [1, 2, 4, 8, 8]),
    "vgg13_bn_cifar": ([64, 128, 256, 512, 512], [1, 2, 4, 8, 8]),
    "mobilenetv2_cifar": ([16, 24, 32, 96, 320], [1, 1, 2, 4, 8]),  # timm's mobilenetv2_100 taps, stem stride 1
    "lenet5": ([6, 16, 120], [1, 2, 4]), "lenet5_half": ([3, 8, 60], [1, 2, 4]), "lenet5_wide": ([27, 72, 540], [1, 2, 4]),
}
LENET_SIZES = [28, 10, 1]  # LeNet's unpadded 5x5 convs shrink its maps beyond the stride
FAMILIES = ["resnet18_cifar", "wrn_16_1", "vgg11_bn_cifar", "mobilenetv2_cifar", "lenet5"]


def test_every_registered_zoo_model_declares_its_features():
    registered = {n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("dfkd.")}
    assert registered == set(FEATURES)


def zoo_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """The same seeded batch on every call, with the model's channel count."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, model.pretrained_cfg["input_size"][0], 32, 32, generator=gen)


@pytest.mark.parametrize("name", list(FEATURES))
def test_features_only_returns_the_declared_channels_and_reductions(name):
    channels, reductions = FEATURES[name]
    torch.manual_seed(0)
    net = timm.create_model(name, features_only=True).eval()
    assert net.feature_info.channels() == channels and net.feature_info.reduction() == reductions
    with torch.no_grad():
        maps = net(zoo_input(net))
    sizes = LENET_SIZES if name.startswith("lenet") else [32 // r for r in reductions]
    assert [tuple(m.shape) for m in maps] == [(2, c, s, s) for c, s in zip(channels, sizes)]
    model, x = zoo_model(name, 10), zoo_input(net)  # same seed, same weights
    with torch.no_grad():
        if name.startswith("wrn_"):  # the last group's raw output (ZSKT's attention map), before the final BN-ReLU
            assert torch.equal(maps[-1], model.stages(model.conv1(x)))
            assert torch.equal(model.act(model.norm(maps[-1])), model.forward_features(x))
        elif name != "mobilenetv2_cifar":  # its deepest tap comes before the 1x1 conv head forward_features ends with
            assert torch.equal(maps[-1], model.forward_features(x))  # the deepest tap is the full model's feature map


@pytest.mark.parametrize("name", list(FEATURES))
def test_forward_is_forward_head_of_forward_features(name):
    model = zoo_model(name, 10)
    x = zoo_input(model)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model.forward_head(model.forward_features(x)), out)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, model.head_hidden_size)
    assert torch.equal(model.get_classifier()(pooled), out)


@pytest.mark.parametrize("name", FAMILIES)
def test_pretrained_cfg_names_the_first_conv_and_the_classifier(name):
    model = zoo_model(name, 10)
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == model.pretrained_cfg["input_size"][0]
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()


@pytest.mark.parametrize("name", FAMILIES)
def test_reset_classifier_changes_the_output_size(name):
    model = copy.deepcopy(zoo_model(name, 10))
    x = zoo_input(model)
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5) and model.num_classes == 5
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)  # timm's convention: no classifier, the pooled features come out
        assert isinstance(model.get_classifier(), torch.nn.Identity)
        assert torch.equal(model(x), pooled)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_family_builds_and_runs_with_in_chans(name, in_chans):
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=in_chans, num_classes=7).eval()
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == in_chans
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 7)


def dfad_resnet_names(key: str) -> str:
    """dfkd's ResNet key as DAFL/DFAD's resnet_8x.py names it."""
    return re.sub(r"^fc\.", "linear.", key.replace(".downsample.", ".shortcut."))


def cmi_wrn_names(key: str) -> str:
    """dfkd's WRN key as ZSKT/CMI's wresnet.py names it."""
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"block{int(m.group(1)) + 1}.layer.", key)
    return re.sub(r"^norm\.", "bn1.", key.replace(".shortcut.", ".convShortcut."))


@pytest.mark.parametrize("name, filter_fn, foreign_names, foreign_keys", [
    ("resnet18_cifar", cifar_resnet.checkpoint_filter_fn, dfad_resnet_names,
     ["linear.weight", "layer2.0.shortcut.0.weight", "layer4.0.shortcut.1.running_var"]),
    ("wrn_16_1", wrn.checkpoint_filter_fn, cmi_wrn_names,
     ["block1.layer.0.conv1.weight", "block3.layer.0.convShortcut.weight", "bn1.running_mean"]),
])
def test_checkpoint_with_foreign_names_loads_after_the_filter(name, filter_fn, foreign_names, foreign_keys):
    model = copy.deepcopy(zoo_model(name, 10))
    foreign = {foreign_names(k): v + 1 for k, v in model.state_dict().items()}  # shifted, so loading them shows
    assert set(foreign_keys) <= foreign.keys()
    model.load_state_dict(filter_fn(foreign, model))  # strict: every key found, none left over
    assert all(torch.equal(v, foreign[foreign_names(k)]) for k, v in model.state_dict().items())


def test_timm_pretrained_loading_applies_the_filter(tmp_path):
    own = zoo_model("wrn_16_1", 10).state_dict()
    torch.save({cmi_wrn_names(k): v + 1 for k, v in own.items()}, tmp_path / "cmi_wrn_16_1.pt")
    model = timm.create_model("wrn_16_1", pretrained=True,
                              pretrained_cfg_overlay={"file": str(tmp_path / "cmi_wrn_16_1.pt")})
    assert all(torch.equal(model.state_dict()[k], own[k] + 1) for k in own)


def test_filter_renames_only_into_keys_the_model_has():
    model = zoo_model("resnet18_cifar", 10)
    t = torch.zeros(1)
    state = {"linear.bias": t, "linear.extra": t, "layer1.0.conv1.weight": t}
    # ``fc.extra`` is no key of the model, so ``linear.extra`` stays as it was (and strict loading names it).
    assert list(cifar_resnet.checkpoint_filter_fn(state, model)) == ["fc.bias", "linear.extra", "layer1.0.conv1.weight"]


@pytest.mark.parametrize("mean,std", [([0.5], [0.5]), ([0.1307], [0.3081]), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
def test_generator_output_pixels_stays_in_the_range_of_real_images_and_standardized_does_not(mean, std):
    from dfkd.models import Generator

    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    torch.manual_seed(0)
    pixels = Generator(16, 4, 8, len(mean), mean, std).train()
    standardized = Generator(16, 4, 8, len(mean)).train()
    with torch.no_grad():
        for g in (pixels, standardized):
            g.net[-3].weight.mul_(100)  # the last convolution: drive the output to saturation
        drawn = pixels(torch.randn(64, 16)) * s + m
        dfad = standardized(torch.randn(64, 16))
    assert drawn.min() >= -1e-5 and drawn.max() <= 1 + 1e-5  # pixels, whatever the teacher's normalisation
    assert drawn.min() < 0.01 and drawn.max() > 0.99  # saturated both ways: the bound is the range itself
    # DFAD's output: every batch at mean 0 / std 1, i.e. the normalisation's mean and std in pixels
    assert torch.allclose(dfad.mean((0, 2, 3)), torch.zeros(len(mean)), atol=1e-4)
    assert torch.allclose(dfad.std((0, 2, 3), unbiased=False), torch.ones(len(mean)), atol=1e-3)
    # the pixel output keeps no state of its own: its weights have the DFAD generator's keys minus the last BatchNorm
    extra = set(standardized.state_dict()) - set(pixels.state_dict())
    assert set(pixels.state_dict()) < set(standardized.state_dict()) and all(k.startswith("net.11.") for k in extra)
