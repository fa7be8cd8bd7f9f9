"""A small hyper-parameter sweep: one distillation per variant, side by side, every variant reported.

    python benchmarks/sweep.py --name default_lr --jobs 2 --base "student_updates=1500 eval_every=250" \
        --variant "dfad:" --variant "lr0.05:student.lr=0.05" --variant "adam:student.optimizer=adam student.lr=1e-3"

Each variant is ``LABEL:key=value ...`` (recipe overrides on top of ``--base``, as for
``dfkd distill``). Runs go to ``runs/sweep-NAME/LABEL`` as separate processes, ``--jobs`` at a
time, each with ``--threads`` torch threads. Writes ``benchmarks/results/sweep_NAME.md`` (+ .json)
with every variant's final and best test accuracy, its accuracy at each evaluation and its
training seconds; parallel runs share the machine, so compare accuracies per update, and time
only between runs that ran side by side. ``--report`` rebuilds the results from the runs already in
``runs/sweep-NAME`` without training (e.g. after a run was stopped, or runs started by hand were moved there).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
MAX_COLUMNS = 10  # evaluation columns in the markdown table
sys.path.insert(0, str(REPO))
from step_cost import write_results  # noqa: E402  (benchmarks/ is this script's folder)

from dfkd.machine import machine_description  # noqa: E402


def run_variant(label: str, base: List[str], overrides: List[str], out: Path, threads: int) -> Dict:
    """One distillation in its own process; returns its summary and its evaluations."""
    run_dir = out / label
    args = [sys.executable, str(REPO / "dfkd" / "distill.py"), *base, *overrides, f"out_dir={out}", f"run_name={label}",
            "logger=none", "resume=none"]
    log = out / f"{label}.log"
    with open(log, "w") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    run = {"label": label, "overrides": overrides, **read_run(run_dir)}
    if proc.returncode:  # what it reached before it stopped is still reported
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        run["error"] = f"{how}; log {log.relative_to(REPO)}"
    return run


def reported_run(label: str, overrides: List[str], out: Path) -> Dict:
    """A run rebuilt from its own files (``--report``); one without a summary did not finish."""
    run = {"label": label, "overrides": overrides, **read_run(out / label)}
    if "summary" not in run:
        run["error"] = f"no summary.json in {(out / label).relative_to(REPO)}"
    return run


def read_run(run_dir: Path) -> Dict:
    """A run's summary (absent if it did not finish) and its evaluations so far, as (update, accuracy)."""
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    records = map(json.loads, metrics.read_text().splitlines()) if metrics.exists() else []
    run = {"evaluations": [(r["update"], r["test_acc"]) for r in records if "test_acc" in r]}
    if summary.exists():
        run["summary"] = json.loads(summary.read_text())
        if "run_dir" in run["summary"]:  # repository-relative: the results files are read on other machines
            run["summary"]["run_dir"] = str(run_dir.relative_to(REPO))
    return run


def machine_phrase(machine: Dict[str, str]) -> str:
    """Where a results file was measured, in one sentence (``dfkd.machine.machine_description``)."""
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, load average "
            f"{machine['load']} at the start, {machine['date']}.")


def table_head(head: List[str]) -> List[str]:
    """A markdown table's header and rule."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def markdown(name: str, runs: List[Dict], machine: Dict[str, str], command: str, base: List[str]) -> str:
    done = [r for r in runs if "summary" in r and "error" not in r]
    points = sorted({u for r in runs for u, _ in r["evaluations"]})
    step = -(-len(points) // MAX_COLUMNS)  # long runs: every step-th evaluation (and the last) in the table
    points = sorted(set(points[::step]) | set(points[-1:]))
    head = ["variant", "overrides", "final %", "best %", "train s"] + [f"@{u}" for u in points]
    lines = [f"# Sweep: {name}\n", f"`{command}`\n",
             f"Common overrides: `{' '.join(base) or '(none)'}`. {machine_phrase(machine)} "
             "Runs shared the machine: train s compares only runs that ran side by side.\n", *table_head(head)]
    for r in runs:
        acc = dict(r["evaluations"])
        if "error" in r:  # what it reached before it stopped
            cells = [r["label"], f"`{' '.join(r['overrides']) or '-'}`", f"did not finish: {r['error']}", "", ""]
        else:
            s = r["summary"]
            cells = [r["label"], f"`{' '.join(r['overrides']) or '-'}`", f"{s['student_final_acc']:.2f}",
                     f"{s['student_best_acc']:.2f}", f"{s['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells + [f"{acc[u]:.1f}" if u in acc else "" for u in points]) + " |")
    if done:
        lines.append(f"\nTeacher: {done[0]['summary']['teacher']} {done[0]['summary']['teacher_acc']:.2f} %. "
                     "@N: student test accuracy (%) after N student updates"
                     + (f" (one evaluation in {step}, and the last; all of them in the .json)" if step > 1 else "")
                     + ".\n")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="sweep name: runs/sweep-NAME, results/sweep_NAME.md")
    parser.add_argument("--base", default="", help="overrides shared by every variant")
    parser.add_argument("--variant", action="append", required=True, help="LABEL:key=value ... (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report", action="store_true", help="no training: rebuild the results from runs/sweep-NAME")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="results directory")
    args = parser.parse_args(argv)
    base = shlex.split(args.base)
    variants = []
    for spec in args.variant:
        label, sep, rest = spec.partition(":")
        if not sep or not label:
            parser.error(f"variant {spec!r} is not LABEL:key=value ...")
        variants.append((label, shlex.split(rest)))
    out = REPO / "runs" / f"sweep-{args.name}"
    if args.report and not out.is_dir():
        parser.error(f"--report: no runs to report, {out.relative_to(REPO)} does not exist; "
                     "run the sweep without --report")
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report"]
    command = "python benchmarks/sweep.py " + " ".join(map(shlex.quote, argv))
    if args.report:
        runs = [reported_run(label, overrides, out) for label, overrides in variants]
        machine = {**machine, "load": "n/a (rebuilt with --report)"}
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda v: run_variant(v[0], base, v[1], out, args.threads), variants))
    write_results(Path(args.results), f"sweep_{args.name}", {"machine": machine, "command": command, "runs": runs},
                  markdown(args.name, runs, machine, command, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
