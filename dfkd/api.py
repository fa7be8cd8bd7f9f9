"""The Python API: ``dfkd.distill``, ``dfkd.export``, ``dfkd.compare``. The commands call the same code.

    import dfkd
    result = dfkd.distill(teacher=my_model, student="lenet5_half", input_size=(1, 32, 32), mean=(0.2,), std=(0.35,),
                          eval_data=my_test_dataset, overrides=["student_updates=3000"])
    result.student, result.summary, result.run_dir

Every schema key can be set through ``overrides`` (``dfkd distill --help`` lists them), with the command line's
validation; a mistake raises ``dfkd.DfkdError`` with the command's one-line message. The run folder, its checkpoints
and an exact resume are the command's too. Modules given here are copied: dfkd never changes the caller's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from torch import nn
from torch.utils.data import Dataset

from dfkd.config import holds_images, load_config, looks_like_image_folder
from dfkd.errors import DfkdError
from dfkd.sources import given_name

Source = Union[nn.Module, str, Path]


@dataclass
class Result:
    """What ``dfkd.distill`` returns."""

    student: nn.Module  # the distilled student (the weight average where student.ema > 0), eval mode, on the CPU
    summary: Dict  # what the run's summary.json holds
    run_dir: Path  # config.yaml, metrics.jsonl, checkpoints, student.safetensors, samples.png


def _listed(values: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def distill_keys(teacher: Source, student: Source, recipe: str, input_size, mean, std, num_classes,
                 eval_data) -> list:
    """The ``key=value`` list that says on the command line what the arguments of ``distill`` say."""
    keys = [f"recipe={recipe}"]
    if isinstance(teacher, nn.Module):
        keys += [f"teacher.name={given_name(teacher)}", "teacher.checkpoint=null", "teacher.train_if_missing=false"]
    elif isinstance(teacher, (str, Path)) and Path(teacher).expanduser().is_file():
        keys += [f"teacher.checkpoint={teacher}"]  # a weights file with a card, or a program file
    elif isinstance(teacher, str):
        keys += [f"teacher.name={teacher}", "teacher.checkpoint=null", "teacher.train_if_missing=false"]
    else:
        raise DfkdError(f"teacher is a {type(teacher).__name__}: pass a torch.nn.Module, a timm model name, or the path "
                        f"of a weights or program file")
    if isinstance(student, nn.Module):
        keys.append(f"student.name={given_name(student)}")
    elif isinstance(student, str):
        keys.append(f"student.name={student}")
    else:
        raise DfkdError(f"student is a {type(student).__name__}: pass a torch.nn.Module or a timm model name")
    if input_size is not None:
        if len(input_size) != 3 or input_size[1] != input_size[2]:
            raise DfkdError(f"input_size {tuple(input_size)} is not (channels, size, size): dfkd generates square images")
        keys += [f"data.channels={int(input_size[0])}", f"data.image_size={int(input_size[1])}"]
    keys += [f"data.mean={_listed(mean)}"] if mean is not None else []
    keys += [f"data.std={_listed(std)}"] if std is not None else []
    keys += [f"data.num_classes={int(num_classes)}"] if num_classes is not None else []
    if isinstance(eval_data, (str, Path)):
        flat = holds_images(str(eval_data)) and not looks_like_image_folder(str(eval_data))
        keys += [f"data.root={eval_data}", f"data.dataset={'unlabelled' if flat else 'imagefolder'}"]
    elif isinstance(eval_data, Dataset):
        keys.append("data.dataset=given")
    elif eval_data is None:
        keys.append("data.dataset=none")  # no labelled data: fidelity only, unless overrides name a dataset
    else:
        raise DfkdError(f"eval_data is a {type(eval_data).__name__}: pass a torch Dataset of (image, label), a folder "
                        f"of class sub-folders or a flat folder of images")
    return keys


def distill(teacher: Source, student: Source = "lenet5_half", recipe: str = "default", *,
            input_size: Optional[Sequence[int]] = None, mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None, num_classes: Optional[int] = None,
            eval_data: Union[Dataset, str, Path, None] = None, overrides: Sequence[str] = ()) -> Result:
    """Distil ``teacher`` into ``student`` without data; ``eval_data`` (real images) only measures.

    teacher: an ``nn.Module`` of any class, a timm name, or a file (weights with a card, a torch.export ``.pt2`` or a
    TorchScript file). student: a timm name, or an ``nn.Module`` with the teacher's classes. input_size (C, H, W),
    mean, std (per channel, on 0-1 pixels), num_classes: the teacher's input contract, where no card or timm config
    gives it. eval_data: a torch Dataset of (image, label) (0-1 float CHW tensors at input_size, or PIL images), a
    folder of class sub-folders, or a flat folder of unlabelled images (measured by agreement with the teacher);
    None: no real images (``data.dataset=none``, fidelity only) unless ``overrides`` set ``data.dataset``.
    overrides: ``key=value`` strings, as on the command line (docs/evaluation.md).
    """
    from dfkd.build import build
    from dfkd.trainer import kept_student, train

    keys = distill_keys(teacher, student, recipe, input_size, mean, std, num_classes, eval_data)
    cfg = load_config([*keys, *overrides])
    run = build(cfg, teacher=copy.deepcopy(teacher) if isinstance(teacher, nn.Module) else None,
                student=copy.deepcopy(student) if isinstance(student, nn.Module) else None,
                eval_data=eval_data if isinstance(eval_data, Dataset) else None)
    summary = train(run)
    return Result(copy.deepcopy(kept_student(run)).cpu().eval(), summary, run.run_dir)


def export(run_dir: Union[str, Path], formats: Sequence[str] = ("safetensors", "torchscript", "onnx"),
           out: Union[str, Path, None] = None, which: str = "best", student: Optional[nn.Module] = None,
           calibration=None) -> Path:
    """A run's student as deployable files, each reloaded and parity-checked (``dfkd export``); returns the folder.
    ``student``: the architecture, when the run's student was a module given to ``distill``; ``calibration``: a
    ``dfkd.quantize.Calibration`` for the ``onnx_int8`` format (default: 512 generated images, MinMax, 97 % floor)."""
    from dfkd.artifacts import export as export_run

    return export_run(run_dir, list(formats), out, which, student=student, calibration=calibration)


def compare(*args: str) -> Path:
    """``dfkd compare ARGS``: schemes or methods side by side; returns the results folder."""
    from dfkd.comparison import compare as compare_runs

    return compare_runs(list(args))
