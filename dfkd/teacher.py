"""Build the frozen teacher (a timm model name + weights), or train one on a real labelled dataset."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from dfkd.errors import DfkdError
from dfkd.sources import from_import_path, is_given, is_import_path, is_program_file, load_program
from dfkd.weights import create_model, load_weights, save_weights


def teacher_source(cfg, given: Optional[nn.Module] = None) -> Tuple[Optional[nn.Module], Optional[Tuple[int, ...]]]:
    """The teacher when it is not a timm architecture (dfkd/sources.py), and its input shape (C, H, W) where its file
    states it: the module given to the Python API, a model of the user's code (``teacher.name=pkg.module:callable``,
    weights from ``teacher.checkpoint``) or a self-contained program file. (None, None) for a timm teacher."""
    t = cfg.teacher
    if given is not None:
        return given, None
    if is_import_path(t.name):
        model = from_import_path(t.name, dict(t.kwargs), "teacher")
        if t.checkpoint:
            load_weights(model, t.checkpoint)
        return model, None
    if is_program_file(t.checkpoint):
        if t.name is not None:
            raise DfkdError(f"teacher.checkpoint '{t.checkpoint}' is a self-contained program (it holds its "
                            f"architecture): leave teacher.name unset, not {t.name}")
        return load_program(Path(t.checkpoint).expanduser(), "teacher")
    return None, None


def build_teacher(cfg, model: Optional[nn.Module] = None) -> nn.Module:
    """The frozen teacher of a resolved config (``dfkd.contract.resolve``): eval mode, no weight gradients.

    ``model``: the teacher from ``teacher_source``; else a timm architecture, trained first if asked and none
    is cached."""
    t = cfg.teacher
    if model is not None:
        for p in model.parameters():  # not requires_grad_: a TorchScript module has no such method
            p.requires_grad_(False)
        return model.eval()
    if t.checkpoint and not Path(t.checkpoint).expanduser().exists() and t.train_if_missing:
        print(f"[dfkd] no trained teacher at {t.checkpoint}: training {t.name} on {cfg.data.dataset} first "
              f"(same as: python teachers/train.py model={t.name} dataset={cfg.data.dataset} "
              f"epochs={t.train_epochs} out={t.checkpoint})", flush=True)
        with torch.random.fork_rng():  # the distillation that follows starts from the same RNG state either way
            train_teacher(t.name, cfg.data, epochs=t.train_epochs, out=t.checkpoint, seed=cfg.seed,
                          model_args=t.kwargs)
    model = create_model(t.name, cfg.data.num_classes, pretrained=t.pretrained, in_chans=cfg.data.channels,
                         **t.kwargs)
    if t.checkpoint:
        load_weights(model, t.checkpoint)
    elif not t.pretrained:
        raise DfkdError("the teacher has no weights: set teacher.checkpoint=PATH (or teacher.pretrained=true "
                        "for timm ImageNet models)")
    return model.eval().requires_grad_(False)


def model_from(name: str, num_classes: int, channels: int, kwargs, role: str, given: Optional[nn.Module] = None,
               pretrained: bool = False) -> nn.Module:
    """A teacher's or a student's architecture, weights aside: the module given to the Python API, a model of the
    user's code (``pkg.module:callable``, called with ``kwargs``), or a timm architecture with these classes and
    channels."""
    if given is not None:
        return given
    if is_import_path(name):
        return from_import_path(name, dict(kwargs), role)
    if is_given(name):
        raise DfkdError(f"{role}.name={name} was a module given to dfkd.distill: pass that module again "
                        f"(dfkd.export(run_dir, {role}=model))")
    return create_model(name, num_classes, pretrained=pretrained, in_chans=channels, **kwargs)


def build_student(cfg, given: Optional[nn.Module] = None) -> nn.Module:
    """The student: the module given to the Python API, a model of the user's code (``student.name=pkg.module:
    callable`` with ``student.kwargs``), or a timm architecture built with the teacher's channels and classes."""
    s = cfg.student
    return model_from(s.name, cfg.data.num_classes, cfg.data.channels, s.kwargs, "student", given)


def load_teacher(teacher: Dict, num_classes: int, channels: int) -> nn.Module:
    """The teacher an exported card names (its ``teacher`` block), with its weights: for ``dfkd evaluate``."""
    if not teacher.get("name") and is_program_file(teacher.get("checkpoint")):
        return load_program(Path(teacher["checkpoint"]).expanduser())[0].eval()
    model = model_from(teacher["name"], num_classes, channels, teacher.get("kwargs", {}), "teacher",
                       pretrained=teacher.get("pretrained", False))
    if teacher.get("checkpoint"):
        load_weights(model, teacher["checkpoint"])
    return model.eval()


def _augment(x: torch.Tensor, flip: bool, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop after zero padding (and horizontal flip) on a normalised batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=gen)
    rows = (dy + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w)
    x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def teacher_data(data, batch_size: int, seed: int) -> Tuple[DataLoader, DataLoader, bool]:
    """Train and test loaders of ``data.dataset`` and whether batches still need ``_augment``.

    torchvision datasets are held in memory as normalised tensors and augmented per batch; an ImageFolder
    (``data.root`` with ``train/`` and ``val/`` sub-folders, the ImageNet layout) is augmented by its transforms.
    """
    from torchvision import transforms

    from dfkd.data import ImageFolder, tensor_dataset

    gen = torch.Generator().manual_seed(seed)
    if data.dataset == "imagefolder":
        root = Path(data.root).expanduser()
        crop = transforms.Compose([transforms.RandomResizedCrop(data.image_size), transforms.RandomHorizontalFlip()])
        train = ImageFolder(str(root / "train"), replace(data, crop_pct=1.0), train_transform=crop)
        test = ImageFolder(str(root / "val"), data)
        workers = min(4, os.cpu_count() or 1)
        return (DataLoader(train, batch_size, shuffle=True, generator=gen, num_workers=workers, drop_last=True),
                DataLoader(test, 250, num_workers=workers), False)
    train = tensor_dataset(data, train=True)
    test = tensor_dataset(data, train=False)
    # Whole batches by fancy indexing (a BatchSampler), not 128 single-image look-ups and a stack.
    batches = BatchSampler(RandomSampler(train, generator=gen), batch_size, drop_last=False)
    return DataLoader(train, sampler=batches, batch_size=None), DataLoader(test, 1000), True


def train_teacher(name: str, data, epochs: int, out: str, seed: int = 0, lr: float = 0.1,
                  batch_size: int = 128, weight_decay: float = 5e-4, schedule: str = "cosine",
                  max_steps: int = 0, model_args: Optional[Dict] = None) -> Dict:
    """Train ``name`` on the real training split of ``data.dataset`` and write safetensors weights + JSON card.

    ``data`` is a resolved contract (``dfkd.contract.resolve``): input size, channels, mean/std, classes.

    SGD (Nesterov momentum 0.9); ``schedule`` is ``cosine`` (one-cycle: 15 % warm-up, cosine decay) or
    ``multistep`` (x0.1 at 40 % and 80 % of the steps, DFAD's StepLR(80) over 200 epochs); random-crop
    augmentation (and flips, on CIFAR and ImageFolder). ``max_steps`` > 0 stops early (smoke tests).
    ``model_args``: constructor keywords (e.g. a ViT's ``patch_size``), written into the card as ``model_args``.
    """
    from dfkd.accuracy import accuracy  # late: accuracy imports data, which this module's callers may not need

    if schedule not in ("cosine", "multistep"):
        raise DfkdError(f"schedule '{schedule}' is not cosine or multistep")
    torch.manual_seed(seed)
    model_args = dict(model_args or {})
    model = create_model(name, data.num_classes, in_chans=data.channels, **model_args)
    train, test, augment = teacher_data(data, batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * len(train) if max_steps <= 0 else min(max_steps, epochs * len(train))
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.4 * steps), int(0.8 * steps)], 0.1)
    gen = torch.Generator().manual_seed(seed)
    flip = data.dataset.startswith("cifar")
    start, step = time.time(), 0
    for epoch in range(math.ceil(steps / len(train))):
        model.train()
        for x, y in train:
            if augment:
                x = _augment(x, flip, pad=4 if flip else 2, gen=gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        with torch.no_grad():
            acc = accuracy(model.eval(), test)[0]
        print(f"[teacher] epoch {epoch + 1}/{epochs} ({step} steps) loss {loss.item():.4f} test acc {acc:.2f}% "
              f"({time.time() - start:.0f}s)", flush=True)
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out_path)
    card = {"architecture": name, "num_classes": data.num_classes, "dataset": data.dataset,
            "mean": list(data.mean), "std": list(data.std), "input_size": [data.channels, data.image_size, data.image_size],
            "interpolation": data.interpolation, "crop_pct": data.crop_pct,
            **({"model_args": model_args} if model_args else {}),
            "test_accuracy": round(acc, 2), "epochs": epochs, "steps": step, "schedule": schedule, "lr": lr,
            "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed,
            "train_seconds": round(time.time() - start, 1), "command": " ".join(["python"] + sys.argv)}
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"[teacher] wrote {out_path} (test accuracy {acc:.2f}%)", flush=True)
    return card
