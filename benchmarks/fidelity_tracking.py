"""Does fidelity track test accuracy? Labelled runs of given pairs and seeds, each evaluation measuring both.

    python benchmarks/fidelity_tracking.py --recipes default digits --seeds 0 1 2 \
        --out benchmarks/results/fidelity_tracking.md [key=value ...]

For each run: the Spearman rank correlation between held-out fidelity (agreement with the teacher on the
generated images of dfkd/fidelity.py) and test accuracy over the run's evaluations, and the test accuracy of
three checkpoints: best by fidelity (student_best.safetensors, chosen without the test set), best by test
accuracy (a choice made on the test set, the reference) and final. The gaps say how much choosing by fidelity
costs against choosing on the test set, and what it gains over keeping the final student. ``key=value``
arguments are overrides for every run (e.g. student_updates=3000 eval_every=250).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

from scipy.stats import spearmanr

from dfkd.config import load_config
from dfkd.machine import command_line, machine_description
from dfkd.results import print_and_write
from dfkd.trainer import distill


def tracking(recipe: str, seed: int, overrides: List[str], out_dir: Path) -> Dict:
    """One labelled run; its evaluations' fidelity against test accuracy, and its three checkpoints' accuracy."""
    summary = distill(load_config([f"recipe={recipe}", f"seed={seed}", f"out_dir={out_dir}", "checkpoint_every=0",
                                   f"run_name={recipe}-s{seed}", "resume=none", *overrides]))
    with open(Path(summary["run_dir"]) / "metrics.jsonl") as lines:
        evals = [r for r in map(json.loads, lines) if "test_acc" in r]
    rho = spearmanr([e["fidelity_agree"] for e in evals], [e["test_acc"] for e in evals]).statistic \
        if len(evals) > 2 else float("nan")
    return {"recipe": recipe, "seed": seed, "evaluations": len(evals), "spearman": float(rho),
            "by_fidelity": summary["student_best_acc"], "by_fidelity_update": summary["best_at_update"],
            "by_test": summary["student_best_test_acc"], "by_test_update": summary["best_test_update"],
            "final": summary["student_final_acc"], "teacher": summary["teacher_acc"]}


def markdown(rows: List[Dict], command: str, machine: Dict[str, str]) -> str:
    head = ["pair (recipe)", "seed", "evaluations", "Spearman(fidelity, test acc)", "test acc: best by fidelity",
            "best by test", "final", "by fidelity - by test", "by fidelity - final"]
    lines = [f"# Fidelity against test accuracy\n\n`{command}`\n",
             f"Machine: {machine['cpu']}, torch {machine['torch']}, {machine['date']}. Test accuracy in %; "
             f"'best by fidelity' is student_best.safetensors (chosen without the test set), 'best by test' the "
             f"highest test accuracy of any evaluation (chosen on the test set).\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['evaluations']} | {r['spearman']:.2f} | "
                     f"{r['by_fidelity']:.2f} (update {r['by_fidelity_update']}) | {r['by_test']:.2f} (update "
                     f"{r['by_test_update']}) | {r['final']:.2f} | {r['by_fidelity'] - r['by_test']:+.2f} | "
                     f"{r['by_fidelity'] - r['final']:+.2f} |")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        lines.append(f"\n{recipe}: mean Spearman {statistics.mean(r['spearman'] for r in mine):.2f}, by fidelity - "
                     f"by test {statistics.mean(r['by_fidelity'] - r['by_test'] for r in mine):+.2f} points, by "
                     f"fidelity - final {statistics.mean(r['by_fidelity'] - r['final'] for r in mine):+.2f} points "
                     f"over {len(mine)} seed(s).")
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["default"], help="teacher-student pairs, by recipe")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/fidelity_tracking"), help="where the runs go")
    parser.add_argument("--out", type=Path, help="write the markdown table here (printed in any case)")
    args, overrides = parser.parse_known_args(argv)
    rows = [tracking(recipe, seed, overrides, args.runs) for recipe in args.recipes for seed in args.seeds]
    command = command_line("benchmarks/fidelity_tracking.py", sys.argv[1:] if argv is None else argv)
    return print_and_write(markdown(rows, command, machine_description()), args.out)


if __name__ == "__main__":
    sys.exit(main())
