"""Build a timm model by name and read or write its weights, with one-line errors for user mistakes.

Checkpoints are read without unpickling code: safetensors, or ``torch.load(weights_only=True)``.
Containers (``{'epoch': n, 'state_dict': {...}}``) are unwrapped and wrapper prefixes
(``module.``, ``_orig_mod.``, ``model.``) stripped, so a checkpoint saved from DDP, torch.compile
or a Lightning-style wrapper loads as it is.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict

import timm
import torch
from torch import nn

import dfkd.models  # noqa: F401  (registers dfkd's networks in timm)
from dfkd.card import card_beside, read_card
from dfkd.errors import DfkdError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "teacher", "module", "ema")
PREFIXES = ("module.", "_orig_mod.", "model.")


def filter_checkpoint(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """``state`` renamed by the model family's ``checkpoint_filter_fn``, as timm's loaders do (e.g. DFAD/CMI
    CIFAR ResNet and WRN layouts, ``dfkd/models/``); unchanged for families without one."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return filter_fn(state, model) if filter_fn is not None else state


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with one-line errors for unknown names, bad constructor keys and offline weights."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise DfkdError(f"unknown model '{name}'" + (f"; similar: {', '.join(close)}" if close else ""))
    try:
        return timm.create_model(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    except TypeError as err:  # a constructor keyword the architecture does not take
        raise DfkdError(f"cannot build {name} with {kwargs}: {str(err).splitlines()[0][:160]}") from err
    except Exception as err:
        if not pretrained:
            raise
        raise DfkdError(f"cannot fetch pretrained weights for '{name}' ({type(err).__name__}); offline, "
                        f"set teacher.pretrained=false and teacher.checkpoint=/path/to/weights.safetensors") from err


def pretrained_cfg(name: str) -> Dict:
    """The architecture's timm ``pretrained_cfg`` (input size, mean/std, first conv, classifier) as a dict."""
    if not timm.is_model(name):
        create_model(name, 2)  # raises the one-line unknown-model error
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from safetensors or a weights-only torch file, unwrapped and un-prefixed."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DfkdError(f"checkpoint '{path}' not found — train one with teachers/train.py or pass teacher.checkpoint=PATH")
    stat = file.stat()
    return dict(_read(str(file.resolve()), stat.st_size, stat.st_mtime_ns, path))


@lru_cache(maxsize=2)  # the input contract reads shapes from the file the teacher then loads: read it once
def _read(file: str, _size: int, _mtime: int, shown: str) -> Dict[str, torch.Tensor]:
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DfkdError(f"checkpoint '{shown}' cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                        "is it truncated, or neither a weights file nor a torch.export / TorchScript program?") from err
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise DfkdError(f"checkpoint '{shown}' holds no tensors under {', '.join(CONTAINER_KEYS)}")
        state = inner
    if not isinstance(state, dict):
        raise DfkdError(f"checkpoint '{shown}' is a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def weight_shapes(name: str, state: Dict[str, torch.Tensor], modules) -> list:
    """Shapes of ``<module>.weight`` in a checkpoint for architecture ``name`` (None where absent), after the
    family's renames; the model is built on the meta device, so nothing is allocated or initialised."""
    with torch.device("meta"):
        model = create_model(name, 10)
    state = filter_checkpoint(state, model)
    return [state[f"{m}.weight"].shape if m and f"{m}.weight" in state else None for m in modules]


def load_weights(model: nn.Module, path: str, what: str = "teacher") -> None:
    """Load ``path`` into ``model`` strictly (after its family's renames); name missing/unexpected keys and shape
    mismatches, and say whether the class count, the channel count or the architecture is what differs."""
    own = model.state_dict()
    state = filter_checkpoint(read_state_dict(path), model)
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm step counters; they are not used in eval mode.
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state)
        return
    cfg = getattr(model, "pretrained_cfg", {})
    arch = cfg.get("architecture", type(model).__name__)
    differs = {x.split()[0] for x in shapes}
    head, conv = f"{cfg.get('classifier', 'fc')}.weight", f"{cfg.get('first_conv')}.weight"
    if not (missing or unexpected) and head in state and differs <= {head, head[:-len("weight")] + "bias"}:
        raise DfkdError(f"{what} checkpoint '{path}' has {state[head].shape[0]} classes, {arch} was built with "
                        f"{model.num_classes}: set data.num_classes={state[head].shape[0]} (or use the checkpoint "
                        f"trained for {model.num_classes} classes)")
    if not (missing or unexpected) and differs == {conv} and state[conv].shape[1] != own[conv].shape[1]:
        raise DfkdError(f"{what} checkpoint '{path}' takes {state[conv].shape[1]}-channel images, {arch} was built "
                        f"for {own[conv].shape[1]}: set data.channels={state[conv].shape[1]}")
    arch_hint = ""
    card = card_beside(path)  # teachers/train.py, and most users' scripts, write the architecture beside the weights
    if card is not None:
        try:
            arch_hint = f"its card {card.name} says {read_card(card).get('architecture')}; "
        except DfkdError:
            pass
    parts = []
    if shapes:
        parts.append(f"shape mismatch {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"{len(missing)} missing keys e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys e.g. {unexpected[0]}")
    raise DfkdError(f"{what} checkpoint '{path}' does not fit {arch} with {model.num_classes} classes: "
                    + "; ".join(parts) + f" — is it another architecture? ({arch_hint}set teacher.name to match; "
                    "renames known for DFAD/CMI CIFAR ResNet/WRN checkpoints: checkpoint_filter_fn in dfkd/models/)")


def save_weights(model: nn.Module, path: Path) -> None:
    """A module's weights as safetensors, written to a temporary name and renamed (never half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
