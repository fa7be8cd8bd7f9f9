"""The teacher's card: a JSON file beside its checkpoint that says what the teacher takes (docs/own-teacher.md).

Read with timm's ``pretrained_cfg`` names or the spellings people write (arch, channels, ...); every value is
checked for its type here, and for its range with the keys it fills (``dfkd.config.check_contract``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

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
    """The first card-like JSON file beside a checkpoint (``CARD_NAMES``), or None. A file with a card's name that
    is not a JSON object is an error, never skipped: the teacher's input would silently fall back to defaults."""
    ckpt = Path(checkpoint).expanduser()
    for pattern in CARD_NAMES:
        path = ckpt.parent / pattern.format(stem=ckpt.stem, name=ckpt.name)
        if path.is_file() and path != ckpt:
            load_card_json(path)
            return path
    return None


def load_card_json(path: Path) -> Dict[str, Any]:
    """The card file's JSON object, or a one-line error naming the file and the fix."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DfkdError(f"teacher card '{path}' cannot be read as JSON ({str(err).splitlines()[0][:120]}); fix it, "
                        f"or pass another card with teacher.card=PATH") from err
    if not isinstance(raw, dict):
        raise DfkdError(f"teacher card '{path}' is a JSON {type(raw).__name__}, not an object; fix it, or pass "
                        f"another card with teacher.card=PATH")
    return raw


def _number(path: Path, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DfkdError(f"teacher card '{path}': {name} is {value!r}, not a number; fix the card")
    return float(value)


def _numbers(path: Path, name: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise DfkdError(f"teacher card '{path}': {name} is an empty list; fix the card")
    return [_number(path, name, v) for v in values]


def _integer(path: Path, name: str, value: Any) -> int:
    number = _number(path, name, value)
    if number != int(number):
        raise DfkdError(f"teacher card '{path}': {name} is {value!r}, not a whole number; fix the card")
    return int(number)


def _square_size(path: Path, card: Dict[str, Any], size: Any) -> Optional[int]:
    """``input_size`` as [C, H, W], [H, W] or H: channels into ``card``, the side returned."""
    if isinstance(size, (list, tuple)) and len(size) == 3:
        card.setdefault("channels", _integer(path, "input_size[0]", size[0]))
        size = size[1:]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DfkdError(f"teacher card '{path}': input_size {size} is not square; dfkd generates square images")
        size = size[0]
    return None if size is None else _integer(path, "input_size", size)


def read_card(path: Path) -> Dict[str, Any]:
    """The card's values under dfkd's names (see SPELLINGS), nested timm ``pretrained_cfg`` blocks included, each
    of the type its key takes (a wrong type is a one-line error naming the card and the field)."""
    raw = load_card_json(path)
    flat = dict(raw)
    for key in NESTED:  # inner blocks fill what the top level does not say
        if isinstance(raw.get(key), dict):
            flat = {**raw[key], **{k: v for k, v in flat.items() if k != key}}
    card: Dict[str, Any] = {}
    for canon, names in SPELLINGS.items():
        for name in names:
            value = flat.get(name)
            if value is None or (canon == "num_classes" and name == "classes" and not isinstance(value, int)):
                continue  # `classes` is a count only when it is a number
            if canon == "classes" and not isinstance(value, list):
                continue
            card[canon] = value
            break
    if "architecture" in card and not isinstance(card["architecture"], str):
        raise DfkdError(f"teacher card '{path}': architecture is {card['architecture']!r}, not a model name")
    for key in ("channels", "num_classes"):
        if key in card:
            card[key] = _integer(path, key, card[key])
    size = _square_size(path, card, card.pop("input_size", None))
    if size is not None:
        card["image_size"] = size
    for key in ("mean", "std"):
        if key in card:
            card[key] = _numbers(path, key, card[key])
    if "mean" in card and "std" in card and max(card["mean"]) > 1.5:  # written for 0-255 pixels
        card["mean"] = [m / 255 for m in card["mean"]]
        card["std"] = [s / 255 for s in card["std"]]
    if "crop_pct" in card:
        card["crop_pct"] = _number(path, "crop_pct", card["crop_pct"])
    if "interpolation" in card and not isinstance(card["interpolation"], str):
        raise DfkdError(f"teacher card '{path}': interpolation is {card['interpolation']!r}, not a name")
    if "classes" in card and not all(isinstance(c, str) for c in card["classes"]):
        raise DfkdError(f"teacher card '{path}': the class names are not all strings")
    if "accuracy" in card:
        acc = _number(path, "test accuracy", card["accuracy"])
        if not 0 <= acc <= 100:
            raise DfkdError(f"teacher card '{path}': test accuracy {acc} is not a fraction or a percentage")
        card["accuracy"] = acc * 100 if acc <= 1 else acc  # a fraction or a percentage
    if "kwargs" in card and not isinstance(card["kwargs"], dict):
        raise DfkdError(f"teacher card '{path}': model_args is {card['kwargs']!r}, not an object of keywords")
    return card
