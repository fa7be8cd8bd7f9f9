"""The one exception type of dfkd, a user mistake, and how the commands report it: one line, never a traceback.
The bottom layer: imports nothing of dfkd."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional


class DfkdError(Exception):
    """A user mistake (bad recipe, key, value, file): reported as one line and a non-zero exit."""


def one_line_errors(run: Callable[[], object], command: Optional[str] = None, prog: str = "dfkd") -> int:
    """``run()`` and exit code 0, or exit code 2 after printing a user mistake (``DfkdError``) as one line
    ``PROG: error: MESSAGE`` on stderr: every subcommand ends this way, never with a traceback.

    Any other exception is unexpected (a bug, or the machine's trouble such as a full disk): one line
    ``PROG COMMAND: unexpected TYPE: MESSAGE`` and exit code 1;
    ``DFKD_DEBUG=1`` in the environment lets it through, traceback and all. KeyboardInterrupt goes through."""
    try:
        run()
    except DfkdError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if os.environ.get("DFKD_DEBUG", "") not in ("", "0"):
            raise
        first = (str(err).splitlines() or [""])[0][:300]
        print(f"{prog}{' ' + command if command else ''}: unexpected {type(err).__name__}"
              f"{': ' + first if first else ''} (rerun with DFKD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0
