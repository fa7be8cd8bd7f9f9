"""Entry point: ``accelerate launch dfkd/distill.py recipe=NAME key=value ...`` (or plain ``python``, or ``dfkd distill``).

With no ``recipe=``, runs the offline default (recipes/default.yaml): MNIST, LeNet-5 -> LeNet-5-half.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from dfkd.checkpoint import flat  # noqa: E402
from dfkd.cli import key_listing  # noqa: E402
from dfkd.config import available_recipes, load_config  # noqa: E402
from dfkd.errors import one_line_errors  # noqa: E402
from dfkd.machine import pick_threads  # noqa: E402
from dfkd.schema import Config  # noqa: E402


def usage(argv: List[str] = ()) -> str:
    """``dfkd distill --help``: the recipes, then every key with the value a run of ``argv`` (the default recipe,
    or ``recipe=NAME``) uses without other overrides, where it comes from, and its meaning."""
    recipe = next((a.split("=", 1)[1] for a in argv if a.startswith("recipe=")), "default")
    cfg = load_config([f"recipe={recipe}"])
    values = flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    return "\n".join([
        "usage: dfkd distill [recipe=NAME] [key=value ...]",
        "       python dfkd/distill.py ... | accelerate launch [ACCELERATE OPTIONS] dfkd/distill.py ...",
        "",
        __doc__.strip().splitlines()[-1].replace("``", ""),
        "",
        "recipes (recipe=NAME: recipes/NAME.yaml, or recipe=PATH.yaml): " + ", ".join(available_recipes()),
        "",
        f"keys (key=value overrides): the value a run of recipe={cfg.recipe} uses, marked where the recipe changes "
        f"the schema's default (dfkd/schema.py), then its meaning; dfkd distill recipe=NAME --help shows another:",
        *key_listing(Config, values=values, origin=f"recipes/{cfg.recipe}.yaml"),
    ])


def distill(argv: List[str]) -> None:
    cfg = load_config(argv)  # first: a typo is reported before the heavy imports (timm, torchvision)
    from dfkd.trainer import distill as train

    pick_threads()  # fewer CPU threads than cores when other jobs hold some (docs/scaling.md)
    train(cfg)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        return one_line_errors(lambda: print(usage(argv)))
    return one_line_errors(lambda: distill(argv))


if __name__ == "__main__":
    sys.exit(main())
