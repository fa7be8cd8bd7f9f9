"""A user's own teacher, as docs/own-teacher.md describes it: trained elsewhere, distilled with keys only.

``teachers/example_own_teacher.py`` plays the user: it trains a small timm BatchNorm network with
``in_chans=1`` on real MNIST with its own pipeline (28x28 resized bilinearly to 32x32, its own
mean/std), saves it as training scripts do (``torch.save({'epoch': n, 'state_dict': {'module.' + k: v}})``)
with a JSON card beside it, and writes the test split as an ImageFolder of 28x28 grayscale PNGs. dfkd
must measure that teacher exactly as the user's script did, refuse a wrong pipeline, and export a
student whose files give the student's accuracy from raw images.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfkd.artifacts import FILES, reload
from dfkd.commands import distill_command as distill
from dfkd.errors import DfkdError

ROOT = Path(__file__).resolve().parents[1]
ARCH = "test_efficientnet"  # timm's smallest BatchNorm CNN: trains on MNIST in seconds on a CPU
TEST_IMAGES = 2000  # the first 2,000 MNIST test images, as PNGs
pytestmark = pytest.mark.usefixtures("one_thread")


def example():
    spec = importlib.util.spec_from_file_location("example_own_teacher", ROOT / "teachers" / "example_own_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    """The user's teacher (checkpoint + card), trained on real MNIST, and their test split as PNGs."""
    root = tmp_path_factory.mktemp("user")
    try:  # 250 steps of 128: a quarter of an epoch, ~97 % test accuracy
        accuracy = example().make_teacher(root, ARCH, steps=250, test_images=TEST_IMAGES)
    except DfkdError as err:
        pytest.skip(f"needs real MNIST: {err}")
    return {"root": root, "checkpoint": root / "teacher.pt", "accuracy": accuracy, "mean": example().MEAN,
            "std": example().STD}


def keys(user: dict, tmp_path: Path, *extra: str) -> list:
    """The short path of docs/own-teacher.md, plus a tiny budget for the test."""
    return [f"teacher.name={ARCH}", f"teacher.checkpoint={user['checkpoint']}", f"data.root={user['root'] / 'test'}",
            "student.name=lenet5_half", "student_updates=10", "eval_every=5", "batch_size=32", "generator.ngf=8",
            f"out_dir={tmp_path}", "run_name=own", *extra]


def raw_png_batches(folder: Path, size: int):
    """What a deployment would do: read the PNGs, scale to 0-1, resize (bilinear) to the card's input size."""
    files = sorted(folder.glob("*/*.png"))
    for i in range(0, len(files), 500):
        chunk = files[i:i + 500]
        x = torch.stack([torch.from_numpy(np.array(Image.open(f))) for f in chunk]).unsqueeze(1)
        x = F.interpolate(x.float().div(255), size=(size, size), mode="bilinear", align_corners=False)
        yield x, torch.tensor([int(f.parent.name) for f in chunk])


def test_own_teacher_is_measured_as_its_own_script_measures_it_and_its_student_exports(user, tmp_path, capsys):
    assert user["accuracy"] > 80, "the user's teacher did not train"
    assert distill(keys(user, tmp_path, "export=true")) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "own"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(summary["teacher_acc"] - user["accuracy"]) <= 0.1, (summary["teacher_acc"], user["accuracy"])
    assert "from card teacher.json" in out and "warning" not in out

    card = json.loads((run_dir / "export" / "student.json").read_text())
    assert (card["input_size"], card["mean"], card["std"]) == ([1, 32, 32], [user["mean"]], [user["std"]])
    for fmt in ("onnx", "torchscript"):  # normalisation inside: raw 0-1 images in
        predict = reload(fmt, run_dir / "export" / FILES[fmt], card)
        correct = total = 0
        for x, y in raw_png_batches(user["root"] / "test", 32):
            correct += int((predict(x).argmax(1) == y).sum())
            total += len(y)
        assert total == TEST_IMAGES
        assert 100.0 * correct / total == pytest.approx(summary["student_best_acc"], abs=1e-9), fmt


def test_wrong_mean_std_stops_near_chance_naming_the_keys(user, tmp_path, capsys):
    assert distill(keys(user, tmp_path, "data.mean=[0.9]", "data.std=[0.01]")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dfkd: error: teacher {ARCH} scores ")
    for hint in ("near chance", "data.mean/data.std", "data.crop_pct", "data.channels", "data.classes",
                 "teacher.allow_near_chance=true"):
        assert hint in err[0], hint
    assert not (tmp_path / "own").exists(), "a refused run left a run directory behind"
    # the explicit key proceeds anyway
    assert distill(keys(user, tmp_path, "data.mean=[0.9]", "data.std=[0.01]", "teacher.allow_near_chance=true",
                        "student_updates=2", "eval_every=2")) == 0


def test_without_its_card_one_or_two_keys_give_the_same_teacher_accuracy(user, tmp_path):
    card = user["checkpoint"].with_suffix(".json")
    hidden = card.with_name("hidden.txt")
    card.rename(hidden)
    try:  # channels and classes come from the checkpoint; the user states mean/std and a plain resize
        args = keys(user, tmp_path, f"data.mean=[{user['mean']}]", f"data.std=[{user['std']}]", "data.image_size=32",
                    "data.crop_pct=1", "data.interpolation=bilinear", "student_updates=2", "eval_every=2")
        assert distill(args) == 0
    finally:
        hidden.rename(card)
    summary = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert abs(summary["teacher_acc"] - user["accuracy"]) <= 0.1


def test_card_accuracy_that_disagrees_is_reported(user, tmp_path, capsys):
    card = json.loads(user["checkpoint"].with_suffix(".json").read_text())
    other = tmp_path / "card.json"
    other.write_text(json.dumps({**card, "accuracy": 0.99}))
    assert distill(keys(user, tmp_path, f"teacher.card={other}", "student_updates=2", "eval_every=2")) == 0
    out = capsys.readouterr().out
    assert "its card card.json says 99.00%" in out
