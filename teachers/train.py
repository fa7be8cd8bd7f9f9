"""Train a teacher on a real labelled dataset and write safetensors weights plus a JSON card.

    python teachers/train.py model=lenet5 dataset=mnist epochs=4 out=~/.cache/dfkd/teachers/lenet5_mnist.safetensors
    python teachers/train.py model=resnet34_cifar dataset=cifar10 epochs=200 lr=0.1 batch_size=128 \
        out=teachers/resnet34_cifar10.safetensors
    python teachers/train.py model=resnet18 dataset=imagefolder data.root=/data/imagenet epochs=90 batch_size=256 \
        schedule=multistep

Keys: model (a timm name), dataset (mnist | cifar10 | cifar100 | imagefolder), epochs, lr, batch_size,
weight_decay, schedule (cosine | multistep), max_steps (stop early; 0 = all), seed, out, and data.* keys
(root, download, image_size, channels, num_classes, mean, std, ...: by default the architecture's input,
the dataset's classes). SGD with Nesterov momentum; random-crop (and flip, on CIFAR/ImageFolder) augmentation.
An ImageFolder root holds train/ and val/ (one sub-folder per class).
Expected accuracies: teachers/README.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from dfkd.config import Config, DataConfig, DfkdError  # noqa: E402
from dfkd.contract import resolve  # noqa: E402
from dfkd.teacher import train_teacher  # noqa: E402

DATASETS = ("mnist", "cifar10", "cifar100", "imagefolder")
KEYS = ("model", "dataset", "epochs", "lr", "batch_size", "weight_decay", "schedule", "max_steps", "seed", "out")


def main(argv) -> int:
    try:
        args = dict(a.split("=", 1) for a in argv if "=" in a)
        if len(args) != len(argv):
            raise DfkdError(f"arguments must be key=value, got {argv}")
        dataset = args.get("dataset", "mnist")
        if dataset not in DATASETS:
            raise DfkdError(f"dataset '{dataset}' is not one of {', '.join(DATASETS)}")
        data = OmegaConf.structured(DataConfig(dataset=dataset))
        for key, value in args.items():
            if key.startswith("data."):
                if key[5:] not in data:
                    raise DfkdError(f"unknown key '{key}'; data keys: {', '.join(data)}")
                data[key[5:]] = OmegaConf.from_dotlist([f"v={value}"]).v
            elif key not in KEYS:
                raise DfkdError(f"unknown key '{key}'; keys: {', '.join(KEYS)}, data.*")
        model = args.get("model", "lenet5")
        cfg = Config()
        cfg.teacher.name, cfg.data = model, OmegaConf.to_object(data)
        resolve(cfg)  # input size, channels, mean/std: the architecture's (data.* keys override)
        out = args.get("out", f"~/.cache/dfkd/teachers/{model}_{dataset}.safetensors")
        train_teacher(model, cfg.data, epochs=int(args.get("epochs", 4)), out=out,
                      seed=int(args.get("seed", 0)), lr=float(args.get("lr", 0.1)),
                      batch_size=int(args.get("batch_size", 128)),
                      weight_decay=float(args.get("weight_decay", 5e-4)), schedule=args.get("schedule", "cosine"),
                      max_steps=int(args.get("max_steps", 0)))
    except (DfkdError, ValueError) as err:
        print(f"teachers/train.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
