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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from dfkd.config import INTERPOLATIONS, Config
from dfkd.errors import DfkdError

# What people call each field in the cards they write; the first name is timm's (or dfkd's).
SPELLINGS = {
    "architecture": ("architecture", "arch", "model", "model_name", "timm_name"),
    "channels": ("in_chans", "channels", "in_channels", "num_channels", "input_channels", "n_channels"),
    "num_classes": ("num_classes", "n_classes", "nb_classes", "classes"),
    "input_size": ("input_size", "image_size", "img_size", "resolution", "size"),
    "mean": ("mean", "pixel_mean", "image_mean", "norm_mean"),
    "std": ("std", "pixel_std", "image_std", "norm_std"),
    "interpolation": ("interpolation", "resample", "resize_interpolation"),
    "crop_pct": ("crop_pct", "crop_ratio"),
    "accuracy": ("test_accuracy", "test_acc", "accuracy", "acc", "top1", "top1_acc", "val_accuracy", "val_acc"),
    "classes": ("label_names", "class_names", "classes", "labels"),
    "kwargs": ("model_args", "model_kwargs", "kwargs"),
}
NESTED = ("pretrained_cfg", "normalization", "normalize", "preprocessing", "data_config", "input")
CARD_NAMES = ("{stem}.json", "{name}.json", "{stem}.card.json", "{stem}_card.json", "card.json", "config.json")
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


def find_card(teacher) -> Optional[Path]:
    """``teacher.card``, else the first card-like JSON file beside the checkpoint."""
    if teacher.card:
        path = Path(teacher.card).expanduser()
        if not path.is_file():
            raise DfkdError(f"teacher.card '{teacher.card}' not found; pass the JSON file describing the teacher "
                            f"or leave teacher.card unset")
        return path
    return card_beside(teacher.checkpoint) if teacher.checkpoint else None


def card_beside(checkpoint: str) -> Optional[Path]:
    """The first card-like JSON file beside a checkpoint (``CARD_NAMES``), or None."""
    ckpt = Path(checkpoint).expanduser()
    for pattern in CARD_NAMES:
        path = ckpt.parent / pattern.format(stem=ckpt.stem, name=ckpt.name)
        if path.is_file() and path != ckpt and isinstance(_load_json(path, quiet=True), dict):
            return path
    return None


def _load_json(path: Path, quiet: bool = False) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if quiet:
            return None
        raise DfkdError(f"teacher card '{path}' is not valid JSON ({err}); fix it or pass teacher.card=PATH") from err


def read_card(path: Path) -> Dict[str, Any]:
    """The card's values under dfkd's names (see SPELLINGS); nested timm ``pretrained_cfg`` blocks included."""
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise DfkdError(f"teacher card '{path}' is not a JSON object")
    flat = dict(raw)
    for key in NESTED:  # inner blocks fill what the top level does not say
        if isinstance(raw.get(key), dict):
            flat = {**raw[key], **{k: v for k, v in flat.items() if k != key}}
    card: Dict[str, Any] = {}
    for canon, names in SPELLINGS.items():
        for name in names:
            value = flat.get(name)
            if value is None or (canon == "num_classes" and not isinstance(value, int)):
                continue  # `classes` is a count only when it is a number
            if (canon == "classes" and not isinstance(value, list)) or (canon == "architecture"
                                                                         and not isinstance(value, str)):
                continue
            card[canon] = value
            break
    size = card.pop("input_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 3:
        card.setdefault("channels", int(size[0]))
        size = size[1:]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DfkdError(f"teacher card '{path}': input_size {size} is not square; dfkd generates square images")
        size = size[0]
    if size is not None:
        card["image_size"] = int(size)
    for key in ("mean", "std"):
        if key in card and not isinstance(card[key], list):
            card[key] = [card[key]]
    if "mean" in card and "std" in card and max(card["mean"]) > 1.5:  # written for 0-255 pixels
        card["mean"] = [m / 255 for m in card["mean"]]
        card["std"] = [s / 255 for s in card["std"]]
    if "accuracy" in card:
        acc = float(card["accuracy"])
        card["accuracy"] = acc * 100 if acc <= 1 else acc  # a fraction or a percentage
    return card


def resolve(cfg: Config) -> Contract:
    """Fill the null contract keys of ``cfg`` (teacher.name and data.*) in place; returns where each came from."""
    from dfkd.weights import pretrained_cfg, read_state_dict, weight_shapes

    d, contract = cfg.data, Contract()
    card_path = find_card(cfg.teacher)
    card = read_card(card_path) if card_path else {}
    contract.card, contract.card_accuracy = card_path, card.get("accuracy")
    card_label = f"card {card_path.name}" if card_path else ""

    def take(key: str, value: Any, source: str) -> None:
        target = cfg.teacher if key == "architecture" else d
        attr = "name" if key == "architecture" else key
        if getattr(target, attr) is None and value is not None:
            setattr(target, attr, value)
            contract.sources[key] = source

    for key in ("architecture", "channels", "num_classes", "image_size", "mean", "std", "interpolation",
                "crop_pct", "classes"):
        if key in card:
            take(key, card[key], card_label)
    if card.get("architecture") not in (None, cfg.teacher.name):
        contract.warnings.append(f"teacher.name={cfg.teacher.name} but its {card_label} says {card['architecture']}")
    for key, value in card.get("kwargs", {}).items() if isinstance(card.get("kwargs"), dict) else []:
        if key not in ("num_classes", "in_chans", "pretrained"):
            cfg.teacher.kwargs.setdefault(key, value)
    if cfg.teacher.name is None:
        raise DfkdError("no teacher architecture: set teacher.name=ARCH (a timm model name), or put "
                        "\"architecture\" in the teacher's card")
    if card_path and ("image_size" in card or "mean" in card):
        plain = f"{card_label}, which gives no resize/crop: a plain resize"
        take("interpolation", "bilinear", plain)
        take("crop_pct", 1.0, plain)
    arch = pretrained_cfg(cfg.teacher.name)
    ckpt = cfg.teacher.checkpoint
    if ckpt and Path(ckpt).expanduser().is_file():
        state = read_state_dict(ckpt)
        conv, head = weight_shapes(cfg.teacher.name, state, (arch.get("first_conv"), arch.get("classifier")))
        take("channels", conv[1] if conv is not None and len(conv) == 4 else None, "checkpoint")
        take("num_classes", head[0] if head is not None and len(head) == 2 else None, "checkpoint")
    if d.dataset in DATASET_CLASSES:
        take("num_classes", DATASET_CLASSES[d.dataset], f"dataset {d.dataset}")
    elif d.dataset == "imagefolder" and Path(d.root).expanduser().is_dir():
        from dfkd.data import class_folders  # late: data needs torch

        labels = class_folders(Path(d.root).expanduser(), d.classes).values()
        take("num_classes", len(d.classes) if d.classes else max(labels, default=-1) + 1 or None, "class folders")
    arch_label = f"{cfg.teacher.name}'s timm pretrained_cfg"
    size = arch.get("input_size") or (3, 224, 224)
    take("channels", size[0], arch_label)
    take("image_size", size[1], arch_label)
    take("num_classes", arch.get("num_classes"), arch_label)
    take("interpolation", arch.get("interpolation") or "bicubic", arch_label)
    take("crop_pct", arch.get("crop_pct") or 0.875, arch_label)
    for key in ("mean", "std"):
        values = list(arch.get(key) or ())
        if d.channels == 1 and len(values) == 3:  # timm's RGB statistics for a grey teacher: their average
            values = [sum(values) / 3]
        take(key, values or None, arch_label)
    _check(cfg)
    return contract


def _per_channel(values: List[float], channels: int, key: str) -> List[float]:
    if len(values) == channels:
        return [float(v) for v in values]
    if len(values) == 1:
        return [float(values[0])] * channels
    raise DfkdError(f"data.{key} has {len(values)} values for a {channels}-channel teacher; give "
                    + ("one" if channels == 1 else f"1 or {channels}"))


def _check(cfg: Config) -> None:
    """The resolved contract must be complete and consistent."""
    d = cfg.data
    d.mean, d.std = _per_channel(d.mean, d.channels, "mean"), _per_channel(d.std, d.channels, "std")
    if d.interpolation not in INTERPOLATIONS:
        raise DfkdError(f"interpolation '{d.interpolation}' is not one of {', '.join(INTERPOLATIONS)}; "
                        f"set data.interpolation")
    if d.image_size % 4 or d.image_size < 4:
        raise DfkdError(f"the teacher's input size {d.image_size} is not a multiple of 4 (the generator "
                        f"upsamples twice by 2); set data.image_size")
    if min(d.std) <= 0:
        raise DfkdError(f"data.std must be > 0, got {d.std}")
    if d.classes is not None and len(d.classes) > d.num_classes:
        raise DfkdError(f"data.classes names {len(d.classes)} classes, the teacher has {d.num_classes}")
