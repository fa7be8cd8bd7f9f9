"""WIRING test of every recipe: it loads and validates, its teacher/student/generator build and fit together,
two training cycles run and an evaluation forward runs, at batch size 2 on CPU, with a randomly
initialised teacher. Accuracy means nothing here; the CIFAR recipes evaluate on the 20 real CIFAR test
images (foolbox wheel) when available so that decoding, normalization and label order are exercised."""
from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
from cifar_samples import cifar_samples  # tests/cifar_samples.py
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import dfkd.build
import dfkd.trainer
from dfkd.config import available_recipes, load_config
from dfkd.contract import resolve
from dfkd.data import to_model_input
from dfkd.weights import create_model

RECIPES = [r for r in available_recipes() if r != "default"]
# Smaller than 224x224 so that the ImageNet recipe's wiring test stays a few seconds on a CPU.
OVERRIDES = {"imagenet_resnet50_to_resnet18": ["data.image_size=64"]}
CHEAP_FIDELITY = ["data.fidelity_images=16", "data.fidelity_steps=0"]  # a random teacher: no probe worth training


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_published_pair_has_a_recipe():
    assert set(RECIPES) >= {"resnet34_to_resnet18", "resnet34_to_resnet18_cifar100", "wrn40_2_to_wrn16_1",
                            "vgg11_to_resnet18", "lenet5_to_lenet5half", "imagenet_resnet50_to_resnet18"}


def test_dfad_cifar_recipe_has_the_published_budget():
    cfg = load_config(["recipe=resnet34_to_resnet18"])
    assert (cfg.batch_size, cfg.generator.nz, cfg.k, cfg.scheme) == (256, 256, 5, "two_stage")
    assert (cfg.student.lr, cfg.student.momentum, cfg.student.weight_decay, cfg.generator.lr) == (0.1, 0.9, 5e-4, 1e-3)
    assert cfg.student_updates == 500 * 50 * 5  # DFAD: 500 epochs x 50 iterations x k=5
    assert (cfg.lr_schedule, cfg.lr_milestones, cfg.lr_gamma) == ("step", [0.2, 0.4], 0.1)  # epochs 100, 200 of 500


def eval_tensors(cfg):
    """The 20 real CIFAR test images for CIFAR recipes when available, else generated images and labels."""
    if cfg.data.dataset in ("cifar10", "cifar100"):
        try:
            real = cifar_samples(cfg.data.dataset, cfg.data.root, fetch=True)
        except Exception as err:  # no pip index reachable
            real = None
            warnings.warn(f"{cfg.recipe}: evaluating on generated tensors, foolbox CIFAR images unavailable ({err})",
                          stacklevel=2)
        if real is not None:
            return to_model_input(real[0], cfg.data), real[1], "real"
    g = torch.Generator().manual_seed(0)
    size, channels = cfg.data.image_size, cfg.data.channels
    return torch.randn(6, channels, size, size, generator=g), torch.randint(cfg.data.num_classes, (6,), generator=g), "generated"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_wiring_two_cycles_and_an_eval_forward(recipe, tmp_path, monkeypatch):
    cfg = load_config([f"recipe={recipe}"] + OVERRIDES.get(recipe, []))
    resolve(cfg)
    torch.manual_seed(0)
    random_teacher = tmp_path / "teacher.safetensors"  # random weights, loaded the way a user's would be
    save_file(create_model(cfg.teacher.name, cfg.data.num_classes, in_chans=cfg.data.channels).state_dict(),
              str(random_teacher))

    seen = {}

    def wiring_loader(data, normalize=True, given=None):
        x, y, kind = eval_tensors(cfg)
        seen.update(kind=kind, n=len(y), mean=tuple(data.mean))
        return DataLoader(TensorDataset(x, y), batch_size=data.eval_batch_size)

    monkeypatch.setattr(dfkd.build, "evaluation_loader", wiring_loader)
    # k=1: two cycles of one student and one generator update (the recipe's k only repeats the student step).
    # A random teacher scores near chance by design: allow_near_chance lets the wiring run.
    cfg = load_config([f"recipe={recipe}", *OVERRIDES.get(recipe, []), "batch_size=2", "k=1", "student_updates=2",
                       f"teacher.checkpoint={random_teacher}", "teacher.pretrained=false",
                       "teacher.train_if_missing=false", "teacher.allow_near_chance=true", f"out_dir={tmp_path}",
                       "run_name=wiring", "log_every=1", *CHEAP_FIDELITY])
    summary = dfkd.trainer.distill(cfg)

    assert summary["student_updates"] == 2
    assert 0 <= summary["teacher_acc"] <= 100 and 0 <= summary["student_final_acc"] <= 100
    if seen["kind"] == "real":  # 20 images: every accuracy is a multiple of 5 %
        assert seen["n"] == 20 and summary["teacher_acc"] % 5 == 0
    assert seen["mean"] == tuple(timm.models.get_pretrained_cfg_value(cfg.teacher.name, "mean"))
    records = [json.loads(line) for line in (tmp_path / "wiring" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss_s"])) for r in records if "loss_s" in r)
    assert (tmp_path / "wiring" / "student.safetensors").is_file()
