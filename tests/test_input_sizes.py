"""The zoo takes any input size a teacher uses (native 28x28 digits, 64x64 images): LeNet-5 pads a smaller input,
centred, to 32x32 as LeCun did and averages the larger map of a larger one, and at 32x32 it is the original
network bit for bit. A student that cannot take the teacher's input stops the run before training, in one line
naming the zoo's students that can."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import PLAIN
from torch import nn

import dfkd.models  # noqa: F401  (registers the zoo)
from dfkd.checks import check_student_input
from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.features import Taps

pytestmark = pytest.mark.usefixtures("one_thread")

LENETS = ["lenet5", "lenet5_half", "lenet5_wide"]
ZOO = sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("dfkd."))


def lenet(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval()


def original_lenet(model: nn.Module) -> nn.Sequential:
    """LeNet-5 as dfkd built it for 32x32 input only (conv-ReLU-pool x2, conv-ReLU, flatten, fc1-ReLU, fc): a
    fresh stack of the same layer types, holding ``model``'s weights."""
    convs = [model.features[i] for i in (0, 3, 6)]
    (c0, c1, c2, c3), f1 = [convs[0].in_channels] + [c.out_channels for c in convs], model.fc1[1].out_features
    old = nn.Sequential(nn.Conv2d(c0, c1, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(c2, c3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(c3, f1), nn.ReLU(),
                        nn.Linear(f1, model.num_classes))
    for new, src in zip([old[0], old[3], old[6], old[9], old[11]], convs + [model.fc1[1], model.fc]):
        new.load_state_dict(src.state_dict())
    return old.eval()


def images(size: int, channels: int = 1) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize("name", LENETS)
def test_lenet_at_32x32_is_the_original_network_bit_for_bit(name):
    model, x = lenet(name), images(32)
    old = original_lenet(model)
    with torch.no_grad():
        assert torch.equal(model(x), old(x))
        assert torch.equal(model.forward_features(x), old[:8](x))
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), old[:11](x))


@pytest.mark.parametrize("name", LENETS)
@pytest.mark.parametrize("size, pad", [(28, (2, 2)), (27, (2, 3)), (20, (6, 6)), (16, (8, 8))])
def test_lenet_centres_a_smaller_input_in_a_zero_padded_32x32_field(name, size, pad):
    model, x = lenet(name), images(size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.equal(out, original_lenet(model)(F.pad(x, pad + pad)))


@pytest.mark.parametrize("name, size", [(n, s) for n in LENETS for s in (36, 64)] + [("lenet5", 224)])
def test_lenet_averages_the_larger_map_of_a_larger_input(name, size):
    model, x = lenet(name), images(size)
    old = original_lenet(model)
    with torch.no_grad():
        conv = old[:8](x)
        assert conv.shape[-1] > 1
        assert torch.equal(model(x), old[8:](conv.mean((2, 3), keepdim=True)))


@pytest.mark.parametrize("name", LENETS)
@pytest.mark.parametrize("size", [28, 32])
def test_lenet_features_pre_logits_and_taps_at_28_and_32(name, size):
    model, x = lenet(name), images(size)
    channels = [entry["num_chs"] for entry in model.feature_info]
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, features_only=True).eval()  # same seed, same weights
    taps = Taps(model, "student", stages=3, pre_logits=True)  # dfkd's attention-transfer and pre-logit hooks
    with torch.no_grad():
        maps = net(x)
        with taps.record():
            out = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert net.feature_info.channels() == channels and net.feature_info.reduction() == [1, 2, 4]
    assert [tuple(m.shape) for m in maps] == [(2, c, s, s) for c, s in zip(channels, (28, 10, 1))]
    assert torch.equal(maps[-1], model.forward_features(x))
    assert [tuple(m.shape) for m in taps.maps] == [tuple(m.shape) for m in maps]
    assert torch.equal(taps.pre_logits, pooled) and pooled.shape == (2, model.head_hidden_size)
    assert torch.equal(model.get_classifier()(pooled), out)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 64)], ids=["28x28 grey", "64x64 colour"])
def test_every_zoo_model_takes_28x28_grey_and_64x64_colour_images(name, channels, size):
    model = lenet(name, in_chans=channels)
    with torch.no_grad():
        out = model(images(size, channels))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def input_config(size: int, student: str):
    return load_config(["data.channels=1", f"data.image_size={size}", "data.num_classes=10", f"student.name={student}"])


def test_a_student_that_cannot_take_the_input_is_refused_naming_the_zoo_students_that_can():
    torch.manual_seed(0)
    student = timm.create_model("test_vit", num_classes=10, in_chans=1)  # 16-pixel patches: no 4x4 image
    rng = torch.get_rng_state()
    with pytest.raises(DfkdError) as err:
        check_student_input(input_config(4, "test_vit"), student)
    fits = [n for n in ZOO if not n.startswith("vgg")]  # the CIFAR VGGs max-pool 4x4 to nothing
    assert str(err.value) == ("student test_vit cannot take 1x4x4 input (AssertionError: Input height (4) should be "
                              "divisible by patch size (16).); students that fit: " + ", ".join(fits))
    assert "lenet5_half" in fits and student.training and torch.equal(torch.get_rng_state(), rng)


def test_a_student_that_takes_the_input_passes_in_the_mode_it_was_in():
    student = timm.create_model("resnet18_cifar", num_classes=10, in_chans=1)  # BatchNorm: checked in eval mode
    rng = torch.get_rng_state()
    check_student_input(input_config(28, "resnet18_cifar"), student)
    assert student.training and torch.equal(torch.get_rng_state(), rng)


@pytest.mark.usefixtures("mnist_teacher")
def test_a_short_distillation_on_native_28x28_digits(tmp_path):
    """The cached LeNet-5 teacher and the default LeNet-5-half student at MNIST's own 28x28, no resize."""
    from dfkd.trainer import distill

    cfg = load_config([*PLAIN, "data.image_size=28", "student_updates=20", "eval_every=10", "batch_size=16",
                       "checkpoint_every=0", "logger=none", f"out_dir={tmp_path}", "run_name=r"])
    summary = distill(cfg)
    assert cfg.data.image_size == 28 and summary["student_updates"] == 20
    assert summary["teacher_acc"] > 90  # digits centred in a 32x32 field, as the teacher saw them resized
    assert 0 <= summary["student_final_acc"] <= 100 and (tmp_path / "r" / "samples.png").is_file()
