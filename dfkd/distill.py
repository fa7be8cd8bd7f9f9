"""Entry point: ``accelerate launch dfkd/distill.py recipe=NAME key=value ...`` (or plain ``python``).

With no ``recipe=``, runs the offline default (recipes/default.yaml): MNIST, LeNet-5 -> LeNet-5-half.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfkd.config import DfkdError, load_config  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = load_config(argv)  # first: a typo is reported before the heavy imports (timm, torchvision)
        from dfkd.trainer import distill

        distill(cfg)
    except DfkdError as err:
        print(f"dfkd: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
