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

from dfkd.card import find_card, read_card
from dfkd.config import check_contract
from dfkd.errors import DfkdError
from dfkd.schema import Config

DATASET_CLASSES = {"mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


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
        return (f"{cfg.teacher.name} takes {d.channels}x{d.image_size}x{d.image_size}, mean {_fmt(d.mean)} std "
                f"{_fmt(d.std)}, {d.interpolation} {crop}, {d.num_classes} classes ({origin})")


def _fmt(values: List[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def take(cfg: Config, contract: Contract, key: str, value: Any, source: str) -> None:
    """Fill contract key ``key`` of ``cfg`` with ``value`` if the user left it null, and record where it came from."""
    target, attr = (cfg.teacher, "name") if key == "architecture" else (cfg.data, key)
    if getattr(target, attr) is None and value is not None:
        setattr(target, attr, value)
        contract.sources[key] = source


def from_card(cfg: Config, contract: Contract) -> None:
    """Step 2: the card's values (and its constructor keywords), and a plain resize where it gives no crop."""
    card_path = find_card(cfg.teacher)
    if card_path is None:
        return
    card, label = read_card(card_path), f"card {card_path.name}"
    contract.card, contract.card_accuracy = card_path, card.get("accuracy")
    for key in ("architecture", "channels", "num_classes", "image_size", "mean", "std", "interpolation",
                "crop_pct", "classes"):
        if key in card:
            take(cfg, contract, key, card[key], label)
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


def resolve(cfg: Config) -> Contract:
    """Fill the null contract keys of ``cfg`` (teacher.name and data.*) in place; returns where each came from."""
    from dfkd.weights import pretrained_cfg

    contract = Contract()
    from_card(cfg, contract)
    if cfg.teacher.name is None:
        raise DfkdError("no teacher architecture: set teacher.name=ARCH (a timm model name), or put "
                        "\"architecture\" in the teacher's card")
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
