"""Every user mistake gives one line ``dfkd: error: ...`` and exit code 2, never a traceback.

The table below is also docs/troubleshooting.md (tests/test_docs.py checks that every case has a row).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEACHER
from safetensors.torch import save_file

from dfkd.distill import main
from dfkd.weights import create_model

REPO = Path(__file__).resolve().parents[1]
needs_teacher = pytest.mark.usefixtures("mnist_teacher")  # trains/caches it first (conftest)


class WritesAFile:
    """A pickle that, if ever unpickled, creates ``path``: proves .pt files are read with weights_only=True."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def make_files(tmp: Path) -> dict:
    """The bad files the table points at, made fresh in ``tmp``."""
    (tmp / "corrupt.safetensors").write_bytes(os.urandom(4096))
    if TEACHER.is_file():
        data = TEACHER.read_bytes()
        (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("lenet5_half", "wrn_16_1"):  # weights of another architecture; a CIFAR net with BatchNorm
        other = create_model(name, 10)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    torch.save({"conv1.weight": torch.zeros(1), "payload": WritesAFile(str(tmp / "pwned"))}, tmp / "pickled.pt")
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "empty_folder").mkdir()
    (tmp / "not_images" / "0").mkdir(parents=True)
    (tmp / "not_images" / "0" / "notes.txt").write_text("not an image\n")
    (tmp / "corrupt_images" / "0").mkdir(parents=True)
    (tmp / "corrupt_images" / "0" / "broken.png").write_bytes(os.urandom(512))
    return {"TMP": str(tmp)}


# (arguments, fragment of the one-line message); {TMP} is the test's temporary folder
CASES = {
    "unknown recipe": (["recipe=cifar10_rn34"], "unknown recipe 'cifar10_rn34'; available: "),
    "not key=value": (["scheme"], "argument 'scheme' is not key=value"),
    "misspelt key": (["student.lrr=0.01"], "unknown key 'student.lrr' in the command line; did you mean 'student.lr'?"),
    "misspelt top-level key": (["student_update=10"], "did you mean 'student_updates'?"),
    "wrong type": (["batch_size=abc"], "bad value for 'batch_size'"),
    "negative lr": (["student.lr=-0.1"], "student.lr must be > 0, got -0.1"),
    "batch 0": (["batch_size=0"], "batch_size must be >= 2"),
    "k < 1": (["scheme=two_stage", "k=0"], "k must be >= 1, got 0"),
    "unknown scheme": (["scheme=three_stage"], "scheme 'three_stage' is not one of two_stage, one_stage, hybrid"),
    "negative checkpoint_every": (["checkpoint_every=-5"], "checkpoint_every must be >= 0"),
    "EMA decay of 1": (["student.ema=1"], "student.ema must be in [0, 1) (0: off), got 1.0"),
    "class-count mismatch": (["data.num_classes=100"], "has 10 classes, lenet5 was built with 100"),
    "input size mismatch": (["data.image_size=28"], "teacher lenet5 cannot take generated images of shape (1, 28, 28)"),
    "channel mismatch": (["data.channels=3"], "takes 1-channel images, lenet5 was built for 3: set data.channels=1"),
    "teacher near chance (wrong mean/std)": (["data.mean=[0.5]", "data.std=[1000]"], "near chance"),
    "infinite value": (["student.lr=inf"], "student.lr must be a finite number, got inf"),
    "mean/std of another channel count": (["data.mean=[0.1,0.2]"], "data.mean has 2 values for a 1-channel teacher"),
    "unknown interpolation": (["data.interpolation=lanczos"], "bad value for 'data.interpolation' in the command "
                              "line: Invalid value 'lanczos', expected one of [bilinear, bicubic, nearest]"),
    "unknown choice": (["lr_schedule=linear"], "Invalid value 'linear', expected one of [cosine, step, constant]"),
    "missing teacher card": (["teacher.card={TMP}/nope.json"], "teacher.card '{TMP}/nope.json' not found"),
    "empty ImageFolder": (["data.dataset=imagefolder", "data.root={TMP}/empty_folder"], "holds no class sub-folders"),
    "ImageFolder without images": (["data.dataset=imagefolder", "data.root={TMP}/not_images"],
                                   "holds no image files"),
    "ImageFolder with a corrupt image": (["data.dataset=imagefolder", "data.root={TMP}/corrupt_images"],
                                         "cannot read image '{TMP}/corrupt_images/0/broken.png'"),
    "student input mismatch": (["student.name=vit_tiny_patch16_224"],
                               "student vit_tiny_patch16_224 cannot take generated images of shape (1, 32, 32)"),
    "per-sample loss with a BatchNorm student": (["teacher.name=wrn_16_1", "teacher.checkpoint={TMP}/wrn_16_1.safetensors",
                                                   "student.name=wrn_16_1", "data.channels=3", "loss=l1_log_sample"],
                                                  "wrn_16_1 has train-mode BatchNorm"),
    "checkpoint named on the command line is missing (not trained instead)": (
        ["teacher.checkpoint={TMP}/absent.safetensors"], "checkpoint '{TMP}/absent.safetensors' not found"),
    "missing checkpoint": (["teacher.checkpoint={TMP}/nope.safetensors", "teacher.train_if_missing=false"],
                           "checkpoint '{TMP}/nope.safetensors' not found"),
    "corrupt checkpoint": (["teacher.checkpoint={TMP}/corrupt.safetensors"], "cannot be read"),
    "truncated checkpoint": (["teacher.checkpoint={TMP}/truncated.safetensors"], "cannot be read"),
    "pickled object in .pt": (["teacher.checkpoint={TMP}/pickled.pt"], "cannot be read (UnpicklingError"),
    "checkpoint of another architecture": (["teacher.checkpoint={TMP}/lenet5_half.safetensors"],
                                           "does not fit lenet5"),
    "missing resume checkpoint": (["resume={TMP}/runs/x/checkpoints/step_000100"], "resume checkpoint"),
    "unwritable out_dir": (["out_dir={TMP}/a_file/runs"], "cannot write the run directory"),
    "dataset root missing": (["data.root={TMP}/no_data", "data.download=false"], "MNIST not found under"),
    "unknown method": (["method=dfkq"], "method 'dfkq' is not one of dfad, dafl, zskt, dfq, cmi, mad"),
    "DFQ on a teacher without BatchNorm": (["method=dfq"], "priors.bn needs BatchNorm layers in the teacher"),
    "attention transfer that never reaches the student": (["method=zskt", "scheme=one_stage", "pool.size=0"],
                                                          "features.at would never reach the student"),
    "contrastive prior without a pool": (["method=cmi", "pool.size=0"],
                                         "priors.cmi reads past images kept in the replay pool"),
    "generator EMA without a generated student batch": (["method=mad"], "generator.ema mixes its images into "
                                                                        "freshly generated student batches"),
    "generator with nothing to learn": (["adversarial=0", "priors.ie=0"],
                                        "adversarial=0 leaves the generator nothing to learn"),
}


@needs_teacher
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(case, tmp_path, capsys):
    args, fragment = CASES[case]
    subs = make_files(tmp_path)
    tiny = [f"out_dir={tmp_path}/runs", "student_updates=2", "batch_size=4", "generator.ngf=4", "logger=none"]
    code = main(tiny + [a.format(**subs) for a in args])  # the case's own values come last and win
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{case}: exit code {code}"
    assert err and err[-1].startswith("dfkd: error: "), err
    assert fragment.format(**subs) in err[-1], err[-1]
    assert not (tmp_path / "pwned").exists(), "a .pt file was unpickled with code execution"
    assert not (tmp_path / "runs").exists(), "a refused run left a run directory behind"


def test_command_line_error_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, str(REPO / "dfkd" / "distill.py"), "student.lrr=0.01"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("dfkd: error: unknown key 'student.lrr' in the command line; "
                                   "did you mean 'student.lr'?")
    assert "Traceback" not in proc.stdout + proc.stderr
