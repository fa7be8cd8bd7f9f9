"""The ``dfkd`` command: ``dfkd distill|compare|export|evaluate ...``, one module per subcommand."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> module whose main(argv) -> exit code runs it
    "distill": "dfkd.distill",
    "compare": "dfkd.compare",
    "export": "dfkd.export",
    "evaluate": "dfkd.export",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: dfkd {{{','.join(COMMANDS)}}} ...   (e.g. dfkd distill recipe=default scheme=two_stage)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    if argv[0] == "evaluate":
        return module.evaluate_main(argv[1:])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
