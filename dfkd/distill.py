"""Entry point: ``accelerate launch dfkd/distill.py recipe=NAME key=value ...`` (or plain ``python``, or ``dfkd distill``).

With no ``recipe=``, runs the offline default (recipes/default.yaml): MNIST, LeNet-5 -> LeNet-5-half.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfkd.cli import key_listing, one_line_errors  # noqa: E402
from dfkd.config import Config, available_recipes, load_config  # noqa: E402


def usage() -> str:
    """``dfkd distill --help``: the recipes, then every key of the schema with its default and meaning."""
    return "\n".join([
        "usage: dfkd distill [recipe=NAME] [key=value ...]",
        "       python dfkd/distill.py ... | accelerate launch [ACCELERATE OPTIONS] dfkd/distill.py ...",
        "",
        __doc__.strip().splitlines()[-1].replace("``", ""),
        "",
        "recipes (recipe=NAME: recipes/NAME.yaml, or recipe=PATH.yaml): " + ", ".join(available_recipes()),
        "",
        "keys (key=value overrides the recipe; default, then meaning; dfkd/config.py):",
        *key_listing(Config),
    ])


def distill(argv: List[str]) -> None:
    cfg = load_config(argv)  # first: a typo is reported before the heavy imports (timm, torchvision)
    from dfkd.trainer import distill as train

    train(cfg)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    return one_line_errors(lambda: distill(argv))


if __name__ == "__main__":
    sys.exit(main())
