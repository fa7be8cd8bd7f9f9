"""Every user mistake gives one line ``dfkd: error: ...`` and exit code 2, never a traceback.

The table below is also docs/troubleshooting.md (tests/test_docs.py checks that every case has a row).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from conftest import TEACHER
from safetensors.torch import save_file

from dfkd.commands import distill_command as main
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
    # weights of another architecture; a CIFAR net with BatchNorm; a grey ViT of 16-pixel patches (no 28x28 input)
    for name, chans in (("lenet5_half", 1), ("wrn_16_1", 3), ("test_vit2", 1)):
        other = create_model(name, 10, in_chans=chans)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    torch.save({"conv1.weight": torch.zeros(1), "payload": WritesAFile(str(tmp / "pwned"))}, tmp / "pickled.pt")
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "empty_folder").mkdir()
    (tmp / "not_images" / "0").mkdir(parents=True)
    (tmp / "not_images" / "0" / "notes.txt").write_text("not an image\n")
    (tmp / "flat_notes").mkdir()
    (tmp / "flat_notes" / "notes.txt").write_text("not an image\n")
    (tmp / "corrupt_images" / "0").mkdir(parents=True)
    (tmp / "corrupt_images" / "0" / "broken.png").write_bytes(os.urandom(512))
    for name, change in CARD_CHANGES.items():  # the default teacher's card, one value wrong
        (tmp / f"card_{name}.json").write_text(json.dumps({**CARD, **change}))
    if TEACHER.is_file():  # a checkpoint with a card beside it that is not JSON
        (tmp / "beside").mkdir()
        shutil.copy(TEACHER, tmp / "beside" / "teacher.safetensors")
        (tmp / "beside" / "teacher.json").write_text('{"mean": [0.1307], "std": [0.3081],}\n')
    return {"TMP": str(tmp)}


CARD = {"architecture": "lenet5", "num_classes": 10, "mean": [0.1307], "std": [0.3081], "input_size": [1, 32, 32],
        "interpolation": "bilinear", "crop_pct": 1.0}
CARD_CHANGES = {"std": {"std": "abc"}, "crop": {"crop_pct": 0}, "accuracy": {"test_accuracy": "high"},
                "size": {"input_size": "big"}}


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
    "input size mismatch": (["teacher.name=test_vit2", "teacher.checkpoint={TMP}/test_vit2.safetensors",
                             "data.image_size=28"], "teacher test_vit2 cannot take generated images of shape (1, 28, 28)"),
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
    "empty unlabelled folder": (["data.dataset=unlabelled", "data.root={TMP}/empty_folder"],
                                "data.dataset=unlabelled reads the images directly inside it"),
    "unlabelled folder of non-images": (["data.dataset=unlabelled", "data.root={TMP}/flat_notes"],
                                        "data.dataset=unlabelled reads the images directly inside it"),
    "unlabelled folder with a corrupt image": (["data.dataset=unlabelled", "data.root={TMP}/corrupt_images/0"],
                                               "cannot read image '{TMP}/corrupt_images/0/broken.png'"),
    "no labelled data and an incomplete input contract": (
        ["data.dataset=none", "teacher.name=dfkd.models.lenet:LeNet5", "teacher.checkpoint=null"],
        "the teacher's input is unknown (data.image_size, data.mean, data.std)"),
    "student input mismatch": (["student.name=vit_tiny_patch16_224"],
                               "student vit_tiny_patch16_224 cannot take 1x32x32 input ("),
    "student that cannot take the teacher's 28x28 input": (  # the zoo's students that do, all of them here
        ["student.name=test_vit", "data.image_size=28"],
        "students that fit: lenet5, lenet5_half, lenet5_wide, mobilenetv2_cifar, resnet18_cifar, resnet34_cifar, "
        "resnet50_cifar, vgg11_bn_cifar, vgg13_bn_cifar, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2"),
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
    "intensity jitter without a student-only step": (["student.augment=intensity", "scheme=one_stage", "pool.size=0"],
                                                     "student.augment jitters the images of the student-only steps"),
    "generator with nothing to learn": (["adversarial=0", "priors.ie=0"],
                                        "adversarial=0 leaves the generator nothing to learn"),
    "unbalanced brackets": (["data.mean=[0.1"], "argument 'data.mean=[0.1' does not parse: brackets and quotes must "
                                                "balance"),
    "negative seed": (["seed=-1"], "seed must be in [0, 2**32 - 1] (numpy's seed range), got -1"),
    "seed past numpy's range": (["seed=4294967296"], "seed must be in [0, 2**32 - 1] (numpy's seed range), got "
                                                     "4294967296"),
    "card value of the wrong type": (["teacher.card={TMP}/card_std.json"], "std is 'abc', not a number; fix the card"),
    "card size of the wrong type": (["teacher.card={TMP}/card_size.json"],
                                    "input_size is 'big', not a number; fix the card"),
    "card accuracy of the wrong type": (["teacher.card={TMP}/card_accuracy.json"],
                                        "test accuracy is 'high', not a number; fix the card"),
    "card value out of range": (["teacher.card={TMP}/card_crop.json"],
                                "data.crop_pct must be in (0, 1], got 0.0 (from card"),
    "card beside the checkpoint that is not JSON": (["teacher.checkpoint={TMP}/beside/teacher.safetensors"],
                                                    "teacher card '{TMP}/beside/teacher.json' cannot be read as JSON"),
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


# A wrong input pipeline above the near-chance bar: the run goes on, saying so loudly, and summary.json keeps it.
WRONG_CARD = {**CARD, "mean": [0.9], "std": [0.5]}  # and no accuracy stated: nothing to compare the score with


@needs_teacher
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("card", [None, WRONG_CARD], ids=["default teacher", "card with a wrong mean and std"])
def test_a_teacher_far_below_a_trained_one_is_warned_about_and_flagged(card, tmp_path, capsys):
    args = [f"out_dir={tmp_path}", "run_name=r", "student_updates=2", "batch_size=4", "generator.ngf=4",
            "logger=none", "pool.size=0", "checkpoint_every=0"]
    if card:
        (tmp_path / "card.json").write_text(json.dumps(card))
        args.append(f"teacher.card={tmp_path / 'card.json'}")
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dfkd] warning: teacher")]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    if card is None:
        assert summary["teacher_warning"] is None and warnings == [] and summary["teacher_acc"] > 95
        return
    assert 20 <= summary["teacher_acc"] < 55, "the wrong mean/std no longer lands between the two bars"
    assert warnings == [f"[dfkd] warning: {summary['teacher_warning']}"]
    for hint in (f"scores {summary['teacher_acc']:.2f}% on mnist test split: below 55%", "collapse onto few classes",
                 "data.mean/data.std (now [0.9]/[0.5])", "data.crop_pct", "data.interpolation", "data.channels",
                 "data.classes", "correct its card card.json"):
        assert hint in warnings[0], hint


def confusion(pairs: Dict[Tuple[int, int], int]) -> torch.Tensor:
    """A 10-class confusion matrix: (label, prediction) -> count."""
    counts = torch.zeros(10, 10, dtype=torch.long)
    for (label, predicted), n in pairs.items():
        counts[label, predicted] = n
    return counts


@pytest.mark.parametrize("pairs, signs", [
    ({(c, c): 100 for c in range(10)}, []),
    ({(c, c if c < 2 else 0): 100 for c in range(10)}, ["below 55%", "collapse onto few classes"]),
    ({(c, c): 100 for c in range(2)}, []),  # a two-class subset of the teacher's classes, all right: no collapse
    ({**{(c, c): 40 for c in range(10)}, **{(c, (c + 1) % 10): 60 for c in range(10)}}, ["below 55%"]),
], ids=["trained", "collapsed and low", "subset of classes", "low, not collapsed"])
def test_the_weak_teacher_rule_reads_accuracy_and_the_spread_of_predictions(pairs, signs):
    from dfkd.build import check_teacher
    from dfkd.config import load_config
    from dfkd.contract import Contract

    cfg = load_config(["data.mean=[0.9]", "data.std=[0.5]", "data.num_classes=10"])
    counts = confusion(pairs)
    acc = 100.0 * counts.trace().item() / counts.sum().item()
    printed = []
    warning = check_teacher(cfg, acc, Contract(), printed.append, counts)
    assert [s for s in ("below 55%", "collapse onto few classes") if s in (warning or "")] == signs
    assert printed == ([f"[dfkd] warning: {warning}"] if signs else [])


def test_a_checkpoint_folder_without_its_complete_marker_is_removed_and_never_resumed(tmp_path):
    """Pruning removes ``complete`` first: a crash half-way leaves a folder that looks newest but is not whole."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from dfkd.checkpoint import COMPLETE, prepare_run_dir, resume_candidates
    from dfkd.config import load_config

    cfg = load_config([])
    folder = tmp_path / "run" / "checkpoints"
    for step in ("step_000100", "step_000200"):
        (folder / step).mkdir(parents=True)
        (folder / step / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        (folder / step / "model.safetensors").write_bytes(b"weights")
    (folder / "step_000100" / COMPLETE).write_text('{"files": {}}\n')  # step_000200's pruning was cut short
    assert resume_candidates(cfg, tmp_path / "run") == [folder / "step_000100"]
    one_process = SimpleNamespace(is_main_process=True, print=print, wait_for_everyone=lambda: None)
    prepare_run_dir(one_process, tmp_path / "run", fresh=False)
    assert sorted(p.name for p in folder.iterdir()) == ["step_000100"]
