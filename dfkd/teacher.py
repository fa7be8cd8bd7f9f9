"""Build a frozen teacher (a timm model name + weights), load a user's checkpoint, or train one.

Checkpoints are read without unpickling code: safetensors, or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import dfkd.models  # noqa: F401  (registers dfkd's networks in timm)
from dfkd.config import DfkdError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "teacher")
PREFIXES = ("module.", "_orig_mod.", "model.")

# Renames for CIFAR checkpoints published by DFAD / DAFL / CMI / ZSKT-style repositories, whose modules
# are named differently from dfkd's timm-style ones. A rule is tried only on a key that the model does
# not have, and its result is kept only if the model has it, so no rule can break a matching checkpoint.
KEY_MAP = [
    # ResNet (DAFL/DFAD resnet_8x.py, CMI resnet.py): classifier ``linear`` -> ``fc``, skip ``shortcut`` -> ``downsample``
    (r"^linear\.", "fc."),
    (r"\.shortcut\.(\d)\.", r".downsample.\1."),
    # WRN (ZSKT/CMI wresnet.py): ``blockN.layer.B`` -> ``stages.(N-1).B``, ``convShortcut`` -> ``shortcut``,
    # the final ``bn1`` -> ``norm``
    (r"^block(\d)\.layer\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.convShortcut\.", ".shortcut."),
    (r"^bn1\.", "norm."),
]


def map_keys(state: Dict[str, torch.Tensor], own_keys) -> Dict[str, torch.Tensor]:
    """Apply ``KEY_MAP`` to the keys of ``state`` that ``own_keys`` lacks, where the result is an own key."""
    own, out = set(own_keys), {}
    for key, value in state.items():
        if key not in own:
            mapped = key
            for pattern, repl in KEY_MAP:
                mapped = re.sub(pattern, repl, mapped)
            key = mapped if mapped in own else key
        out[key] = value
    return out


def create_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """``timm.create_model`` with a one-line error for unknown names."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise DfkdError(f"unknown model '{name}'" + (f"; similar: {', '.join(close)}" if close else ""))
    try:
        return timm.create_model(name, num_classes=num_classes, pretrained=pretrained)
    except Exception as err:
        if not pretrained:
            raise
        raise DfkdError(f"cannot fetch pretrained weights for '{name}' ({type(err).__name__}); offline, "
                        f"set teacher.pretrained=false and teacher.checkpoint=/path/to/weights.safetensors") from err


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from safetensors or a weights-only torch file, unwrapped and un-prefixed."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DfkdError(f"checkpoint '{path}' not found — train one with teachers/train.py or pass teacher.checkpoint=PATH")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DfkdError(f"checkpoint '{path}' cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                        "is it truncated, or not a weights file?") from err
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise DfkdError(f"checkpoint '{path}' holds no tensors under {', '.join(CONTAINER_KEYS)}")
        state = inner
    if not isinstance(state, dict):
        raise DfkdError(f"checkpoint '{path}' is a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_weights(model: nn.Module, path: str, what: str = "teacher") -> None:
    """Load ``path`` into ``model`` strictly (after ``KEY_MAP``); name missing/unexpected keys and shape
    mismatches, and say whether the class count or the architecture is what differs."""
    own = model.state_dict()
    state = map_keys(read_state_dict(path), own)
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm step counters; they are not used in eval mode.
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state)
        return
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    card = Path(path).expanduser().with_suffix(".json")
    if card.is_file():  # teachers/train.py writes the architecture beside the weights
        arch_hint = f"its card {card.name} says {json.loads(card.read_text()).get('architecture')}; "
    else:
        arch_hint = ""
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "fc")
    only_head = {x.split()[0] for x in shapes} <= {f"{head}.weight", f"{head}.bias"}
    if not (missing or unexpected) and only_head and f"{head}.weight" in state:
        head = f"{head}.weight"
        raise DfkdError(f"{what} checkpoint '{path}' has {state[head].shape[0]} classes, {arch} was built with "
                        f"{model.num_classes}: set data.num_classes={state[head].shape[0]} (or use the checkpoint "
                        f"trained for {model.num_classes} classes)")
    parts = []
    if shapes:
        parts.append(f"shape mismatch {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"{len(missing)} missing keys e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys e.g. {unexpected[0]}")
    raise DfkdError(f"{what} checkpoint '{path}' does not fit {arch} with {model.num_classes} classes: "
                    + "; ".join(parts) + f" — is it another architecture? ({arch_hint}set teacher.name to match; "
                    "renames known for DFAD/CMI CIFAR ResNet/WRN checkpoints are in dfkd.teacher.KEY_MAP)")


def build_teacher(cfg, num_classes: int) -> nn.Module:
    """The frozen teacher: eval mode, no weight gradients. Trains one first if asked and none is cached."""
    t = cfg.teacher
    if t.checkpoint and not Path(t.checkpoint).expanduser().exists() and t.train_if_missing:
        print(f"[dfkd] no trained teacher at {t.checkpoint}: training {t.name} on {cfg.data.dataset} first "
              f"(same as: python teachers/train.py model={t.name} dataset={cfg.data.dataset} "
              f"epochs={t.train_epochs} out={t.checkpoint})", flush=True)
        with torch.random.fork_rng():  # the distillation that follows starts from the same RNG state either way
            train_teacher(t.name, cfg.data, epochs=t.train_epochs, out=t.checkpoint, seed=cfg.seed)
    model = create_model(t.name, num_classes, pretrained=t.pretrained)
    if t.checkpoint:
        load_weights(model, t.checkpoint)
    elif not t.pretrained:
        raise DfkdError("the teacher has no weights: set teacher.checkpoint=PATH (or teacher.pretrained=true "
                        "for timm ImageNet models)")
    return model.eval().requires_grad_(False)


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


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent over a loader (single process)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / max(total, 1)


def teacher_data(name: str, data, mean, std, batch_size: int, seed: int) -> Tuple[DataLoader, DataLoader, bool]:
    """Train and test loaders of ``data.dataset`` and whether batches still need ``_augment``.

    torchvision datasets are held in memory as normalised tensors and augmented per batch; an ImageFolder
    (``data.root`` with ``train/`` and ``val/`` sub-folders, the ImageNet layout) is augmented by its transforms.
    """
    from dfkd.data import image_folder, tensor_dataset

    gen = torch.Generator().manual_seed(seed)
    if data.dataset == "imagefolder":
        root = Path(data.root).expanduser()
        train = image_folder(str(root / "train"), data.image_size, mean, std, train=True)
        test = image_folder(str(root / "val"), data.image_size, mean, std)
        workers = min(4, os.cpu_count() or 1)
        return (DataLoader(train, batch_size, shuffle=True, generator=gen, num_workers=workers, drop_last=True),
                DataLoader(test, 250, num_workers=workers), False)
    train = tensor_dataset(data.dataset, data.root, True, data.download, data.image_size, mean, std)
    test = tensor_dataset(data.dataset, data.root, False, data.download, data.image_size, mean, std)
    # Whole batches by fancy indexing (a BatchSampler), not 128 single-image look-ups and a stack.
    batches = BatchSampler(RandomSampler(train, generator=gen), batch_size, drop_last=False)
    return DataLoader(train, sampler=batches, batch_size=None), DataLoader(test, 1000), True


def train_teacher(name: str, data, epochs: int, out: str, seed: int = 0, lr: float = 0.1,
                  batch_size: int = 128, weight_decay: float = 5e-4, schedule: str = "cosine",
                  max_steps: int = 0) -> Dict:
    """Train ``name`` on the real training split of ``data.dataset`` and write safetensors weights + JSON card.

    SGD (Nesterov momentum 0.9); ``schedule`` is ``cosine`` (one-cycle: 15 % warm-up, cosine decay) or
    ``multistep`` (x0.1 at 40 % and 80 % of the steps, DFAD's StepLR(80) over 200 epochs); random-crop
    augmentation (and flips, on CIFAR and ImageFolder). ``max_steps`` > 0 stops early (smoke tests).
    """
    from safetensors.torch import save_file

    if schedule not in ("cosine", "multistep"):
        raise DfkdError(f"schedule '{schedule}' is not cosine or multistep")
    torch.manual_seed(seed)
    model = create_model(name, data.num_classes)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    train, test, augment = teacher_data(name, data, mean, std, batch_size, seed)
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
        acc = accuracy(model, test)
        print(f"[teacher] epoch {epoch + 1}/{epochs} ({step} steps) loss {loss.item():.4f} test acc {acc:.2f}% "
              f"({time.time() - start:.0f}s)", flush=True)
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out_path)
    card = {"architecture": name, "num_classes": data.num_classes, "dataset": data.dataset,
            "mean": list(mean), "std": list(std), "input_size": [data.channels, data.image_size, data.image_size],
            "test_accuracy": round(acc, 2), "epochs": epochs, "steps": step, "schedule": schedule, "lr": lr,
            "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed,
            "train_seconds": round(time.time() - start, 1), "command": " ".join(["python"] + sys.argv)}
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"[teacher] wrote {out_path} (test accuracy {acc:.2f}%)", flush=True)
    return card
