"""``dfkd export RUN_DIR``: the distilled student as files people deploy (``dfkd evaluate`` measures them).

    dfkd export runs/default-one_stage-s0 [--format safetensors,torchscript,onnx] [--out DIR] [--which best|final]

Every file is reloaded and checked against the in-memory student on real test images before it is kept
(dfkd/artifacts.py); only when all checks pass are the files moved into DIR. The student is fed as it was trained:
the config comes from the run's newest checkpoint (a hand-edited RUN_DIR/config.yaml is reported, not used), and
DIR may not be a run directory, whose own files the export would overwrite.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from dfkd.artifacts import FILES, export
from dfkd.errors import one_line_errors


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dfkd export", description="Export a run's student, parity-checked.")
    parser.add_argument("run_dir")
    parser.add_argument("--format", default=",".join(FILES), help="comma-separated: " + ", ".join(FILES))
    parser.add_argument("--out", help="output directory (default RUN_DIR/export; not a run directory)")
    parser.add_argument("--which", choices=("best", "final"), default="best")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    return one_line_errors(lambda: report(export(args.run_dir, formats, args.out, args.which)))


def report(out: Path) -> None:
    """What ``dfkd export`` wrote, and the parity each file passed."""
    card = json.loads((out / "student.json").read_text())
    for fmt, check in card["parity"].items():
        print(f"[dfkd] {out / FILES[fmt]}: parity ok on {check['images']} test images "
              f"(max |logit diff| {check['max_abs_logit_diff']:.1e})")
    print(f"[dfkd] {out / 'student.json'}: {card['architecture']} {card['params']:,} params, "
          f"{card['compression_ratio']}x fewer than {card['teacher']['name']}")
