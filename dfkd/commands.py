"""The subcommands ``dfkd distill`` and ``dfkd export``: argument parsing and printing over the Python API's code
(``dfkd compare``: dfkd/comparison.py, ``dfkd evaluate``: dfkd/evaluate.py).

    dfkd distill [recipe=NAME] [key=value ...]       (also: python or accelerate launch dfkd/distill.py ...)
    dfkd export RUN_DIR [--format safetensors,torchscript,onnx] [--out DIR] [--which best|final]

Every exported file is reloaded and checked against the in-memory student on real test images before it is kept
(dfkd/artifacts.py); only when all checks pass are the files moved into DIR.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

from omegaconf import OmegaConf

from dfkd.artifacts import FILES, export
from dfkd.checkpoint import flat
from dfkd.cli import key_listing
from dfkd.config import available_recipes, load_config
from dfkd.errors import one_line_errors
from dfkd.machine import pick_threads
from dfkd.schema import Config


def distill_usage(argv: List[str] = ()) -> str:
    """``dfkd distill --help``: the recipes, then every key with the value a run of ``argv`` (the default recipe,
    or ``recipe=NAME``) uses without other overrides, where it comes from, and its meaning."""
    recipe = next((a.split("=", 1)[1] for a in argv if a.startswith("recipe=")), "default")
    cfg = load_config([f"recipe={recipe}"])
    values = flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    return "\n".join([
        "usage: dfkd distill [recipe=NAME] [key=value ...]",
        "       python dfkd/distill.py ... | accelerate launch [ACCELERATE OPTIONS] dfkd/distill.py ...",
        "",
        "With no recipe=, runs the offline default (recipes/default.yaml): MNIST, LeNet-5 -> LeNet-5-half.",
        "",
        "recipes (recipe=NAME: recipes/NAME.yaml, or recipe=PATH.yaml): " + ", ".join(available_recipes()),
        "",
        f"keys (key=value overrides): the value a run of recipe={cfg.recipe} uses, marked where the recipe changes "
        f"the schema's default (dfkd/schema.py), then its meaning; dfkd distill recipe=NAME --help shows another:",
        *key_listing(Config, values=values, origin=f"recipes/{cfg.recipe}.yaml"),
    ])


def run_distill(argv: List[str]) -> None:
    cfg = load_config(argv)  # first: a typo is reported before the heavy imports (timm, torchvision)
    from dfkd.trainer import distill as train

    pick_threads()  # fewer CPU threads than cores when other jobs hold some (docs/scaling.md)
    train(cfg)


def distill_command(argv: List[str]) -> int:
    if "-h" in argv or "--help" in argv:
        return one_line_errors(lambda: print(distill_usage(argv)), "distill")
    return one_line_errors(lambda: run_distill(argv), "distill")


def export_command(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="dfkd export", description="Export a run's student, parity-checked.")
    parser.add_argument("run_dir")
    parser.add_argument("--format", default=",".join(FILES), help="comma-separated: " + ", ".join(FILES))
    parser.add_argument("--out", help="output directory (default RUN_DIR/export; not a run directory)")
    parser.add_argument("--which", choices=("best", "final"), default="best")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    return one_line_errors(lambda: report(export(args.run_dir, formats, args.out, args.which)), "export")


def report(out: Path) -> None:
    """What ``dfkd export`` wrote, and the parity each file passed."""
    card = json.loads((out / "student.json").read_text())
    images = "uniform noise" if card["data"]["dataset"] in ("given", "none") else "test"  # as parity_images picks
    for fmt, check in card["parity"].items():
        print(f"[dfkd] {out / FILES[fmt]}: parity ok on {check['images']} {images} images "
              f"(max |logit diff| {check['max_abs_logit_diff']:.1e})")
    print(f"[dfkd] {out / 'student.json'}: {card['architecture']} {card['params']:,} params, "
          f"{card['compression_ratio']}x fewer than {card['teacher']['name']}")
