"""The subcommands ``dfkd distill`` and ``dfkd export``: argument parsing and printing over the Python API's code
(``dfkd compare``: dfkd/comparison.py, ``dfkd evaluate``: dfkd/evaluate.py).

    dfkd distill [recipe=NAME] [key=value ...]       (also: python or accelerate launch dfkd/distill.py ...)
    dfkd export RUN_DIR [--format safetensors,torchscript,onnx,onnx_int8] [--out DIR] [--which best|final]
                [--calibration generator|pool|real|noise] [--calibration-images N] [--calibration-method MinMax]
                [--agreement-floor PERCENT]

Every exported file is reloaded and checked against the in-memory student on real test images before it is kept
(dfkd/artifacts.py); the int8 ONNX file, calibrated on the run's own generated images (dfkd/quantize.py), on its
top-1 agreement with the fp32 student. Only when all checks pass are the files moved into DIR.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

from omegaconf import OmegaConf

from dfkd.artifacts import FILES, default_formats, export
from dfkd.checkpoint import flat
from dfkd.cli import key_listing
from dfkd.config import available_recipes, load_config
from dfkd.errors import one_line_errors
from dfkd.machine import pick_threads
from dfkd.quantize import INT8, METHODS, SOURCES, Calibration
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
    parser.add_argument("--format", help="comma-separated: " + ", ".join([*FILES, INT8]) + " (default: all; "
                        f"{INT8} where onnxruntime has its quantization tools)")
    parser.add_argument("--out", help="output directory (default RUN_DIR/export; not a run directory)")
    parser.add_argument("--which", choices=("best", "final"), default="best")
    defaults = Calibration()
    parser.add_argument("--calibration", default=defaults.source,
                        help=f"{INT8}'s calibration images: {', '.join(SOURCES)} (default %(default)s)")
    parser.add_argument("--calibration-images", type=int, default=defaults.images, help="how many (default %(default)s)")
    parser.add_argument("--calibration-method", default=defaults.method,
                        help=f"activation ranges from: {', '.join(METHODS)} (default %(default)s)")
    parser.add_argument("--agreement-floor", type=float, default=defaults.floor,
                        help=f"refuse {INT8} below this %% top-1 agreement with the fp32 student on the held-out "
                             "generated images it decides (default %(default)s)")
    args = parser.parse_args(argv)
    chosen = args.format if args.format is not None else ",".join(default_formats())
    formats = [f.strip() for f in chosen.split(",") if f.strip()]
    calibration = Calibration(args.calibration, args.calibration_images, args.calibration_method, args.agreement_floor)
    return one_line_errors(lambda: report(export(args.run_dir, formats, args.out, args.which,
                                                 calibration=calibration)), "export")


def report(out: Path) -> None:
    """What ``dfkd export`` wrote, and the check each file passed."""
    card = json.loads((out / "student.json").read_text())
    images = "uniform noise" if card["data"]["dataset"] in ("given", "none") else "test"  # as parity_images picks
    for fmt, check in card["parity"].items():
        print(f"[dfkd] {out / FILES[fmt]}: parity ok on {check['images']} {images} images "
              f"(max |logit diff| {check['max_abs_logit_diff']:.1e})")
    if "int8" in card:
        q = card["int8"]
        acc = q.get("test_acc")
        a = q["agreement"]
        print(f"[dfkd] {out / q['file']}: {a['top1_agreement']:.2f}% top-1 agreement with fp32 on the "
              f"{a['counted_images']} held-out generated images it decides (floor {a['floor']:g}%; "
              f"{a['top1_agreement_all']:.2f}% on all {a['images']})"
              + (f", test acc {acc['int8']:.2f}% (fp32 {acc['fp32']:.2f}%)" if acc else "")
              + f", {q['size_mb']:.3f} MB (fp32 {q['fp32_size_mb']:.3f}); calibrated on "
              f"{q['calibration']['images']} {q['calibration']['source']} images, {q['calibration']['method']}")
    print(f"[dfkd] {out / 'student.json'}: {card['architecture']} {card['params']:,} params, "
          f"{card['compression_ratio']}x fewer than {card['teacher']['name']}")
