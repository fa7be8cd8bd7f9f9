"""``dfkd evaluate``: an exported student beside its teacher.

    dfkd evaluate runs/default-one_stage-s0/export/student.onnx [--limit N] [--out FILE] [--plot FILE.png]

``dfkd evaluate`` puts an exported student (or a run directory's weights) beside its teacher, run in the
same format: parameters, file size, CPU latency at batch 1 and 64, and test accuracy on raw 0-1 images.
An ONNX student exported with ``onnx_int8`` gets the whole frontier: teacher and student, fp32 and int8, the
teacher quantized as the student was (same calibration images of the same run, dfkd/quantize.py); ``--plot``
draws accuracy against file size.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from dfkd.accuracy import Predict, accuracy, real_batches
from dfkd.artifacts import load_card, make_card, read_run
from dfkd.errors import DfkdError, one_line_errors
from dfkd.formats import FILES, SUFFIXES, RawImageModel, reload, write
from dfkd.machine import machine_description
from dfkd.quantize import Calibration, quantize_checked
from dfkd.teacher import load_teacher


def latency_ms(predicts: Dict[str, Predict], example: torch.Tensor, seconds: float) -> Dict[str, float]:
    """Median milliseconds per image for each model on ``example``; models take turns in five rounds,
    so a neighbour's load on a shared CPU hits teacher and student alike."""
    times: Dict[str, List[float]] = {name: [] for name in predicts}
    for predict in [p for p in predicts.values() for _ in range(3)]:  # warm-up: first-call work of ORT/JIT
        predict(example)
    for _ in range(5):
        for name, predict in predicts.items():
            stop = time.perf_counter() + seconds / 5
            while time.perf_counter() < stop or len(times[name]) < 3:
                tick = time.perf_counter()
                predict(example)
                times[name].append(time.perf_counter() - tick)
    return {name: 1000 * statistics.median(t) / len(example) for name, t in times.items()}


def resolve_artifact(path: Path, which: str) -> Tuple[Dict, str, Path]:
    """(card, format, file) for an exported file (card beside it) or a run directory / its checkpoint."""
    if path.is_dir():
        card = make_card(path, which)
        return card, "safetensors", Path(card["weights"])
    if not path.is_file():
        raise DfkdError(f"'{path}' not found; pass a run directory or an exported student.safetensors/.pt/.onnx")
    fmt = SUFFIXES.get(path.suffix)
    if fmt is None:
        raise DfkdError(f"'{path.name}' is not a dfkd artifact; expected one of {', '.join(SUFFIXES)} or a run dir")
    if (path.parent / "student.json").is_file():
        return load_card(path.parent / "student.json"), fmt, path
    if fmt == "safetensors" and (path.parent / "config.yaml").is_file():
        return make_card(path.parent, which, weights=path), fmt, path
    raise DfkdError(f"no student.json beside '{path}': export it with dfkd export RUN_DIR")


def model_rows(card: Dict, fmt: str, path: Path, example: torch.Tensor, tmp: Path) -> Dict[str, Dict]:
    """Row name -> arch, params, MB, predict: the teacher (exported to ``fmt`` in ``tmp``) and the student's file;
    for an ONNX student exported with onnx_int8, the fp32 and int8 files beside it, and the teacher in int8 too."""
    t = card["teacher"]
    teacher = load_teacher(t, card["num_classes"], card["input_size"][0])
    t_card, t_arch = {**card, "architecture": t["name"]}, t["name"] or Path(t["checkpoint"]).name
    t_path = tmp / ("teacher" + Path(FILES[fmt]).suffix)
    write(fmt, RawImageModel(teacher.eval(), card["mean"], card["std"]).eval(), example[:2], t_path)
    files = {"teacher": (t_arch, t["params"], t_path, reload(fmt, t_path, t_card, teacher))}
    int8 = card.get("int8") if fmt == "onnx" else None
    if int8:
        run_dir = Path(card["run_dir"])
        if not (run_dir / "generator.safetensors").is_file():
            raise DfkdError(f"the teacher's int8 row is calibrated as the student was, on the images of run "
                            f"'{run_dir}', and its generator.safetensors is not there; evaluate where the run is")
        c = int8["calibration"]
        load = partial(reload, "onnx", arch=t_card)
        quantize_checked(t_path, tmp / "teacher.int8.onnx", read_run(run_dir)[0], run_dir,
                         Calibration(c["source"], c["images"], c["method"], floor=0.0), load, "teacher")
        files["teacher int8"] = (t_arch, t["params"], tmp / "teacher.int8.onnx", load(tmp / "teacher.int8.onnx"))
        students = {"student": path.parent / FILES["onnx"], "student int8": path.parent / int8["file"]}
    else:
        students = {"student": path}
    files.update({name: (card["architecture"], card["params"], file, reload(fmt, file, card))
                  for name, file in students.items() if file.is_file()})
    return {name: {"arch": arch, "params": params, "mb": file.stat().st_size / 1e6, "predict": predict}
            for name, (arch, params, file, predict) in files.items()}


def evaluate_artifact(artifact, limit: Optional[int] = None, which: str = "best", seconds: float = 2.0,
                      plot: Optional[str] = None) -> str:
    """Markdown: teacher vs student — params, MB, CPU latency at batch 1 and 64, test accuracy. The teacher
    is run in the student's format (exported to a temporary file), so both go through the same runtime;
    ``plot``: a PNG of accuracy against file size too."""
    card, fmt, path = resolve_artifact(Path(artifact).expanduser(), which)
    example = torch.cat([x for x, _ in real_batches(card, 64)])
    with tempfile.TemporaryDirectory(prefix="dfkd-evaluate-") as tmp:
        rows = model_rows(card, fmt, path, example, Path(tmp))
        for row in rows.values():
            row["acc"], images = accuracy(row["predict"], real_batches(card, limit))
        predicts = {role: row["predict"] for role, row in rows.items()}
        for batch in (1, 64):
            for role, ms in latency_ms(predicts, example[:batch], seconds).items():
                rows[role][f"b{batch}"] = ms
    machine = machine_description()
    lines = [f"`dfkd evaluate {artifact}`: {card['data']['dataset']} test split ({images:,} images"
             f"{', a subset' if limit else ''}), {fmt} format, {machine['torch_threads']} thread(s) on {machine['cpu']}, "
             f"{machine['date']}", "",
             "| model | arch | params | MB | ms/image, batch 1 | ms/image, batch 64 | test acc % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {role} | {r['arch']} | {r['params']:,} | {r['mb']:.3f} | {r['b1']:.3f} | {r['b64']:.4f} | "
              f"{r['acc']:.2f} |" for role, r in rows.items()]
    pairs = [("Student vs teacher", "student", "teacher", "fewer parameters, "),
             ("Int8 student vs teacher", "student int8", "teacher int8", "fewer parameters, "),
             ("Int8 vs fp32, student", "student int8", "student", ""),
             ("Int8 vs fp32, teacher", "teacher int8", "teacher", "")]
    lines += [""] + [comparison(label, rows[a], rows[b], params) for label, a, b, params in pairs
                     if a in rows and b in rows]
    if plot:
        plot_frontier(rows, Path(plot).expanduser(), f"{card['data']['dataset']} test split, {images:,} images")
    return "\n".join(lines) + "\n"


def comparison(label: str, s: Dict, t: Dict, params: str) -> str:
    """One line: how much smaller and faster row ``s`` is than row ``t``, and the accuracy it gives up."""
    return (f"{label}: " + (f"{t['params'] / s['params']:.2f}x {params}" if params else "")
            + f"{t['mb'] / s['mb']:.2f}x smaller file, speed-up {t['b1'] / s['b1']:.2f}x / {t['b64'] / s['b64']:.2f}x "
            f"at batch 1 / 64, {s['acc'] - t['acc']:+.2f} accuracy points.")


def plot_frontier(rows: Dict[str, Dict], path: Path, title: str) -> None:
    """Accuracy against file size, one labelled point per row (log size axis: int8 is ~4x smaller)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for name, r in rows.items():
        ax.scatter(r["mb"], r["acc"], marker="s" if "int8" in name else "o",
                   color="tab:blue" if name.startswith("teacher") else "tab:orange")
        ax.annotate(f"{name} ({r['arch']})", (r["mb"], r["acc"]), textcoords="offset points", xytext=(6, 4),
                    fontsize="small")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("file size (MB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.margins(x=0.35, y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def write_table(table: str, out: Optional[str]) -> None:
    """Print the table, and write it to ``out`` too (atomically) if given."""
    print(table, end="")
    if out:
        path = Path(out).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(table)
        path.with_suffix(".tmp").replace(path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dfkd evaluate", description="Accuracy, CPU latency and size: "
                                     "teacher vs an exported student (or a run directory's weights).")
    parser.add_argument("artifact", help="student.safetensors / .torchscript.pt / .onnx, or a run directory")
    parser.add_argument("--limit", type=int, help="first N test images only (default: the whole test split)")
    parser.add_argument("--which", choices=("best", "final"), default="best", help="for a run directory")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per model and batch size")
    parser.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: torch's default)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--plot", help="also draw accuracy against file size into this PNG file")
    args = parser.parse_args(argv)
    return one_line_errors(lambda: run(args), "evaluate")


def run(args: argparse.Namespace) -> None:
    """``dfkd evaluate`` with its parsed arguments: counts of zero or less refused, then the table."""
    for option, value, default in (("--limit", args.limit, "the whole test split"),
                                   ("--threads", args.threads, "torch's default")):
        if value is not None and value < 1:
            raise DfkdError(f"{option} must be >= 1, got {value}; leave it out for {default}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    write_table(evaluate_artifact(args.artifact, args.limit, args.which, args.seconds, args.plot), args.out)
