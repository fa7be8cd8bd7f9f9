"""Entry point: ``accelerate launch dfkd/distill.py recipe=NAME key=value ...`` (or plain ``python``, or ``dfkd distill``).

With no ``recipe=``, runs the offline default (recipes/default.yaml): MNIST, LeNet-5 -> LeNet-5-half. A script
only: the command is ``dfkd.commands.distill_command``, the Python function ``dfkd.distill`` (dfkd/api.py).
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository importable
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dfkd.commands import distill_command

    sys.exit(distill_command(sys.argv[1:]))
