"""The teacher's input contract: which images it takes, declared once and used everywhere.

A teacher expects images of a given size and channel count, normalised with its own mean/std,
resized and cropped the way it was evaluated in training. dfkd fills every ``data.*`` contract key
that the user left null (architecture too, ``teacher.name``), from the first source that states it:

1. the user's keys (recipe or command line);
2. the teacher's card: a JSON file beside the checkpoint (``teacher.card`` names it explicitly),
   with timm's ``pretrained_cfg`` names or the spellings people write (arch, channels, ...);
3. the checkpoint itself: input channels from the first convolution, classes from the classifier;
4. the dataset: its class count (built-in datasets, or the ImageFolder's class folders);
5. the architecture's timm ``pretrained_cfg`` (its published weights' input pipeline).

A card that describes the input but says nothing of resizing means a plain resize (no crop):
the architecture's crop belongs to timm's published weights, not to the user's.
The resolved values are written back into the config, so the run directory's ``config.yaml``,
the exported card and the normalisation inside exported files all carry the same contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from dfkd.card import find_card, read_card
from dfkd.config import check_contract
from dfkd.errors import DfkdError
from dfkd.schema import Config

DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class Contract:
    """Where each contract value came from, and what the card says of the teacher's own accuracy."""

    sources: Dict[str, str] = field(default_factory=dict)
    card: Optional[Path] = None
    card_accuracy: Optional[float] = None
    warnings: List[str] = field(default_factory=list)

    def describe(self, cfg: Config) -> str:
        d = cfg.data
        crop = "no crop" if d.crop_pct == 1 else f"resize to {int(d.image_size / d.crop_pct)}, centre crop"
        by_source: Dict[str, List[str]] = {}
        for key, source in self.sources.items():
            by_source.setdefault(source, []).append(key)
        origin = "; ".join(f"{', '.join(keys)} from {source}" for source, keys in by_source.items())
        return (f"{teacher_label(cfg.teacher)} takes {d.channels}x{d.image_size}x{d.image_size}, mean {_fmt(d.mean)} std "
                f"{_fmt(d.std)}, {d.interpolation} {crop}, {d.num_classes} classes ({origin})")


def teacher_label(teacher) -> str:
    """How messages name the teacher: its architecture, or its file when the file is the model."""
    return teacher.name or Path(teacher.checkpoint or "teacher").name


def _fmt(values: List[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def take(cfg: Config, contract: Contract, key: str, value: Any, source: str) -> None:
    """Fill contract key ``key`` of ``cfg`` with ``value`` if the user left it null, and record where it came from."""
    target, attr = (cfg.teacher, "name") if key == "architecture" else (cfg.data, key)
    if getattr(target, attr) is None and value is not None:
        setattr(target, attr, value)
        contract.sources[key] = source


def from_card(cfg: Config, contract: Contract, architecture: bool = True) -> None:
    """Step 2: the card's values (its architecture and constructor keywords only for a timm teacher, else the
    teacher is the module or file already given), and a plain resize where it gives no crop."""
    card_path = find_card(cfg.teacher)
    if card_path is None:
        return
    card, label = read_card(card_path), f"card {card_path.name}"
    contract.card, contract.card_accuracy = card_path, card.get("accuracy")
    for key in ("architecture", "channels", "num_classes", "image_size", "mean", "std", "interpolation",
                "crop_pct", "classes")[0 if architecture else 1:]:
        if key in card:
            take(cfg, contract, key, card[key], label)
    if not architecture:
        return
    if card.get("architecture") not in (None, cfg.teacher.name):
        contract.warnings.append(f"teacher.name={cfg.teacher.name} but its {label} says {card['architecture']}")
    for key, value in card.get("kwargs", {}).items():
        if key not in ("num_classes", "in_chans", "pretrained"):
            cfg.teacher.kwargs.setdefault(key, value)
    if "image_size" in card or "mean" in card:
        plain = f"{label}, which gives no resize/crop: a plain resize"
        take(cfg, contract, "interpolation", "bilinear", plain)
        take(cfg, contract, "crop_pct", 1.0, plain)


def from_checkpoint(cfg: Config, contract: Contract, arch: Dict) -> None:
    """Step 3: input channels from the first convolution's weight, classes from the classifier's."""
    from dfkd.weights import read_state_dict, weight_shapes

    ckpt = cfg.teacher.checkpoint
    if not (ckpt and Path(ckpt).expanduser().is_file()):
        return
    conv, head = weight_shapes(cfg.teacher.name, read_state_dict(ckpt), (arch.get("first_conv"), arch.get("classifier")))
    take(cfg, contract, "channels", conv[1] if conv is not None and len(conv) == 4 else None, "checkpoint")
    take(cfg, contract, "num_classes", head[0] if head is not None and len(head) == 2 else None, "checkpoint")


def from_dataset(cfg: Config, contract: Contract) -> None:
    """Step 4: the class count of a built-in dataset, or of an ImageFolder's class folders."""
    d = cfg.data
    if d.dataset in DATASET_CLASSES:
        take(cfg, contract, "num_classes", DATASET_CLASSES[d.dataset], f"dataset {d.dataset}")
    elif d.dataset == "imagefolder" and Path(d.root).expanduser().is_dir():
        from dfkd.data import class_folders  # late: data needs torch

        labels = class_folders(Path(d.root).expanduser(), d.classes).values()
        count = len(d.classes) if d.classes else max(labels, default=-1) + 1 or None
        take(cfg, contract, "num_classes", count, "class folders")


def from_architecture(cfg: Config, contract: Contract, arch: Dict) -> None:
    """Step 5: what is still null, from the architecture's timm ``pretrained_cfg``."""
    label = f"{cfg.teacher.name}'s timm pretrained_cfg"
    size = arch.get("input_size") or (3, 224, 224)
    take(cfg, contract, "channels", size[0], label)
    take(cfg, contract, "image_size", size[1], label)
    take(cfg, contract, "num_classes", arch.get("num_classes"), label)
    take(cfg, contract, "interpolation", arch.get("interpolation") or "bicubic", label)
    take(cfg, contract, "crop_pct", arch.get("crop_pct") or 0.875, label)
    for key in ("mean", "std"):
        values = list(arch.get(key) or ())
        if cfg.data.channels == 1 and len(values) == 3:  # timm's RGB statistics for a grey teacher: their average
            values = [sum(values) / 3]
        take(cfg, contract, key, values or None, label)


def from_module(cfg: Config, contract: Contract, model, input_shape) -> None:
    """Steps 3-5 for a teacher that is not a timm architecture (a module of the user's code, a program file): its
    exported input shape, its first convolution's channels, its output's classes, and a plain resize."""
    d = cfg.data
    if input_shape is not None:
        stated = (d.channels, d.image_size, d.image_size)
        if any(a is not None and a != b for a, b in zip(stated, input_shape)):
            where = ", ".join(f"data.{k} from {contract.sources.get(k, 'the keys')}" for k in ("channels", "image_size"))
            raise DfkdError(f"teacher.checkpoint '{cfg.teacher.checkpoint}' was exported for inputs of shape "
                            f"{tuple(input_shape)}, and the contract says {stated} ({where}): make them agree")
        take(cfg, contract, "channels", input_shape[0], "the exported program's input")
        if input_shape[1] == input_shape[2]:
            take(cfg, contract, "image_size", input_shape[1], "the exported program's input")
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    take(cfg, contract, "channels", conv.in_channels if conv is not None else None, "its first convolution")
    from_dataset(cfg, contract)
    missing = [k for k in ("channels", "image_size", "mean", "std") if getattr(d, k) is None]
    if missing:
        raise DfkdError(f"the teacher's input is unknown ({', '.join(f'data.{k}' for k in missing)}): a model that is "
                        f"not a timm architecture states it in keys (input_size=, mean=, std= in dfkd.distill) or in a "
                        f"card beside its file (docs/own-teacher.md)")
    if d.num_classes is None:
        take(cfg, contract, "num_classes", probe_classes(model, d.channels, d.image_size), "its output")
    plain = "the default for a teacher without timm's pretrained_cfg: a plain resize"
    take(cfg, contract, "interpolation", "bilinear", plain)
    take(cfg, contract, "crop_pct", 1.0, plain)


def probe_classes(model, channels: int, size: int) -> int:
    """The class count of ``model``: the width of its output on two blank images of the contract's shape."""
    import torch

    shape = (2, channels, size, size)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except Exception as err:
        raise DfkdError(f"the teacher fails on inputs of shape {shape} (data.channels={channels}, data.image_size="
                        f"{size}): {type(err).__name__}: {str(err).splitlines()[0][:160]}; give its input shape "
                        f"(input_size= in dfkd.distill, data.channels/data.image_size, or a card)") from err
    if not (hasattr(out, "ndim") and out.ndim == 2):
        raise DfkdError(f"the teacher returns {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))} on "
                        f"inputs of shape {shape}; dfkd distils classifiers returning (batch, classes) logits")
    return int(out.shape[1])


def resolve(cfg: Config, model=None, input_shape=None) -> Contract:
    """Fill the null contract keys of ``cfg`` (teacher.name and data.*) in place; returns where each came from.
    ``model``: a teacher that is not a timm architecture (its ``input_shape`` (C, H, W) where its file states it)."""
    from dfkd.weights import pretrained_cfg

    contract = Contract()
    from_card(cfg, contract, architecture=model is None)
    if model is not None:
        from_module(cfg, contract, model, input_shape)
    else:
        if cfg.teacher.name is None:
            raise DfkdError("no teacher architecture: set teacher.name=ARCH (a timm model name, or package.module:"
                            "callable), put \"architecture\" in the teacher's card, or give a torch.export / "
                            "TorchScript file as teacher.checkpoint")
        arch = pretrained_cfg(cfg.teacher.name)
        from_checkpoint(cfg, contract, arch)
        from_dataset(cfg, contract)
        from_architecture(cfg, contract, arch)
    d = cfg.data
    d.mean, d.std = _per_channel(d.mean, d.channels, "mean"), _per_channel(d.std, d.channels, "std")
    check_contract(d, contract.sources)
    return contract


def _per_channel(values: List[float], channels: int, key: str) -> List[float]:
    if len(values) == channels:
        return [float(v) for v in values]
    if len(values) == 1:
        return [float(values[0])] * channels
    raise DfkdError(f"data.{key} has {len(values)} values for a {channels}-channel teacher; give "
                    + ("one" if channels == 1 else f"1 or {channels}"))
