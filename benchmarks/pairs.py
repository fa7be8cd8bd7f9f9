"""Pairs the defaults were not tuned on: recipe=default, unchanged, on other teachers and students.

    python benchmarks/pairs.py --name mnist --seeds 0 1 2 --jobs 2              # every MNIST pair, 3 seeds
    python benchmarks/pairs.py --name digits --dataset digits --seeds 0 1 2
    python benchmarks/pairs.py --name mnist --merge benchmarks/results/pairs_mnist_s*.json   # seeds run apart as mnist_sN
    python benchmarks/pairs.py --name smoke --pairs resnet --seeds 0 --epochs 1 --teacher-steps 20 \
        --teachers /tmp/dfkd-teachers --base "student_updates=50 eval_every=25 batch_size=32"

The default recipe was tuned on LeNet-5 -> LeNet-5-half (the ``lenet`` reference pair). Every other
pair of ``PAIRS`` changes only the teacher, its checkpoint and the student: same hyper-parameters, no
per-pair tuning. A missing teacher is trained first (``teachers/train.py``, 1x32x32, ``--epochs``;
its card beside it gives the distillation its input contract). Distillations run as separate
processes through benchmarks/sweep.py's ``run_variant`` (``runs/pairs-NAME/PAIR-sSEED``), ``--jobs``
at a time. Writes ``benchmarks/results/pairs_NAME.md`` (+ .json): per pair the teacher, both sizes,
the student's final and best accuracy over seeds, the generator's class coverage (``gen_classes``)
and whether the targets hold: final >= 95 % of the teacher, final within 0.3 points of best.
``--merge`` trains nothing: it writes one report from the runs of earlier results files (seeds run on
different days); the merged .json keeps every run with the command and machine of the file it came from, so
those files need not be kept. A teacher retrained in between (its training is not bit-reproducible across
machines) shows as a range of teacher accuracies; each run is compared with its own teacher.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # dfkd, and sweep.py when imported (tests), not run
from step_cost import write_results  # noqa: E402
from sweep import machine_phrase, reported_run, run_variant, table_head  # noqa: E402

from dfkd.machine import machine_description  # noqa: E402
from dfkd.results import mean_std  # noqa: E402
from dfkd.weights import create_model  # noqa: E402

# label: (teacher, student, why this pair). All built with in_chans=1 at 32x32, 10 classes.
PAIRS = {
    "lenet": ("lenet5", "lenet5_half", "the reference: the pair the defaults were tuned on, on MNIST"),
    "resnet": ("test_resnet", "lenet5_half", "timm BatchNorm ResNet -> LeNet: cross-family, 24x smaller"),
    "efficientnet": ("test_efficientnet", "lenet5_half", "timm BatchNorm EfficientNet -> LeNet"),
    "mobilenet": ("mobilenetv3_small_050", "lenet5_half", "timm BatchNorm MobileNetV3 -> LeNet: 37x smaller"),
    "resnet_lenet5": ("test_resnet", "lenet5", "timm BatchNorm ResNet -> full LeNet-5: 6x smaller"),
    # not in the default list: a BatchNorm student costs ~10x a LeNet step on a CPU
    "resnet_efficientnet": ("test_resnet", "test_efficientnet", "BatchNorm teacher and student, cross-family"),
}
# dataset: its pairs, its teachers' epochs, and what every distillation on it adds to recipe=default
DATASETS = {
    "mnist": {"pairs": ["lenet", "resnet", "efficientnet", "mobilenet", "resnet_lenet5"], "epochs": 2,
              "overrides": []},
    "digits": {"pairs": ["lenet", "resnet"], "epochs": 20, "overrides": ["data.dataset=digits"]},
}
TEACHERS = "~/.cache/dfkd/teachers"
OF_TEACHER, WITHIN_BEST = 0.95, 0.3  # the targets: final >= 95 % of the teacher, final >= best - 0.3 points


def teacher_file(teachers: str, teacher: str, dataset: str) -> str:
    """The teacher's checkpoint, as written in commands (``~`` kept: the results files travel)."""
    return f"{teachers.rstrip('/')}/{teacher}_{dataset}32.safetensors"


def train_teacher(teacher: str, dataset: str, file: str, epochs: int, steps: int, threads: int, log: Path) -> None:
    """teachers/train.py for one missing teacher; stops the benchmark, naming the log, if it fails."""
    args = [sys.executable, str(REPO / "teachers" / "train.py"), f"model={teacher}", f"dataset={dataset}",
            "data.image_size=32", "data.channels=1", f"epochs={epochs}", f"out={file}"] + (
           [f"max_steps={steps}"] if steps else [])
    print(f"[pairs] training teacher {teacher} on {dataset}: {' '.join(args[1:])}", flush=True)
    with open(log, "w") as f:
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        sys.exit(f"pairs: training {teacher} on {dataset} failed (exit code {done.returncode}); log {log}")


def spread(row: Dict, key: str) -> str:
    """mean ± std over seeds; a single seed has no spread to show."""
    if len(row[key]) == 1:
        return f"{row[f'{key}_mean']:.2f} (1 seed)"
    return f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_std']:.2f}"


def gen_classes(run_dir: Path) -> List[float]:
    """The generator's effective class count in the training records after the first evaluation."""
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    first_eval = next((r["update"] for r in records if "test_acc" in r), None)
    return [r["gen_classes"] for r in records
            if "gen_classes" in r and first_eval is not None and r["update"] > first_eval]


def params(name: str) -> int:
    return sum(p.numel() for p in create_model(name, 10, in_chans=1).parameters())


def summarise(label: str, runs: List[Dict]) -> Dict:
    """One pair over its seeds: accuracies (mean, std, each seed), sizes, class coverage, targets."""
    teacher, student, why = PAIRS[label]
    row = {"pair": label, "teacher": teacher, "student": student, "why": why, "teacher_params": params(teacher),
           "student_params": params(student), "seeds": [r["seed"] for r in runs]}
    row["ratio"] = row["teacher_params"] / row["student_params"]
    done = [r for r in runs if "summary" in r and "error" not in r]
    row["errors"] = [f"s{r['seed']}: {r.get('error', 'no summary.json')}" for r in runs if r not in done]
    if not done:
        return row
    s = [r["summary"] for r in done]
    row["teacher_acc"] = [x["teacher_acc"] for x in s]  # one per run: merged seeds may have retrained teachers
    for key in ("student_final_acc", "student_best_acc"):
        row[key] = [x[key] for x in s]
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(row[key])
    row["final_of_teacher"] = statistics.mean(x["student_final_acc"] / x["teacher_acc"] for x in s)
    coverage = [r["gen_classes"] for r in done if r["gen_classes"]]
    row["gen_classes_mean"] = statistics.mean(statistics.mean(c) for c in coverage) if coverage else None
    row["gen_classes_min"] = min(min(c) for c in coverage) if coverage else None
    row["train_seconds_mean"] = statistics.mean(x["train_seconds"] for x in s)
    row["of_teacher_met"] = sum(x["student_final_acc"] >= OF_TEACHER * x["teacher_acc"] for x in s)
    row["near_best_met"] = sum(x["student_final_acc"] >= x["student_best_acc"] - WITHIN_BEST for x in s)
    return row


def merged_runs(files: List[Path], dataset: str) -> Tuple[List[Dict], List[Dict], Dict]:
    """The runs of earlier results files of ``dataset``, the command and machine of each invocation that made
    them, and the first file (its machine, base and teacher epochs head the report); each (pair, seed) once,
    every file with the same base."""
    runs, sources, seen, first = [], [], {}, None
    for file in files:
        data = json.loads(Path(file).read_text())
        first = first or data
        if data["dataset"] != dataset:
            raise ValueError(f"{file} holds {data['dataset']} runs, not {dataset}")
        if data["base"] != first["base"]:
            raise ValueError(f"{file} ran with {' '.join(data['base'])!r}, {files[0]} with "
                             f"{' '.join(first['base'])!r}: merge only runs of one base")
        commands = data.get("commands", [data["command"]])  # a merged file lists its sources
        machines = data.get("machines", [data["machine"]] * len(commands))
        sources += [{"command": c, "machine": m} for c, m in zip(commands, machines)]
        for run in data["runs"]:
            key = (run["pair"], run["seed"])
            if key in seen:
                raise ValueError(f"{run['pair']} seed {run['seed']} is in {seen[key]} and in {file}: merge it once")
            seen[key] = file
            runs.append(run)
    return sorted(runs, key=lambda r: (list(PAIRS).index(r["pair"]), r["seed"])), sources, first


def markdown(name: str, dataset: str, rows: List[Dict], machine: Dict[str, str], commands: List[str],
             base: List[str]) -> str:
    head = ["pair", "teacher", "teacher %", "student", "params T / S", "final %", "best %", "final / teacher",
            "gen_classes mean (min)", "train s", f"final >= {OF_TEACHER:.0%} of teacher", f"final >= best - {WITHIN_BEST}"]
    lines = [f"# Pairs the defaults were not tuned on: {name} ({dataset})\n",
             "\n".join(f"`{c}`" + ("  " if i < len(commands) - 1 else "") for i, c in enumerate(commands)) + "\n",
             f"Every distillation: `{' '.join(base)}` plus the pair's `teacher.name`, `teacher.checkpoint` "
             f"(`teacher.train_if_missing=false`), `student.name` and `seed`. {machine_phrase(machine)} "
             "Runs shared the machine: train s compares only runs that ran side by side.\n", *table_head(head)]
    for r in rows:
        sizes = f"{r['teacher_params'] / 1e3:.1f}k / {r['student_params'] / 1e3:.1f}k ({r['ratio']:.1f}x)"
        if "teacher_acc" not in r:
            cells = [r["pair"], r["teacher"], "", r["student"], sizes, "did not finish: " + "; ".join(r["errors"])]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
            continue
        n = len(r["student_final_acc"])
        coverage = "n/a" if r["gen_classes_mean"] is None else f"{r['gen_classes_mean']:.2f} ({r['gen_classes_min']:.2f})"
        low, high = min(r["teacher_acc"]), max(r["teacher_acc"])
        cells = [r["pair"], r["teacher"], f"{low:.2f}" + (f"-{high:.2f}" if high - low >= 0.005 else ""), r["student"], sizes,
                 spread(r, "student_final_acc"), spread(r, "student_best_acc"), f"{r['final_of_teacher']:.1%}",
                 coverage, f"{r['train_seconds_mean']:.0f}", f"{r['of_teacher_met']} of {n} seeds",
                 f"{r['near_best_met']} of {n} seeds"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["\nEach seed (final / best %, and its teacher's accuracy):\n"]
    for r in rows:
        seeds = ", ".join(f"s{s} {f:.2f} / {b:.2f} (teacher {t:.2f})" for s, f, b, t in zip(
            r["seeds"], r.get("student_final_acc", []), r.get("student_best_acc", []), r.get("teacher_acc", [])))
        errors = "; ".join(r["errors"])
        lines.append(f"- `{r['pair']}` ({r['why']}): {seeds or '-'}" + (f"; did not finish: {errors}" if errors else ""))
    lines.append("\nparams: built with in_chans=1, 10 classes. gen_classes: exp of the entropy of the teacher's mean "
                 "prediction on a generated batch (10: every class equally often), over the training records after "
                 "the first evaluation; mean over seeds of each run's mean, and the lowest record of any run. final / teacher: "
                 "mean over seeds of each run's final accuracy over its teacher's.\n")
    return "\n".join(lines)


def distillations(labels: List[str], seeds: List[int], teachers: str, dataset: str) -> List[Tuple[str, int, List[str]]]:
    """(pair, seed, overrides) of every run: only the teacher, its checkpoint, the student and the seed differ."""
    jobs = []
    for label in labels:
        teacher, student, _ = PAIRS[label]
        pair = [f"teacher.name={teacher}", f"teacher.checkpoint={teacher_file(teachers, teacher, dataset)}",
                "teacher.train_if_missing=false", f"student.name={student}"]
        jobs += [(label, seed, [*pair, f"seed={seed}"]) for seed in seeds]
    return jobs


def select(requested: List[str] | None, dataset: str) -> List[str]:
    """The pairs to run: ``requested`` (checked against PAIRS), else the dataset's."""
    unknown = [p for p in requested or [] if p not in PAIRS]
    if unknown:
        raise ValueError(f"unknown pair {unknown[0]!r}; choose from {', '.join(PAIRS)}")
    return requested or DATASETS[dataset]["pairs"]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/pairs_NAME.md, runs/pairs-NAME")
    parser.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="teachers' data and evaluation")
    parser.add_argument("--pairs", nargs="+", help=f"labels from {', '.join(PAIRS)} (default: the dataset's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="distillation seeds")
    parser.add_argument("--epochs", type=int, help="epochs of a missing teacher (default: mnist 2, digits 20)")
    parser.add_argument("--teacher-steps", type=int, default=0, help="max_steps of a missing teacher (smoke tests; "
                                                                     "needs --teachers away from the cache)")
    parser.add_argument("--teachers", default=str(TEACHERS), help="where teachers are, or are trained to")
    parser.add_argument("--base", default="", help="overrides of every distillation (e.g. student_updates=1000)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report", action="store_true", help="no training: rebuild the results from runs/pairs-NAME")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="no training: one report from the runs of "
                                                                   "these results files (pairs_*.json)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="results directory")
    args = parser.parse_args(argv)
    try:
        labels = select(args.pairs, args.dataset)
    except ValueError as err:
        parser.error(str(err))
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report"]
    command = "python benchmarks/pairs.py " + " ".join(map(shlex.quote, argv))
    if args.merge:
        return merge(args, command)
    teachers = args.teachers
    if args.teacher_steps and Path(teachers).expanduser() == Path(TEACHERS).expanduser():
        parser.error("--teacher-steps trains throwaway teachers: pass --teachers DIR, not the shared cache")
    epochs = args.epochs or DATASETS[args.dataset]["epochs"]
    out = REPO / "runs" / f"pairs-{args.name}"
    if args.report and not out.is_dir():
        parser.error(f"--report: no runs to report, {out.relative_to(REPO)} does not exist; run without --report")
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()

    missing = [] if args.report else sorted({t for t in (PAIRS[p][0] for p in labels)
                                             if not Path(teacher_file(teachers, t, args.dataset)).expanduser().is_file()})
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda t: train_teacher(t, args.dataset, teacher_file(teachers, t, args.dataset), epochs,
                                              args.teacher_steps, args.threads, out / f"teacher-{t}.log"), missing))
    base = ["recipe=default", *DATASETS[args.dataset]["overrides"], *shlex.split(args.base)]

    def distill(job: Tuple[str, int, List[str]]) -> Dict:
        label, seed, overrides = job
        name = f"{label}-s{seed}"
        run = (reported_run(name, overrides, out) if args.report
               else run_variant(name, base, overrides, out, args.threads))
        return {**run, "pair": label, "seed": seed, "gen_classes": gen_classes(out / name)}

    with ThreadPoolExecutor(1 if args.report else args.jobs) as pool:
        runs = list(pool.map(distill, distillations(labels, args.seeds, teachers, args.dataset)))
    if args.report:
        machine = {**machine, "load": "n/a (rebuilt with --report)"}
    rows = [summarise(label, [r for r in runs if r["pair"] == label]) for label in labels]
    write_results(Path(args.results), f"pairs_{args.name}",
                  {"machine": machine, "command": command, "dataset": args.dataset, "base": base, "teacher_epochs": epochs,
                   "pairs": rows, "runs": runs}, markdown(args.name, args.dataset, rows, machine, [command], base))
    return 0


def merge(args: argparse.Namespace, command: str) -> int:
    """``--merge``: the report of runs made by earlier invocations, read from their results files."""
    try:
        runs, sources, first = merged_runs(args.merge, args.dataset)
    except (OSError, ValueError, KeyError) as err:
        sys.exit(f"pairs: --merge: {err}")
    labels = args.pairs or [p for p in PAIRS if any(r["pair"] == p for r in runs)]  # --pairs: checked by main
    runs = [r for r in runs if r["pair"] in labels]
    machine = {**first["machine"], "load": f"n/a (merged from {len(args.merge)} results files)"}
    rows = [summarise(label, [r for r in runs if r["pair"] == label]) for label in labels]
    commands = [s["command"] for s in sources]
    text = markdown(args.name, args.dataset, rows, machine, commands, first["base"]) + f"\nMerged by `{command}`.\n"
    write_results(Path(args.results), f"pairs_{args.name}",
                  {"machine": machine, "command": command, "commands": commands,
                   "machines": [s["machine"] for s in sources], "dataset": args.dataset,
                   "base": first["base"], "teacher_epochs": first["teacher_epochs"], "pairs": rows, "runs": runs},
                  text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
