"""``dfkd compare``: one recipe under several schemes and seeds, side by side, timed honestly.

    dfkd compare recipe=default schemes=[two_stage_k5,two_stage_k1,one_stage,hybrid_k5] seeds=3 budget=updates:2000

Every run shares the models, data, budget (student updates, or training seconds with
``budget=time:S``) and evaluation schedule; only the scheme and the seed change. Other
``key=value`` arguments are recipe overrides, as for ``dfkd distill``. Writes into ``out``:
results.md, results.csv (one row per scheme), runs.csv (one row per run, in run order),
accuracy_vs_time.png (+ .json: the plotted lines) and runs/<scheme>-s<seed>/.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dfkd.config import ALL_KEYS, Config, DfkdError, load_config

SCHEME_NAME = re.compile(r"^(?:(one_stage)|(two_stage|hybrid)_k([1-9][0-9]*))$")
FRACTIONS = (0.90, 0.95, 0.97)  # time-to-accuracy thresholds, as fractions of the teacher's accuracy
SET_BY_COMPARE = ("scheme", "k", "run_name", "out_dir")


@dataclass
class CompareConfig:
    schemes: List[str] = field(default_factory=lambda: ["two_stage_k5", "two_stage_k1", "one_stage", "hybrid_k5"])
    seeds: int = 3  # seeds seed, seed+1, ... (seed from the recipe, 0 by default)
    budget: Optional[str] = None  # updates:N | time:SECONDS; null: the recipe's student_updates
    warmup: int = 20  # student updates of one discarded run per scheme before the measured runs; 0: none
    out: Optional[str] = None  # results directory; null: <out_dir>/compare-<recipe>-<date>-<time>
    threads: Optional[int] = None  # torch.set_num_threads for every run; null: torch's default


COMPARE_KEYS = [f.name for f in fields(CompareConfig)]


def parse_scheme(name: str) -> Tuple[str, int]:
    """``two_stage_k5`` -> ("two_stage", 5); ``one_stage`` -> ("one_stage", 1); ``hybrid_k5`` -> ("hybrid", 5)."""
    match = SCHEME_NAME.match(name)
    if not match:
        raise DfkdError(f"scheme '{name}' is not one_stage, two_stage_kN or hybrid_kN (e.g. two_stage_k5)")
    return ("one_stage", 1) if match.group(1) else (match.group(2), int(match.group(3)))


def budget_overrides(budget: Optional[str]) -> List[str]:
    """The recipe overrides that set the budget: ``updates:N`` or ``time:SECONDS`` of training clock."""
    if budget is None:
        return []
    kind, _, amount = budget.partition(":")
    if kind == "updates" and amount.isdigit() and int(amount) >= 1:
        return [f"student_updates={int(amount)}"]
    if kind == "time" and re.fullmatch(r"[0-9]+(\.[0-9]*)?", amount) and float(amount) > 0:
        if "max_train_seconds" not in ALL_KEYS:
            raise DfkdError(f"budget={budget} is not supported yet: the trainer has no max_train_seconds key; "
                            "use budget=updates:N")
        return [f"max_train_seconds={float(amount)}"]
    raise DfkdError(f"budget '{budget}' is not updates:N or time:SECONDS (e.g. budget=updates:2000 or budget=time:600)")


def parse_args(argv: List[str]) -> Tuple[CompareConfig, List[str]]:
    """Split ``key=value`` arguments into compare's own settings and the recipe overrides."""
    own, recipe = [], []
    for arg in argv:
        if "=" not in arg:
            raise DfkdError(f"argument '{arg}' is not key=value (e.g. recipe=default seeds=3)")
        key = arg.split("=", 1)[0].strip()
        if key in SET_BY_COMPARE:
            raise DfkdError(f"'{key}' is set by compare for each run; choose schemes=[...] and out=DIR instead")
        (own if key in COMPARE_KEYS else recipe).append(arg)
    try:
        cfg: CompareConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CompareConfig),
                                                                 OmegaConf.from_dotlist(own)))
    except OmegaConfBaseException as err:
        raise DfkdError(f"bad compare argument: {str(err).splitlines()[0]}") from err
    if cfg.seeds < 1 or cfg.warmup < 0 or (cfg.threads is not None and cfg.threads < 1):
        raise DfkdError(f"need seeds >= 1, warmup >= 0 and threads >= 1 or null, got seeds={cfg.seeds} "
                        f"warmup={cfg.warmup} threads={cfg.threads}")
    if not cfg.schemes or len(set(cfg.schemes)) != len(cfg.schemes):
        raise DfkdError(f"schemes must be a non-empty list without repeats, got {cfg.schemes}")
    if cfg.budget and any(a.split("=", 1)[0].strip() == "student_updates" for a in recipe):
        raise DfkdError("give the budget once: budget=updates:N or student_updates=N, not both")
    for name in cfg.schemes:
        parse_scheme(name)
    return cfg, recipe


def run_config(recipe: List[str], scheme: str, seed: int, out_dir: Path, extra: List[str] = ()) -> Config:
    """The config of one run: the shared recipe overrides plus this run's scheme, k, seed and directory."""
    kind, k = parse_scheme(scheme)
    return load_config([*recipe, f"scheme={kind}", f"k={k}", f"seed={seed}", f"out_dir={out_dir}",
                        f"run_name={scheme}-s{seed}", *extra])


def read_evaluations(run_dir: Path) -> List[Dict]:
    """The evaluation records of a run's metrics.jsonl: update, train_s (training clock) and test_acc."""
    with open(run_dir / "metrics.jsonl") as lines:
        return [r for r in map(json.loads, lines) if "test_acc" in r]


def time_to_accuracy(evaluations: List[Dict], target: float) -> Optional[float]:
    """Training seconds at the first evaluation with test accuracy >= target; None if never reached."""
    return next((e["train_s"] for e in evaluations if e["test_acc"] >= target), None)


def machine_description() -> Dict[str, str]:
    """CPU model, usable cores, torch version and threads, GPU, UTC date: stated next to every timing."""
    import torch

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": str(cores), "torch": torch.__version__, "torch_threads": str(torch.get_num_threads()),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "python": platform.python_version(), "load": f"{os.getloadavg()[0]:.2f}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(name: str, runs: List[Dict]) -> Dict:
    """One results.csv row: a scheme's runs averaged over seeds (std is the sample std, 0 for one seed)."""
    s = [r["summary"] for r in runs]
    row = {"scheme": name, "seeds": len(runs), "teacher_acc": s[0]["teacher_acc"]}
    for key in ("student_final_acc", "student_best_acc"):
        row[f"{key}_mean"], row[f"{key}_std"] = (round(v, 3) for v in mean_std([x[key] for x in s]))
    for key in ("train_seconds", "eval_seconds", "wall_seconds", "student_updates", "generator_updates"):
        row[f"{key}_mean"] = round(statistics.mean(x[key] for x in s), 3)
    row["seconds_per_student_update"] = round(statistics.mean(x["train_seconds"] / x["student_updates"] for x in s), 6)
    for fraction in FRACTIONS:
        reached = [t for r in runs if (t := r["tta"][fraction]) is not None]
        tag = f"tta{round(fraction * 100)}"
        mean, std = mean_std(reached) if reached else (None, None)  # None: written as an empty CSV cell
        row[f"{tag}_seconds_mean"] = None if mean is None else round(mean, 2)
        row[f"{tag}_seconds_std"] = None if std is None else round(std, 2)
        row[f"{tag}_reached"] = f"{len(reached)}/{len(runs)}"
    return row


def format_tta(row: Dict, fraction: float) -> str:
    tag = f"tta{round(fraction * 100)}"
    reached, total = row[f"{tag}_reached"].split("/")
    if reached == "0":
        return "not reached"
    text = f"{row[f'{tag}_seconds_mean']:.1f} ± {row[f'{tag}_seconds_std']:.1f}"
    return text if reached == total else f"{text} ({reached}/{total} seeds)"


def write_markdown(path: Path, rows: List[Dict], runs: List[Dict], cfg: CompareConfig, base: Config,
                   machine: Dict[str, str], command: str, total_s: float) -> None:
    head = ["scheme", "teacher acc %", "student final acc %", "student best acc %", "train s", "eval s", "wall s",
            "ms / student update", "student updates", "generator updates"]
    head += [f"s to {round(f * 100)}% of teacher" for f in FRACTIONS]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scheme"], f"{r['teacher_acc']:.2f}",
                 f"{r['student_final_acc_mean']:.2f} ± {r['student_final_acc_std']:.2f}",
                 f"{r['student_best_acc_mean']:.2f} ± {r['student_best_acc_std']:.2f}",
                 f"{r['train_seconds_mean']:.1f}", f"{r['eval_seconds_mean']:.1f}", f"{r['wall_seconds_mean']:.1f}",
                 f"{1000 * r['seconds_per_student_update']:.1f}", f"{r['student_updates_mean']:g}",
                 f"{r['generator_updates_mean']:g}"] + [format_tta(r, f) for f in FRACTIONS]
        table.append("| " + " | ".join(cells) + " |")
    budget = cfg.budget or f"updates:{base.student_updates}"
    order = ", ".join(f"{r['scheme']} s{r['seed']}" for r in runs)
    text = f"""# dfkd compare: {base.recipe}

`{command}`

{base.teacher.name} -> {base.student.name} on {base.data.dataset}, loss {base.loss}, batch {base.batch_size},
budget {budget}, evaluation every {base.eval_every} student updates, {cfg.seeds} seed(s) per scheme
(mean ± sample std over seeds; times are means).

{chr(10).join(table)}

## How it was timed
- Machine: {machine['cpu']}, {machine['cores']} usable cores, torch {machine['torch']} with {machine['torch_threads']}
  threads, GPU: {machine['gpu']}, Python {machine['python']}, {machine['date']}; 1-minute load average
  {machine['load']} at the start, {machine['load_end']} at the end (other work on the machine shows here).
- One process ran every run on this machine, interleaved so that machine noise hits the schemes alike: for
  each seed, each scheme in turn. Run order: {order}.
- Warm-up excluded: before the measured runs, one discarded run of {cfg.warmup} student updates per scheme
  (lazy initialisation, allocator, thread pool, first data load do not land on the first measured scheme).
- *train s* is the training clock: time inside the step functions only (dfkd/trainer.py); test-set
  evaluation is timed apart (*eval s*) and excluded from train s, ms / student update and time-to-accuracy.
  On CUDA the trainer synchronises the device before it reads the clock. *wall s* is a run's loop wall time.
- Time-to-accuracy: training seconds at the first evaluation whose test accuracy reaches 90 / 95 / 97 % of
  the teacher's; resolution is one evaluation interval; mean over the seeds that reached it.
- Whole comparison: {total_s:.0f} s. Per run: runs.csv and runs/<scheme>-s<seed>/ (config, metrics, summary).
"""
    path.write_text(text)


def plot_accuracy_vs_time(by_scheme: Dict[str, List[Dict]], teacher_acc: float, path: Path) -> List[Dict]:
    """Test accuracy against training seconds: per scheme the mean over seeds, shaded min-max.

    Evaluations are matched by index (the same student updates for every seed). Returns the lines as
    drawn (read back from the axes), which are also written next to the PNG as JSON.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, runs in by_scheme.items():
        n = min(len(r["evaluations"]) for r in runs)
        x = [statistics.mean(r["evaluations"][i]["train_s"] for r in runs) for i in range(n)]
        accs = [[r["evaluations"][i]["test_acc"] for r in runs] for i in range(n)]
        (line,) = ax.plot(x, [statistics.mean(a) for a in accs], marker="o", markersize=3, label=name)
        ax.fill_between(x, [min(a) for a in accs], [max(a) for a in accs], color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(teacher_acc, color="black", linestyle="--", linewidth=1, label=f"teacher ({teacher_acc:.2f}%)")
    ax.set_xlabel("training seconds (wall clock, evaluation excluded)")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    lines = [{"label": ln.get_label(), "x": [float(v) for v in ln.get_xdata()], "y": [float(v) for v in ln.get_ydata()]}
             for ln in ax.get_lines()]
    plt.close(fig)
    return lines


def write_csv(path: Path, rows: List[Dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (nothing when None), restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_all(cfg: CompareConfig, recipe: List[str], plan: List[Tuple[int, str, Config]]) -> List[Dict]:
    """The discarded warm-up runs, then every planned run in order; returns the runs with their evaluations."""
    from dfkd.trainer import distill  # late import: `dfkd compare --help` and argument errors stay fast

    if cfg.warmup:
        with tempfile.TemporaryDirectory() as tmp:
            for scheme in cfg.schemes:
                print(f"[dfkd compare] warm-up (discarded): {scheme}, {cfg.warmup} student updates", flush=True)
                distill(run_config(recipe, scheme, plan[0][0], Path(tmp),
                                   [f"student_updates={cfg.warmup}", f"eval_every={cfg.warmup}"]))
    runs = []
    for order, (seed, scheme, run_cfg) in enumerate(plan, 1):
        print(f"[dfkd compare] run {order}/{len(plan)}: {scheme} seed {seed}", flush=True)
        summary = distill(run_cfg)
        evaluations = read_evaluations(Path(summary["run_dir"]))
        tta = {f: time_to_accuracy(evaluations, f * summary["teacher_acc"]) for f in FRACTIONS}
        runs.append({"order": order, "scheme": scheme, "seed": seed, "summary": summary,
                     "evaluations": evaluations, "tta": tta})
    return runs


def run_row(run: Dict) -> Dict:
    """One runs.csv row: a run's place in the order, its summary numbers and time-to-accuracy."""
    keys = ("teacher_acc", "student_final_acc", "student_best_acc", "train_seconds", "eval_seconds", "wall_seconds",
            "student_updates", "generator_updates", "run_dir")
    return {"order": run["order"], "scheme": run["scheme"], "seed": run["seed"],
            **{k: run["summary"][k] for k in keys},
            **{f"tta{round(f * 100)}_seconds": run["tta"][f] for f in FRACTIONS}}


def compare(argv: List[str]) -> Path:
    """Run the comparison described by ``argv``; returns the results directory."""
    cfg, recipe = parse_args(argv)
    recipe += budget_overrides(cfg.budget)
    base = load_config(recipe)
    out = Path(cfg.out or Path(base.out_dir) / f"compare-{base.recipe}-{datetime.now():%Y%m%d-%H%M%S}").expanduser()
    seeds = [base.seed + i for i in range(cfg.seeds)]
    plan = [(seed, scheme, run_config(recipe, scheme, seed, out / "runs")) for seed in seeds for scheme in cfg.schemes]
    for _, scheme, run_cfg in plan[:len(cfg.schemes)]:  # checked before the first run starts
        for key in ("student_updates", "eval_every"):
            if getattr(run_cfg, key) % run_cfg.k:
                raise DfkdError(f"{key}={getattr(run_cfg, key)} is not a multiple of k={run_cfg.k} ({scheme}): the "
                                "schemes would differ in budget or evaluation points; choose a multiple of every k")
    command = "dfkd compare " + " ".join(shlex.quote(a) for a in argv)
    with torch_threads(cfg.threads):
        machine = machine_description()
        start = time.perf_counter()
        runs = run_all(cfg, recipe, plan)
        total_s = time.perf_counter() - start
    machine["load_end"] = f"{os.getloadavg()[0]:.2f}"

    by_scheme = {name: [r for r in runs if r["scheme"] == name] for name in cfg.schemes}
    rows = [summarise(name, group) for name, group in by_scheme.items()]
    write_csv(out / "results.csv", rows)
    write_csv(out / "runs.csv", [run_row(r) for r in runs])
    write_markdown(out / "results.md", rows, runs, cfg, base, machine, command, total_s)
    lines = plot_accuracy_vs_time(by_scheme, runs[0]["summary"]["teacher_acc"], out / "accuracy_vs_time.png")
    (out / "accuracy_vs_time.json").write_text(json.dumps({"lines": lines}, indent=1) + "\n")
    print(f"[dfkd compare] {len(runs)} runs in {total_s:.0f} s: {out / 'results.md'}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        compare(argv)
    except DfkdError as err:
        print(f"dfkd compare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
