"""Build a frozen teacher (a timm model name + weights), load a user's checkpoint, or train one.

Checkpoints are read without unpickling code: safetensors, or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

import dfkd.models  # noqa: F401  (registers dfkd's networks in timm)
from dfkd.config import DfkdError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "teacher")
PREFIXES = ("module.", "_orig_mod.", "model.")


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
    """Load ``path`` into ``model`` strictly, naming missing/unexpected keys and shape mismatches."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        parts = []
        if shapes:
            parts.append(f"shape mismatch {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
        if missing:
            parts.append(f"{len(missing)} missing keys e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys e.g. {unexpected[0]}")
        raise DfkdError(f"{what} checkpoint '{path}' does not fit {arch} with {model.num_classes} classes: "
                        + "; ".join(parts))
    model.load_state_dict(state)


def build_teacher(cfg, num_classes: int) -> nn.Module:
    """The frozen teacher: eval mode, no weight gradients. Trains one first if asked and none is cached."""
    t = cfg.teacher
    if t.checkpoint and not Path(t.checkpoint).expanduser().exists() and t.train_if_missing:
        print(f"[dfkd] no trained teacher at {t.checkpoint}: training {t.name} on {cfg.data.dataset} first "
              f"(same as: python teachers/train.py model={t.name} dataset={cfg.data.dataset} "
              f"epochs={t.train_epochs} out={t.checkpoint})", flush=True)
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
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent on in-memory tensors (single process)."""
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(labels), batch_size))
    return 100.0 * correct / len(labels)


def train_teacher(name: str, data, epochs: int, out: str, seed: int = 0, lr: float = 0.1,
                  batch_size: int = 128, weight_decay: float = 5e-4) -> Dict:
    """Train ``name`` on the real training split of ``data.dataset`` (SGD, cosine); write weights and card."""
    from safetensors.torch import save_file

    from dfkd.data import tensor_dataset

    torch.manual_seed(seed)
    model = create_model(name, data.num_classes)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    train = tensor_dataset(data.dataset, data.root, True, data.download, data.image_size, mean, std)
    test = tensor_dataset(data.dataset, data.root, False, data.download, data.image_size, mean, std)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    flip = data.dataset.startswith("cifar")
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = _augment(train.tensors[0][idx], flip, pad=4 if flip else 2, gen=gen)
            loss = F.cross_entropy(model(x), train.tensors[1][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, *test.tensors)
        print(f"[teacher] epoch {epoch + 1}/{epochs} loss {loss.item():.4f} test acc {acc:.2f}% "
              f"({time.time() - start:.0f}s)", flush=True)
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out_path)
    card = {"architecture": name, "num_classes": data.num_classes, "dataset": data.dataset,
            "mean": list(mean), "std": list(std), "input_size": [data.channels, data.image_size, data.image_size],
            "test_accuracy": round(acc, 2), "epochs": epochs, "seed": seed, "train_seconds": round(time.time() - start, 1),
            "command": " ".join(["python"] + sys.argv)}
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"[teacher] wrote {out_path} (test accuracy {acc:.2f}%)", flush=True)
    return card
