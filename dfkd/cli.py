"""The ``dfkd`` command and its conventions: ``dfkd distill|compare|export|evaluate ...``.

Every subcommand is a function ``(argv) -> exit code`` (``COMMANDS``); a user mistake (``DfkdError``)
ends any of them with one line ``dfkd: error: MESSAGE`` on stderr and exit code 2, anything unexpected with
one line ``dfkd COMMAND: unexpected ...`` and exit code 1 (``one_line_errors``; ``DFKD_DEBUG=1``: the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import MISSING, Field
from enum import Enum
from typing import Any, Dict, List, Optional

from dfkd.schema import schema_fields

COMMANDS = {  # subcommand -> (module:function(argv) -> exit code that runs it, one line of `dfkd --help`)
    "distill": ("dfkd.commands:distill_command", "distil a teacher into a student, without data"),
    "compare": ("dfkd.comparison:main", "schemes side by side: accuracy, time, plot"),
    "export": ("dfkd.commands:export_command", "a run's student as safetensors, TorchScript, ONNX"),
    "evaluate": ("dfkd.evaluate:main", "teacher vs student: size, CPU latency, accuracy"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser: its help lists the subcommands, one line each."""
    top = argparse.ArgumentParser(prog="dfkd", description="Data-free knowledge distillation, one stage or two.",
                                  epilog="dfkd COMMAND --help: that command's arguments.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, (_, what) in COMMANDS.items():
        commands.add_parser(name, help=what, add_help=False)
    return top


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:  # the subcommand parses its own arguments
        module, function = COMMANDS[argv[0]][0].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    try:  # not a command: --help lists them (exit 0); nothing, or anything else, is a usage error (exit 2)
        parser().parse_args(argv[:1])
    except SystemExit as done:
        return int(done.code or 0)
    return 2


def show(value) -> str:
    """A value as it is written on the command line: null, true, cosine, [0.2, 0.4]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return value.value if isinstance(value, Enum) else str(value)


def key_listing(schema, resumable: bool = True, values: Optional[Dict[str, Any]] = None,
                origin: str = "") -> List[str]:
    """One line per key of a schema dataclass (``dfkd.schema.key`` fields): dotted key, value, meaning. The value is
    the schema's default, or ``values[key]`` (what a run with no overrides uses) marked ``origin (schema: DEFAULT)``
    where it differs; with ``resumable``, which keys a resumed run may change (dfkd distill's logging keys)."""
    def default(f: Field):
        return f.default_factory() if f.default_factory is not MISSING else f.default

    rows = []
    for name, f in schema_fields(schema):
        value, schema_value = show(default(f)), show(default(f))
        if values is not None and name in values and show(values[name]) != schema_value:
            value = f"{show(values[name])}  ({origin}; schema: {schema_value})"
        rows.append((name, value, f.metadata.get("doc", "")
                     + ("; a resumed run may change it" if resumable and f.metadata.get("logging") else "")))
    key_width, value_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    return [f"  {name:<{key_width}}  {value:<{value_width}}  {doc}" for name, value, doc in rows]


if __name__ == "__main__":
    sys.exit(main())
