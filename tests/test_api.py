"""Any PyTorch model is a teacher: the Python API (``dfkd.distill``) on a model class of the user's own code, a
torchvision model, and, from the command line, a model of the user's package (``pkg.module:callable``) or one
self-contained file (torch.export ``.pt2``, TorchScript). Real data: sklearn's digits at 16x16."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import dfkd
from dfkd.cli import main

pytest.importorskip("sklearn", reason="pip install -e '.[test]' installs scikit-learn")
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SIZE, MEAN, STD = 16, 0.3, 0.4
TINY = ["student_updates=60", "batch_size=32", "eval_every=30", "checkpoint_every=0", "pool.size=0",
        "student.ema=0", "generator.ngf=4"]


class DigitsNet(nn.Module):
    """A model of the user's own code: no timm, no registry, no card."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_student(width: int = 4) -> nn.Module:
    """An import-path student: ``student.name=test_api:build_student``."""
    return DigitsNet(width)


def digits(train: bool) -> tuple:
    """sklearn's digits as dfkd splits them (first 1,197 train, last 600 test), 0-1 pixels at 16x16, as dfkd's
    digits loader resizes them (bilinear, no antialias when growing)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().mul(255 / 16).round().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    part = slice(None, 1197) if train else slice(1197, None)
    return x[part].contiguous(), torch.from_numpy(d.target)[part]


class DigitsTest(Dataset):
    """The user's labelled test set: (0-1 float CHW tensor, label) pairs."""

    def __init__(self):
        self.x, self.y = digits(train=False)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def accuracy(model: nn.Module) -> float:
    x, y = digits(train=False)
    with torch.no_grad():
        return 100.0 * (model.eval()((x - MEAN) / STD).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    """DigitsNet trained for a few seconds on the digits training split (about 95 % on the test split)."""
    torch.manual_seed(0)
    model, (x, y) = DigitsNet(), digits(train=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(y), (128,))
        loss = F.cross_entropy(model((x[idx] - MEAN) / STD), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(model) > 85
    return model.eval()


def test_a_model_of_the_users_code_distils_through_the_python_api(teacher, tmp_path):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = dfkd.distill(teacher=teacher, student=DigitsNet(width=4), input_size=(1, SIZE, SIZE), mean=(MEAN,),
                          std=(STD,), eval_data=DigitsTest(), overrides=[*TINY, f"out_dir={tmp_path}"])

    assert abs(result.summary["teacher_acc"] - accuracy(teacher)) <= 0.5
    assert abs(accuracy(result.student) - result.summary["student_final_acc"]) <= 0.5
    assert not result.student.training and next(result.student.parameters()).device.type == "cpu"
    assert result.run_dir == tmp_path / result.run_dir.name and (result.run_dir / "summary.json").is_file()
    assert result.summary["teacher"] == "<module DigitsNet>" and result.summary["student_updates"] == 60
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the caller's model untouched
    assert teacher.head.weight.requires_grad

    with pytest.raises(dfkd.DfkdError, match="was a module given to dfkd.distill: pass that module again"):
        dfkd.export(result.run_dir, formats=["onnx"])  # the run cannot rebuild a module of the caller's code
    out = dfkd.export(result.run_dir, formats=["safetensors", "onnx"], student=DigitsNet(width=4), which="final")
    card = json.loads((out / "student.json").read_text())
    assert card["parity"]["onnx"]["top1_agreement"] == 1.0 and card["params"] == result.summary["student_params"]
    assert card["teacher"]["name"] == "<module DigitsNet>" and card["timm_load"] is None


def test_the_compare_tool_is_callable_from_python(mnist_teacher, tmp_path):
    out = dfkd.compare("recipe=default_v01", "schemes=[one_stage]", "seeds=1", "warmup=0", "budget=updates:4",
                       "batch_size=8", "eval_every=2", "checkpoint_every=0", "generator.ngf=4", f"out={tmp_path}/c")
    assert (out / "results.md").is_file() and (out / "runs.jsonl.gz").is_file()


def test_a_torchvision_model_is_a_teacher(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    result = dfkd.distill(model, "lenet5_half", input_size=(1, 32, 32), mean=(0.5,), std=(0.5,),
                          overrides=["data.dataset=digits", "teacher.allow_near_chance=true", "student_updates=5",
                                     "data.fidelity_images=16", "data.fidelity_steps=0",
                                     "batch_size=8", "eval_every=4", "checkpoint_every=0", "pool.size=0",
                                     "generator.ngf=4", f"out_dir={tmp_path}"])
    assert result.summary["student_updates"] == 5 and result.summary["teacher"] == "<module ResNet>"
    assert "priors.bn=null: 1 (on: it has 20 BatchNorm layers" in capsys.readouterr().out


def export_files(teacher: nn.Module, folder: Path) -> dict:
    x = torch.rand(4, 1, SIZE, SIZE)
    program = torch.export.export(teacher, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    files = {"pt2": folder / "teacher.pt2", "torchscript": folder / "teacher.ts"}
    torch.export.save(program, str(files["pt2"]))
    torch.jit.save(torch.jit.trace(teacher, x), str(files["torchscript"]))
    return files


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_a_program_file_is_a_teacher_from_the_command_line(teacher, tmp_path, fmt, capsys):
    file = export_files(teacher, tmp_path)[fmt]
    argv = ["distill", f"teacher.checkpoint={file}", "data.dataset=digits", f"data.mean=[{MEAN}]", f"data.std=[{STD}]",
            "student.name=test_api:build_student", "run_name=r", f"out_dir={tmp_path}", *TINY]
    if fmt == "torchscript":  # TorchScript does not state its input shape, and cannot be hooked
        argv += [f"data.image_size={SIZE}", "data.channels=1"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert abs(summary["teacher_acc"] - accuracy(teacher)) <= 0.5
    out = capsys.readouterr().out
    assert ("it has 1 BatchNorm layers" if fmt == "pt2" else "a TorchScript teacher's layers cannot be hooked") in out


def test_a_model_of_the_users_package_is_a_teacher_by_import_path(teacher, tmp_path, capsys):
    from safetensors.torch import save_file

    weights = tmp_path / "digits.safetensors"
    save_file(teacher.state_dict(), str(weights))
    argv = ["distill", "teacher.name=test_api:DigitsNet", f"teacher.checkpoint={weights}", "data.dataset=digits",
            f"data.image_size={SIZE}", f"data.mean=[{MEAN}]", f"data.std=[{STD}]", "student.name=test_api:build_student",
            "student.kwargs.width=2", "run_name=r", f"out_dir={tmp_path}", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert abs(summary["teacher_acc"] - accuracy(teacher)) <= 0.5 and summary["student"] == "test_api:build_student"


LAUNCHED = """
import sys, torch
from torch import nn
import dfkd

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 10)
    def forward(self, x):
        return self.head(self.body(x))

torch.manual_seed(0)
result = dfkd.distill(Net(), "lenet5_half", input_size=(1, 32, 32), mean=(0.5,), std=(0.5,),
                      overrides=["data.dataset=digits", "teacher.allow_near_chance=true", "student_updates=5",
                                 "batch_size=8", "eval_every=4", "checkpoint_every=0", "pool.size=0", "generator.ngf=4",
                                 "run_name=api", "out_dir=" + sys.argv[1]])
print("processes", result.summary["processes"])
"""


@pytest.mark.slow
def test_the_api_runs_under_accelerate_launch_with_two_processes(tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "api" / "summary.json").read_text())["processes"] == 2


def test_a_card_naming_its_architecture_wins_over_the_recipes_teacher(tmp_path, capsys):
    """A checkpoint named without teacher.name: its card's architecture and model_args, not the default recipe's
    lenet5 (a 1-channel test_resnet here, whose weights would not fit lenet5)."""
    from dfkd.weights import create_model, save_weights

    save_weights(create_model("test_resnet", 10, in_chans=1), tmp_path / "net.safetensors")
    (tmp_path / "net.json").write_text(json.dumps({"architecture": "test_resnet", "input_size": [1, 32, 32],
                                                   "mean": [0.5], "std": [0.5]}))
    argv = ["distill", f"teacher.checkpoint={tmp_path / 'net.safetensors'}", "data.dataset=digits",
            "teacher.allow_near_chance=true", "student_updates=5", "batch_size=8", "eval_every=5",
            "checkpoint_every=0", "pool.size=0", "generator.ngf=4", "run_name=r", f"out_dir={tmp_path}",
            "data.fidelity_images=16", "data.fidelity_steps=0"]  # a random teacher: no probe worth training
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["teacher"] == "test_resnet"


class Flat16(nn.Module):
    """Takes 16x16 images only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(SIZE * SIZE, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Labels(Dataset):
    def __init__(self, image: torch.Tensor, label: int):
        self.image, self.label = image, label

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        return self.image, self.label


API_BAD = {
    "a teacher that fails on the contract's input shape": (
        dict(teacher=Flat16(), input_size=(1, 32, 32)), "the teacher fails on inputs of shape (2, 1, 32, 32)"),
    "a teacher that is not a module": (dict(teacher=42), "teacher is a int: pass a torch.nn.Module"),
    "a student that is not a module": (dict(student=3.5), "student is a float: pass a torch.nn.Module"),
    "a student with other classes": (dict(student=DigitsNet(width=2, classes=7)), "class counts differ"),
    "eval_data of the wrong shape": (dict(eval_data=Labels(torch.rand(1, 8, 8), 0)),
                                     "eval_data[0] holds a torch.float32 tensor of shape (1, 8, 8)"),
    "eval_data with a label outside the classes": (dict(eval_data=Labels(torch.rand(1, SIZE, SIZE), 10)),
                                                   "eval_data[0] has label 10, outside the teacher's 10 classes"),
    "eval_data that is neither a Dataset nor a folder": (dict(eval_data=[1, 2]), "eval_data is a list"),
    "an override that is not a key": (dict(overrides=["student.lrr=0.1"]), "unknown key 'student.lrr'"),
}


@pytest.mark.parametrize("case", list(API_BAD))
def test_bad_input_to_the_api_is_one_dfkd_error_and_writes_nothing(case, tmp_path):
    given, fragment = API_BAD[case]
    args = dict(teacher=DigitsNet(), student=DigitsNet(width=2), input_size=(1, SIZE, SIZE), mean=(MEAN,), std=(STD,),
                eval_data=DigitsTest())
    args.update(given)
    overrides = [*TINY, "teacher.allow_near_chance=true", f"out_dir={tmp_path}", *given.get("overrides", [])]
    with pytest.raises(dfkd.DfkdError) as err:
        dfkd.distill(**{**args, "overrides": overrides})
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def write_junk(folder: Path) -> Path:
    (folder / "junk.bin").write_bytes(b"not a model" * 10)
    return folder / "junk.bin"


def write_module(folder: Path) -> Path:
    (folder / "usermodels.py").write_text("VALUE = 3\ndef not_a_model():\n    return 'a string'\n")
    return folder


CLI_BAD = {
    "an import path that does not import": (["teacher.name=no_such_package.models:Net"],
                                            "cannot import no_such_package.models"),
    "an import path that returns no module": (["teacher.name=usermodels:not_a_model"],
                                              "not_a_model(...) returned a str, not a torch.nn.Module"),
    "an import path to a value": (["teacher.name=usermodels:VALUE"], "VALUE is a int, not a class or a function"),
    "a file that is neither weights nor a program": (["teacher.checkpoint={junk}"],
                                                     "neither a weights file nor a torch.export / TorchScript program"),
}


@pytest.mark.parametrize("case", list(CLI_BAD))
def test_bad_teacher_sources_on_the_command_line_are_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(write_module(tmp_path)))
    args, fragment = CLI_BAD[case]
    argv = ["distill", *[a.format(junk=write_junk(tmp_path)) for a in args], "data.dataset=digits",
            f"data.image_size={SIZE}", f"data.mean=[{MEAN}]", f"data.std=[{STD}]", f"out_dir={tmp_path}/runs", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dfkd: error: ") and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_program_exported_for_another_shape_than_its_card_is_refused(teacher, tmp_path, capsys):
    file = export_files(teacher, tmp_path)["pt2"]
    (tmp_path / "teacher.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [MEAN], "std": [STD]}))
    assert main(["distill", f"teacher.checkpoint={file}", "data.dataset=digits", f"out_dir={tmp_path}/runs",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "was exported for inputs of shape (1, 16, 16), and the contract says (1, 32, 32)" in err
    assert not (tmp_path / "runs").exists()


def test_calling_again_finds_the_finished_run_and_returns_its_student(teacher, tmp_path):
    args = dict(teacher=teacher, student=DigitsNet(width=2), input_size=(1, SIZE, SIZE), mean=(MEAN,), std=(STD,),
                eval_data=DigitsTest(), overrides=[*TINY, "student_updates=10", f"out_dir={tmp_path}"])
    first = dfkd.distill(**args)
    again = dfkd.distill(**args)  # the same run folder: resumed from its last checkpoint, which says it is done
    assert again.summary == first.summary
    assert all(torch.equal(a, b) for a, b in zip(first.student.state_dict().values(),
                                                 again.student.state_dict().values()))
