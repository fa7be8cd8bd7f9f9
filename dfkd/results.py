"""What ``dfkd compare`` writes: a comparison's table (results.md, results.csv), its accuracy-against-time plot, and
every run's config, summary and metrics in one file (runs.jsonl.gz), from which all of it can be re-derived."""
from __future__ import annotations

import gzip
import json
import statistics
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from dfkd.schema import Config

FRACTIONS = (0.90, 0.95, 0.97, 0.99)  # time-to-accuracy thresholds, as fractions of the teacher's accuracy
TTA = {f: f"tta{round(f * 100)}" for f in FRACTIONS}  # their results.csv column prefix
TTF = {f: f"ttf{round(f * 100)}" for f in FRACTIONS}  # time-to-fidelity: agreement with the teacher >= f * 100 %
NOT_REACHED = "not reached"


def time_to_accuracy(evaluations: List[Dict], target: float, key: str = "test_acc") -> Optional[float]:
    """Training seconds at the first evaluation with test accuracy (or ``key``) >= target; None if never reached."""
    return next((e["train_s"] for e in evaluations if e.get(key, -1.0) >= target), None)


def mean_std(values: List[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(name: str, runs: List[Dict]) -> Dict:
    """One results.csv row: a scheme's runs over seeds; time-to-accuracy over the seeds that reached it."""
    s = [r["summary"] for r in runs]
    row = {"scheme": name, "seeds": len(runs), "teacher_acc": s[0].get("teacher_acc")}
    for key in ("student_final_acc", "student_best_acc", "student_final_fidelity", "student_best_fidelity"):
        if all(key in x for x in s):  # runs without labelled data have no accuracy; older runs no fidelity
            row[f"{key}_mean"], row[f"{key}_std"] = (round(v, 3) for v in mean_std([x[key] for x in s]))
    for key in ("train_seconds", "eval_seconds", "wall_seconds", "student_updates", "generator_updates"):
        row[f"{key}_mean"] = round(statistics.mean(x[key] for x in s), 3)
    row["seconds_per_student_update"] = round(statistics.mean(x["train_seconds"] / x["student_updates"] for x in s), 6)
    for times, tags in (("tta", TTA), ("ttf", TTF)):
        for fraction in FRACTIONS:
            tag, reached = tags[fraction], [t for r in runs if (t := r[times][fraction]) is not None]
            mean, std = (round(v, 2) for v in mean_std(reached)) if reached else (NOT_REACHED, "")
            row[f"{tag}_seconds_mean"], row[f"{tag}_seconds_std"] = mean, std
            row[f"{tag}_reached"] = f"{len(reached)}/{len(runs)}"
    return row


def format_tta(row: Dict, fraction: float, tags: Dict[float, str] = TTA) -> str:
    """A results.md time-to-accuracy (or, with ``TTF``, time-to-fidelity) cell: mean ± std, how many seeds reached
    it if not all, or not reached."""
    tag = tags[fraction]
    reached, total = row[f"{tag}_reached"].split("/")
    text = NOT_REACHED if reached == "0" else f"{row[f'{tag}_seconds_mean']:.1f} ± {row[f'{tag}_seconds_std']:.1f}"
    return text if reached in ("0", total) else f"{text} ({reached}/{total} seeds)"


def write_markdown(path: Path, rows: List[Dict], order: str, labels: List[str], cfg, base: Config,
                   machine: Dict[str, str], command: str, total_s: float) -> None:
    """results.md: the table, how it was measured (``order``: the runs in the order they ran; ``labels``: what each
    named entry ran), on which machine, with the command; ``cfg`` is compare's own settings."""
    head = ["scheme", "teacher acc %", "student final acc %", "student best acc %", "student final fidelity %",
            "train s", "eval s", "wall s", "ms / student update", "student updates", "generator updates"]
    head += [f"s to {round(f * 100)}% of teacher" for f in FRACTIONS] + ["s to 95% agreement"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scheme"], f"{r['teacher_acc']:.2f}",
                 f"{r['student_final_acc_mean']:.2f} ± {r['student_final_acc_std']:.2f}",
                 f"{r['student_best_acc_mean']:.2f} ± {r['student_best_acc_std']:.2f}",
                 f"{r['student_final_fidelity_mean']:.2f} ± {r['student_final_fidelity_std']:.2f}"
                 if "student_final_fidelity_mean" in r else "-",
                 f"{r['train_seconds_mean']:.1f}", f"{r['eval_seconds_mean']:.1f}", f"{r['wall_seconds_mean']:.1f}",
                 f"{1000 * r['seconds_per_student_update']:.1f}", f"{r['student_updates_mean']:g}",
                 f"{r['generator_updates_mean']:g}"] + [format_tta(r, f) for f in FRACTIONS] + [format_tta(r, 0.95, TTF)]
        table.append("| " + " | ".join(cells) + " |")
    budget = (f"{base.max_train_seconds:g} training seconds per run (ending at the first whole cycle past it; at most "
              f"{base.student_updates} student updates, the {base.lr_schedule} lr schedule's horizon)"
              if base.max_train_seconds else f"{base.student_updates} student updates per run")
    entries = f"\nEntries: {'; '.join(labels)}.\n" if labels else ""
    text = f"""# dfkd compare: {base.recipe}

`{command}`

{base.teacher.name} -> {base.student.name} on {base.data.dataset}, loss {base.loss}, batch {base.batch_size},
budget {budget}, evaluation every {base.eval_every} student updates, {cfg.seeds} seed(s) per scheme
(mean ± sample std over seeds; times are means).

{chr(10).join(table)}
{entries}
## How it was timed
- Machine: {machine['cpu']}, {machine['cores']} usable cores, torch {machine['torch']} with {machine['torch_threads']} threads,
  GPU: {machine['gpu']}, Python {machine['python']}, {machine['date']}; 1-minute load average {machine['load']} at the start,
  {machine['load_end']} at the end (other work on the machine shows here).
- One process ran every run on this machine, interleaved: seed by seed, every scheme in turn, the starting scheme
  rotated one place per seed. Run order: {order}.
- Warm-up excluded: before the measured runs, one discarded run of {cfg.warmup} student updates per scheme (0: none),
  so that lazy initialisation, allocator, thread pool and first data load do not land on the first measured run.
- *train s* is the training clock: time inside the step functions only (dfkd/trainer.py); test-set evaluation is
  timed apart (*eval s*) and excluded from train s, ms / student update and time-to-accuracy. On CUDA the trainer
  synchronises the device before it reads the clock. *wall s*: a run's whole loop, evaluation included.
- Time-to-accuracy: training seconds at the first evaluation whose test accuracy reaches 90 / 95 / 97 / 99 % of the
  teacher's; resolution is one evaluation interval; mean over the seeds that reached it. Time-to-agreement: the
  same for 95 % top-1 agreement with the teacher on the held-out generated images (fidelity, docs/evaluation.md).
- *student best acc*: the test accuracy of student_best.safetensors, the evaluation that agreed most with the
  teacher on the held-out generated images (chosen without the test set).
- Whole comparison: {total_s:.0f} s. Per run: one line of runs.jsonl.gz (entry, seed, folder, config, summary,
  every metrics record), from runs/<folder>-s<seed>/ (config.yaml, metrics.jsonl, summary.json).
"""
    path.write_text(text)


def plot_accuracy_vs_time(by_scheme: Dict[str, List[Dict]], teacher_acc: float, path: Path) -> List[Dict]:
    """Test accuracy against training seconds (left) and against student updates (middle), and, where the runs
    measured it, held-out fidelity against training seconds (right); per scheme the mean over seeds (evaluations
    matched by index), shaded min-max; the teacher as a horizontal line. Returns the lines of the left panel as
    drawn: label, colour, x, y."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fidelity = all("fidelity_agree" in e for runs in by_scheme.values() for r in runs for e in r["evaluations"])
    fig = Figure(figsize=(19 if fidelity else 13, 4.5))
    by_time, by_update, *agree = fig.subplots(1, 3 if fidelity else 2)
    for name, runs in by_scheme.items():
        n = min(len(r["evaluations"]) for r in runs)
        panels = [(by_time, "train_s", "test_acc"), (by_update, "update", "test_acc")]
        for ax, key, measure in panels + [(agree[0], "train_s", "fidelity_agree")] * bool(agree):
            ys = [[r["evaluations"][i][measure] for r in runs] for i in range(n)]
            x = [statistics.mean(r["evaluations"][i][key] for r in runs) for i in range(n)]
            (line,) = ax.plot(x, [statistics.mean(a) for a in ys], marker="o", markersize=3, label=name)
            ax.fill_between(x, [min(a) for a in ys], [max(a) for a in ys], color=line.get_color(), alpha=0.2, lw=0)
    for ax in agree:  # no labels needed: the held-out generated images of dfkd/fidelity.py
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel("agreement with the teacher, held-out generated images (%)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    for ax, label in ((by_time, "training seconds (evaluation excluded)"), (by_update, "student updates")):
        ax.axhline(teacher_acc, color="black", linestyle="--", linewidth=1, zorder=1,
                   label=f"teacher ({teacher_acc:.2f}%)")
        ax.set_xlabel(label)
        ax.set_ylabel("student test accuracy (%)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    handles, labels = by_time.get_legend_handles_labels()  # long entries (scheme+overrides) wrap at each +
    by_time.legend(handles, [textwrap.fill(label.replace("+", " +"), 48).replace(" +", "+") for label in labels],
                   loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return [{"label": ln.get_label(), "color": to_hex(ln.get_color()), "x": [float(v) for v in ln.get_xdata()],
             "y": [float(v) for v in ln.get_ydata()]} for ln in by_time.get_lines()]


def run_record(entry: str, seed: int, run_dir: Path) -> Dict:
    """One run as runs.jsonl.gz keeps it: entry, seed, folder, resolved config, summary, every metrics record."""
    with open(run_dir / "metrics.jsonl") as lines:
        metrics = [json.loads(line) for line in lines]
    return {"entry": entry, "seed": seed, "run": run_dir.name,
            "config": OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")),
            "summary": json.loads((run_dir / "summary.json").read_text()), "metrics": metrics}


def write_runs(path: Path, records: List[Dict]) -> None:
    """Every run of a comparison in one file, one JSON line each; gzip without a timestamp (same runs, same bytes)."""
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0))


def read_runs(path: Path) -> List[Dict]:
    """The run records of a runs.jsonl.gz (``zcat runs.jsonl.gz`` shows them too)."""
    return [json.loads(line) for line in gzip.decompress(Path(path).read_bytes()).decode().splitlines()]


def measured(record: Dict) -> Dict:
    """A run record with what the table and the plot are made of: its evaluations and time-to-accuracy."""
    evaluations = [m for m in record["metrics"] if "test_acc" in m or "fidelity_agree" in m]
    teacher_acc = record["summary"].get("teacher_acc")  # none without labelled data: no time-to-accuracy
    return {**record, "evaluations": evaluations,
            "tta": {f: None if teacher_acc is None else time_to_accuracy(evaluations, f * teacher_acc)
                    for f in FRACTIONS},
            "ttf": {f: time_to_accuracy(evaluations, f * 100, "fidelity_agree") for f in FRACTIONS}}


def print_and_write(text: str, out: Optional[Path] = None) -> int:
    """A benchmark's markdown table: printed, and written to ``out`` if given; exit code 0."""
    if out:
        Path(out).write_text(text)
    print(text)
    return 0
