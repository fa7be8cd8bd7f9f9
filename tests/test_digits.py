"""sklearn's digits, a second real dataset that needs no download: loader, split, teacher, distillation.

1,797 real 8x8 images of 10 digits (UCI, bundled with scikit-learn); dfkd's fixed split is the
first 1,197 images for training and the last 600 for testing. ~20 s in all, most of it two imports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfkd.config import load_config
from dfkd.data import LOADERS, tensor_dataset, to_model_input
from dfkd.errors import DfkdError
from dfkd.schema import DataConfig

pytest.importorskip("sklearn", reason="pip install -e '.[test]' (or '.[digits]') installs scikit-learn")

REPO = Path(__file__).resolve().parents[1]
CONTRACT = dict(dataset="digits", image_size=32, channels=1, num_classes=10, mean=[0.5], std=[0.5],
                interpolation="bilinear", crop_pct=1.0)


def test_digits_split_is_the_first_1197_images_for_training_and_the_last_600_for_testing():
    train_x, train_y = LOADERS["digits"](Path("unused"), True, False)
    test_x, test_y = LOADERS["digits"](Path("unused"), False, False)

    assert train_x.shape == (1197, 1, 8, 8) and test_x.shape == (600, 1, 8, 8)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert train_x.max() == 255 and train_x.min() == 0  # 0..16 scaled to the full 8-bit range
    assert train_y[:10].tolist() == list(range(10))  # sklearn's file order, unshuffled
    assert torch.equal(train_y.bincount(), torch.tensor([119, 120, 117, 121, 119, 123, 120, 118, 118, 122]))
    assert torch.equal(test_y.bincount(), torch.tensor([59, 62, 60, 62, 62, 59, 61, 61, 56, 58]))


def test_digits_are_resized_from_8_to_the_teachers_32_pixels():
    data = DataConfig(**CONTRACT)
    images, _ = LOADERS["digits"](Path("unused"), False, False)
    x = to_model_input(images[:4], data, normalize=False)

    assert x.shape == (4, 1, 32, 32)
    assert torch.allclose(x.mean((2, 3)), images[:4].float().div(255).mean((2, 3)), atol=0.02)  # same ink
    assert len(tensor_dataset(data, train=False)) == 600


def test_digits_without_scikit_learn_stop_with_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if it were not installed
    with pytest.raises(DfkdError, match=r"pip install scikit-learn") as err:
        LOADERS["digits"](Path("unused"), True, False)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    """LeNet-5 trained on the digits training split by teachers/train.py (20 epochs of 10 steps, ~5 s)."""
    out = tmp_path_factory.mktemp("teacher") / "lenet5_digits32.safetensors"
    subprocess.run([sys.executable, str(REPO / "teachers" / "train.py"), "model=lenet5", "dataset=digits",
                    "data.image_size=32", "data.channels=1", "epochs=20", f"out={out}"],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


def test_teacher_trained_on_digits_scores_far_above_chance_and_writes_its_card(digits_teacher):
    card = json.loads(digits_teacher.with_suffix(".json").read_text())

    assert card["dataset"] == "digits" and card["input_size"] == [1, 32, 32] and card["num_classes"] == 10
    assert card["test_accuracy"] >= 90.0, card  # 93.8-95.8 % over seeds 0-2; chance is 10 %


def test_distillation_from_the_digits_teacher_runs_and_writes_its_summary(digits_teacher, tmp_path, one_thread):
    from dfkd.trainer import distill

    cfg = load_config(["recipe=default", "teacher.name=lenet5", f"teacher.checkpoint={digits_teacher}",
                       "teacher.train_if_missing=false", "data.dataset=digits", "student_updates=30", "batch_size=32",
                       "eval_every=15", "checkpoint_every=0", "logger=none", f"out_dir={tmp_path}"])  # 2 cycles of 15
    summary = distill(cfg)

    written = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    card = json.loads(digits_teacher.with_suffix(".json").read_text())
    assert written["student_updates"] == 30
    assert written["teacher_acc"] == pytest.approx(card["test_accuracy"], abs=0.01)  # same 600 test images
    assert (cfg.data.image_size, cfg.data.channels) == (32, 1)  # from the card, not the dataset's 8x8
