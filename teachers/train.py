"""Train a teacher on a real labelled dataset and write safetensors weights plus a JSON card.

    python teachers/train.py model=lenet5 dataset=mnist epochs=4 out=~/.cache/dfkd/teachers/lenet5_mnist.safetensors
    python teachers/train.py model=resnet34_cifar dataset=cifar10 epochs=200 lr=0.1 batch_size=128 \
        out=teachers/resnet34_cifar10.safetensors
    python teachers/train.py model=resnet18 dataset=imagefolder data.root=/data/imagenet epochs=90 batch_size=256 \
        schedule=multistep

``key=value`` arguments, read and checked as ``dfkd distill`` reads its own (``--help`` lists the keys).
The data.* keys left null are the architecture's input and the dataset's classes. SGD with Nesterov
momentum; random-crop (and flip, on CIFAR/ImageFolder) augmentation. An ImageFolder root holds
train/ and val/ (one sub-folder per class). Expected accuracies: teachers/README.md.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from dfkd.cli import key_listing  # noqa: E402
from dfkd.config import one_line  # noqa: E402
from dfkd.contract import resolve  # noqa: E402
from dfkd.errors import (
    DfkdError,  # noqa: E402
    one_line_errors,  # noqa: E402
)
from dfkd.schema import Choice, Config, DataConfig, Dataset, key  # noqa: E402
from dfkd.teacher import train_teacher  # noqa: E402

PROG = "teachers/train.py"
Schedule = Choice("Schedule", {n: n for n in ("cosine", "multistep")})


@dataclass
class TeacherTraining:
    """The options of teachers/train.py, given as ``key=value`` (``--help`` lists them with their defaults)."""

    model: str = key("lenet5", "a timm model name (dfkd's zoo included)")
    model_args: Dict[str, Any] = key({}, "constructor keywords, e.g. model_args.patch_size=4 (kept in the card)")
    dataset: Dataset = key(Dataset.mnist, "the labelled dataset to train on (data.dataset follows it)")
    epochs: int = key(4, "passes over the training split")
    lr: float = key(0.1, "peak SGD learning rate")
    batch_size: int = key(128, "training batch")
    weight_decay: float = key(5e-4, "SGD weight decay")
    schedule: Schedule = key(Schedule.cosine, "cosine: one-cycle, 15 % warm-up; multistep: x0.1 at 40 % and 80 %")
    max_steps: int = key(0, "stop after this many steps (smoke tests); 0: all epochs")
    seed: int = key(0, "seed of weights, batch order and augmentation")
    out: Optional[str] = key(None, "weights file (the card goes beside it); null: "
                                   "~/.cache/dfkd/teachers/<model>_<dataset>.safetensors")
    data: DataConfig = key(DataConfig, "the data and the teacher's input contract, as for dfkd distill")


def read_options(argv: List[str]) -> TeacherTraining:
    """The options of ``key=value`` arguments, merged into the schema; user mistakes as DfkdError."""
    bare = [a for a in argv if "=" not in a]
    if bare:
        raise DfkdError(f"argument '{bare[0]}' is not key=value (e.g. model=lenet5 dataset=mnist)")
    schema = OmegaConf.structured(TeacherTraining)
    schema.data.dataset = "${dataset}"  # unless data.dataset is given too
    try:
        options: TeacherTraining = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(argv)))
    except OmegaConfBaseException as err:
        raise DfkdError(one_line(err, "the command line", TeacherTraining, f"python {PROG} --help")) from err
    for name in ("epochs", "lr", "batch_size"):
        if getattr(options, name) <= 0:
            raise DfkdError(f"{name} must be > 0, got {getattr(options, name)}")
    return options


def train(argv: List[str]) -> None:
    options = read_options(argv)
    cfg = Config()
    cfg.teacher.name, cfg.data = options.model, options.data
    resolve(cfg)  # input size, channels, mean/std: the architecture's (data.* keys override)
    out = options.out or f"~/.cache/dfkd/teachers/{options.model}_{options.dataset}.safetensors"
    train_teacher(options.model, cfg.data, epochs=options.epochs, out=out, seed=options.seed, lr=options.lr,
                  batch_size=options.batch_size, weight_decay=options.weight_decay, schedule=options.schedule.value,
                  max_steps=options.max_steps, model_args=options.model_args)


def main(argv: List[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print("\n".join([__doc__.strip(), "", "keys (default, then meaning):", *key_listing(TeacherTraining, resumable=False)]))
        return 0
    return one_line_errors(lambda: train(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
