"""Robustness beyond digits: the default recipe on Fashion-MNIST teachers of six families, against plain KD.

    python benchmarks/robustness.py --name fashion --seeds 0 1 2 --jobs 2        # every pair, 3 seeds
    python benchmarks/robustness.py --name fashion --report                      # rebuild the tables from the runs
    python benchmarks/robustness.py --name smoke --pairs lenet --seeds 0 --teachers /tmp/t --teacher-steps 20 \
        --base "student_updates=40 eval_every=20 batch_size=32"

Each pair is distilled twice per seed with ``recipe=default`` unchanged except for the pair (teacher, its
checkpoint, student) and ``data.dataset``: data-free, and with ``scheme=real_data`` (plain KD on the real
training split, the same student, loss, optimizer, schedule and number of student updates): the upper bound
data-free is judged against. A missing teacher is trained first (``teachers/train.py``, 1x32x32,
``--epochs``). Writes ``benchmarks/results/robustness_NAME.md`` (+ .json) and each pair's labelled
``samples.png`` (seed 0) under ``benchmarks/results/robustness_samples/``. Targets: data-free final
>= 95 % of the teacher and within 3 points of real-data KD; no run below 80 % of its teacher; final within
0.5 points of best; gen_classes >= 9. A run that finished (its ``summary.json``) is read, never rerun: run the
same command again and a stopped benchmark goes on with the runs it lacks.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from pairs import gen_classes, spread, teacher_file  # noqa: E402
from step_cost import write_results  # noqa: E402
from sweep import machine_phrase, reported_run, run_variant, table_head  # noqa: E402

from dfkd.card import card_beside, read_card  # noqa: E402
from dfkd.data import tensor_dataset  # noqa: E402
from dfkd.machine import command_line, machine_description  # noqa: E402
from dfkd.models.normalize import Normalize  # noqa: E402
from dfkd.results import mean_std  # noqa: E402
from dfkd.schema import DataConfig  # noqa: E402
from dfkd.weights import create_model, load_weights  # noqa: E402

# teacher: (its family, constructor keywords at 1x32x32)
TEACHERS = {
    "lenet5": ("LeNet-5, no normalisation layer", {}),
    "test_resnet": ("timm BatchNorm ResNet", {}),
    "test_efficientnet": ("timm BatchNorm EfficientNet (MobileNet blocks)", {}),
    "test_efficientnet_gn": ("timm GroupNorm EfficientNet", {}),
    "test_vit": ("timm LayerNorm ViT, 8x8 patches", {"img_size": 32, "patch_size": 8}),
    "lenet5_wide": ("wide LeNet-5 (4.5x), 1.2M parameters, no normalisation layer", {}),
}
SHORT = {"lenet5": "lenet", "test_resnet": "resnet", "test_efficientnet": "efficientnet",
         "test_efficientnet_gn": "gn", "test_vit": "vit", "lenet5_wide": "wide"}
STUDENTS = {"lenet5_half": "", "lenet5": "_lenet5"}  # student: suffix of its pairs' labels
PAIRS = {SHORT[t] + suffix: (t, s) for s, suffix in STUDENTS.items() for t in TEACHERS}
OF_TEACHER, OF_REAL, FAILURE, WITHIN_BEST, COVERAGE = 0.95, 3.0, 0.80, 0.5, 9.0
BRIGHTNESS_IMAGES = 500
BRIGHTNESS = {"x0.5": lambda p: p * 0.5, "x0.25": lambda p: p * 0.25, "x0.7+0.3": lambda p: p * 0.7 + 0.3}


@torch.no_grad()
def brightness_agreement(teacher: str, file: str, dataset: str, n: int = BRIGHTNESS_IMAGES) -> Dict[str, float]:
    """How much a teacher ignores brightness: top-1 agreement (%) of its predictions on ``n`` real test images
    with its predictions on the same images darkened or lifted (``BRIGHTNESS``, on 0-1 pixels)."""
    card = read_card(card_beside(file))  # the teacher's input contract, as a run reads it
    model = create_model(teacher, card["num_classes"], in_chans=1, **TEACHERS[teacher][1]).eval()
    load_weights(model, str(Path(file).expanduser()))
    data = DataConfig(dataset=dataset, channels=1, **{k: card[k] for k in ("image_size", "interpolation", "crop_pct")})
    pixels = tensor_dataset(data, train=False, normalize=False).tensors[0][:n]
    normalize = Normalize(card["mean"], card["std"])
    base = model(normalize(pixels)).argmax(1)
    return {name: round(100.0 * (model(normalize(f(pixels))).argmax(1) == base).float().mean().item(), 1)
            for name, f in BRIGHTNESS.items()}


def params(name: str, kwargs: Dict) -> int:
    return sum(p.numel() for p in create_model(name, 10, in_chans=1, **kwargs).parameters())


def train_teacher(teacher: str, dataset: str, file: str, epochs: int, steps: int, threads: int, log: Path) -> None:
    args = [sys.executable, str(REPO / "teachers" / "train.py"), f"model={teacher}", f"dataset={dataset}",
            "data.image_size=32", "data.channels=1", f"epochs={epochs}", f"out={file}",
            *[f"model_args.{k}={v}" for k, v in TEACHERS[teacher][1].items()], *([f"max_steps={steps}"] if steps else [])]
    print(f"[robustness] training teacher {teacher}: {' '.join(args[1:])}", flush=True)
    with open(log, "w") as f:
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        sys.exit(f"robustness: training {teacher} failed (exit code {done.returncode}); log {log}")


def summarise(label: str, runs: List[Dict]) -> Dict:
    """One pair over its seeds: teacher, real-data KD and data-free accuracies, ratios, coverage, failures."""
    teacher, student = PAIRS[label]
    row = {"pair": label, "teacher": teacher, "family": TEACHERS[teacher][0], "student": student,
           "teacher_params": params(teacher, TEACHERS[teacher][1]), "student_params": params(student, {})}
    free = [r for r in runs if r["kind"] == "data_free" and "summary" in r and "error" not in r]
    real = [r for r in runs if r["kind"] == "real_data" and "summary" in r and "error" not in r]
    row["errors"] = [f"{r['kind']} s{r['seed']}: {r.get('error', 'no summary.json')}" for r in runs
                     if r not in free and r not in real]
    row["seeds"] = [r["seed"] for r in free]
    if not free:
        return row
    s = [r["summary"] for r in free]
    row["teacher_acc"] = statistics.mean(x["teacher_acc"] for x in s)
    row["student_final_acc"] = [x["student_final_acc"] for x in s]
    # best: the highest test accuracy of any evaluation (the kept student is chosen by fidelity, without it)
    row["student_best_acc"] = [x.get("student_best_test_acc", x["student_best_acc"]) for x in s]
    for key in ("student_final_acc", "student_best_acc"):
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(row[key])
    row["real_kd"] = [r["summary"]["student_final_acc"] for r in real]
    if real:
        row["real_kd_mean"], row["real_kd_std"] = mean_std(row["real_kd"])
        row["gap_to_real"] = row["real_kd_mean"] - row["student_final_acc_mean"]
    row["of_teacher"] = [x["student_final_acc"] / x["teacher_acc"] for x in s]
    row["of_teacher_mean"] = statistics.mean(row["of_teacher"])
    coverage = [statistics.mean(r["gen_classes"]) for r in free if r["gen_classes"]]
    row["gen_classes_mean"] = statistics.mean(coverage) if coverage else None
    row["failures"] = sum(x["student_final_acc"] < FAILURE * x["teacher_acc"] for x in s)
    row["far_from_best"] = sum(f < b - WITHIN_BEST for f, b in zip(row["student_final_acc"], row["student_best_acc"]))
    row["train_seconds_mean"] = statistics.mean(x["train_seconds"] for x in s)
    return row


def targets(r: Dict) -> str:
    """Which of the pair's targets hold, the missed ones with their margin."""
    if "teacher_acc" not in r:
        return "did not finish"
    missed = []
    if r["of_teacher_mean"] < OF_TEACHER:
        missed.append(f"of teacher {r['of_teacher_mean']:.1%} < {OF_TEACHER:.0%}")
    if r.get("gap_to_real") is not None and r["gap_to_real"] > OF_REAL:
        missed.append(f"{r['gap_to_real']:.2f} points under real-data KD (> {OF_REAL:.0f})")
    if r["failures"]:
        missed.append(f"{r['failures']} run(s) < {FAILURE:.0%} of teacher")
    if r["far_from_best"]:
        missed.append(f"{r['far_from_best']} run(s) final < best - {WITHIN_BEST}")
    if r["gen_classes_mean"] is not None and r["gen_classes_mean"] < COVERAGE:
        missed.append(f"gen_classes {r['gen_classes_mean']:.2f} < {COVERAGE:.0f}")
    return "all met" if not missed else "missed: " + "; ".join(missed)


def markdown(name: str, rows: List[Dict], machine: Dict, command: str, base: List[str]) -> str:
    head = ["pair", "teacher (family)", "teacher %", "student", "params T / S", "real-data KD %", "data-free final %",
            "data-free best % (any evaluation)", "final / teacher", "final / real KD", "gen_classes", "failures (< 80 %)",
            "targets"]
    lines = [f"# Robustness beyond digits: {name}\n", f"`{command}`\n",
             f"Every run: `{' '.join(base)}` plus the pair's `teacher.name`, `teacher.checkpoint`, `student.name`, "
             f"`seed`; real-data KD adds `scheme=real_data`. {machine_phrase(machine)}\n", *table_head(head)]
    for r in rows:
        sizes = f"{r['teacher_params'] / 1e3:.1f}k / {r['student_params'] / 1e3:.1f}k"
        if "teacher_acc" not in r:
            lines.append("| " + " | ".join([r["pair"], r["teacher"], "", r["student"], sizes] + [""] * 7
                                           + ["did not finish: " + "; ".join(r["errors"])]) + " |")
            continue
        real = spread({"x": r["real_kd"], "x_mean": r.get("real_kd_mean"), "x_std": r.get("real_kd_std")}, "x") \
            if r["real_kd"] else "not run"
        of_real = f"{r['student_final_acc_mean'] / r['real_kd_mean']:.1%}" if r["real_kd"] else "-"
        cover = "n/a" if r["gen_classes_mean"] is None else f"{r['gen_classes_mean']:.2f}"
        lines.append("| " + " | ".join([
            r["pair"], f"{r['teacher']} ({r['family']})", f"{r['teacher_acc']:.2f}", r["student"], sizes, real,
            spread(r, "student_final_acc"), spread(r, "student_best_acc"), f"{r['of_teacher_mean']:.1%}", of_real,
            cover, f"{r['failures']} of {len(r['seeds'])}", targets(r)]) + " |")
    lines += ["\nEach seed, data-free final / best % (real-data KD final %):\n"]
    for r in rows:
        per_seed = ", ".join(f"s{s} {f:.2f} / {b:.2f}" for s, f, b in zip(
            r["seeds"], r.get("student_final_acc", []), r.get("student_best_acc", [])))
        real = ", ".join(f"{x:.2f}" for x in r.get("real_kd", []))
        lines.append(f"- `{r['pair']}`: {per_seed or '-'}" + (f" (real-data KD {real})" if real else "")
                     + (f"; did not finish: {'; '.join(r['errors'])}" if r["errors"] else ""))
    lines.append("\ngen_classes: exp of the entropy of the teacher's mean prediction on a generated batch (10: every "
                 "class equally often), mean over the training records after the first evaluation and over seeds. "
                 "final / teacher: mean over seeds of each run's final accuracy over its teacher's.\n")
    return "\n".join(lines)


def brightness_table(brightness: Dict[str, Dict[str, float]]) -> str:
    if not brightness:
        return ""
    lines = ["", "How much each teacher ignores brightness (`brightness_agreement`): top-1 agreement (%) of its "
             f"predictions on {BRIGHTNESS_IMAGES} real test images with its predictions on the same images, pixels p "
             "changed to:", "", *table_head(["teacher", *BRIGHTNESS])]
    lines += [f"| {t} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |" for t, row in brightness.items()]
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/robustness_NAME.md, runs/robustness-NAME")
    parser.add_argument("--dataset", default="fashion_mnist", help="the teachers' data and evaluation")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), help="default: the six teachers -> lenet5_half")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--real-seeds", nargs="*", type=int, help="seeds of the real-data KD runs (default: --seeds)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of a missing teacher")
    parser.add_argument("--teacher-steps", type=int, default=0, help="max_steps of a missing teacher (smoke tests)")
    parser.add_argument("--teachers", default="~/.cache/dfkd/teachers", help="where teachers are, or are trained to")
    parser.add_argument("--base", default="", help="overrides of every run (e.g. student_updates=1000)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report", action="store_true", help="no training: rebuild the results from the runs")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    labels = args.pairs or [SHORT[t] for t in TEACHERS]
    command = command_line("benchmarks/robustness.py", sys.argv[1:] if argv is None else argv)
    out = REPO / "runs" / f"robustness-{args.name}"
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    files = {t: teacher_file(args.teachers, t, args.dataset) for t in {PAIRS[p][0] for p in labels}}
    missing = [] if args.report else [t for t, f in files.items() if not Path(f).expanduser().is_file()]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda t: train_teacher(t, args.dataset, files[t], args.epochs, args.teacher_steps,
                                              args.threads, out / f"teacher-{t}.log"), missing))
    base = ["recipe=default", f"data.dataset={args.dataset}", *shlex.split(args.base)]
    seeds = {"data_free": args.seeds, "real_data": args.seeds if args.real_seeds is None else args.real_seeds}
    # seed by seed: a benchmark stopped early (then rebuilt with --report) has every pair at the same seeds
    jobs = [(label, seed, kind) for seed in sorted(set(seeds["data_free"]) | set(seeds["real_data"]))
            for label in labels for kind in seeds if seed in seeds[kind]]

    def distill(job) -> Dict:
        label, seed, kind = job
        teacher, student = PAIRS[label]
        name = f"{label}-{kind}-s{seed}"
        overrides = [f"teacher.name={teacher}", f"teacher.checkpoint={files[teacher]}", "teacher.train_if_missing=false",
                     f"student.name={student}", f"seed={seed}", *(["scheme=real_data"] if kind == "real_data" else [])]
        done = args.report or (out / name / "summary.json").is_file()  # a finished run is read, never rerun
        run = reported_run(name, overrides, out) if done else run_variant(name, base, overrides, out, args.threads)
        return {**run, "pair": label, "seed": seed, "kind": kind,
                "gen_classes": gen_classes(out / name) if kind == "data_free" else []}

    unstarted = [f"{label}-{kind}-s{seed}" for label, seed, kind in jobs if not (out / f"{label}-{kind}-s{seed}").is_dir()]
    if args.report:  # runs never started are listed, not counted as failures
        jobs = [j for j in jobs if f"{j[0]}-{j[2]}-s{j[1]}" not in unstarted]
    with ThreadPoolExecutor(1 if args.report else args.jobs) as pool:
        runs = list(pool.map(distill, jobs))
    rows = [summarise(label, [r for r in runs if r["pair"] == label]) for label in labels]
    samples = Path(args.results) / "robustness_samples"
    for label in labels:  # what the generator makes for each teacher, labelled with the teacher's classes
        grid = out / f"{label}-data_free-s{min(args.seeds)}" / "samples.png"
        if grid.is_file():
            samples.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, samples / f"{args.name}_{label}.png")
    teachers = sorted({PAIRS[label][0] for label in labels}, key=list(TEACHERS).index)
    brightness = {t: brightness_agreement(t, files[t], args.dataset) for t in teachers if card_beside(files[t])}
    write_results(Path(args.results), f"robustness_{args.name}",
                  {"machine": machine, "command": command, "dataset": args.dataset, "base": base,
                   "teacher_epochs": args.epochs, "pairs": rows, "runs": runs, "brightness": brightness},
                  markdown(args.name, rows, machine, command, base)
                  + (f"\nNever started (left out): {', '.join(unstarted)}.\n" if args.report and unstarted else "")
                  + brightness_table(brightness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
