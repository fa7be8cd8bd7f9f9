"""``dfkd evaluate``: an exported student beside its teacher.

    dfkd evaluate runs/default-one_stage-s0/export/student.onnx [--limit N] [--out FILE]

``dfkd evaluate`` puts an exported student (or a run directory's weights) beside its teacher, run in the
same format: parameters, file size, CPU latency at batch 1 and 64, and test accuracy on raw 0-1 images.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from dfkd.accuracy import Predict, accuracy, real_batches
from dfkd.artifacts import FILES, SUFFIXES, RawImageModel, load_card, make_card, reload, write
from dfkd.errors import DfkdError, one_line_errors
from dfkd.machine import machine_description
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


def evaluate_artifact(artifact, limit: Optional[int] = None, which: str = "best", seconds: float = 2.0) -> str:
    """Markdown: teacher vs student — params, MB, CPU latency at batch 1 and 64, test accuracy. The teacher
    is run in the student's format (exported to a temporary file), so both go through the same runtime."""
    card, fmt, path = resolve_artifact(Path(artifact).expanduser(), which)
    t = card["teacher"]
    teacher = load_teacher(t, card["num_classes"], card["input_size"][0])
    example = torch.cat([x for x, _ in real_batches(card, 64)])
    with tempfile.TemporaryDirectory(prefix="dfkd-evaluate-") as tmp:
        t_path = Path(tmp) / ("teacher" + Path(FILES[fmt]).suffix)
        write(fmt, RawImageModel(teacher.eval(), card["mean"], card["std"]).eval(), example[:2], t_path)
        rows = {"teacher": {"arch": t["name"] or Path(t["checkpoint"]).name, "params": t["params"],
                            "mb": t_path.stat().st_size / 1e6,
                            "predict": reload(fmt, t_path, {**card, "architecture": t["name"]}, teacher)},
                "student": {"arch": card["architecture"], "params": card["params"], "mb": path.stat().st_size / 1e6,
                            "predict": reload(fmt, path, card)}}
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
    t, s = rows["teacher"], rows["student"]
    lines += ["", f"Student vs teacher: {t['params'] / s['params']:.2f}x fewer parameters, {t['mb'] / s['mb']:.2f}x "
                  f"smaller file, {t['b1'] / s['b1']:.2f}x / {t['b64'] / s['b64']:.2f}x faster at batch 1 / 64, "
                  f"{s['acc'] - t['acc']:+.2f} accuracy points."]
    return "\n".join(lines) + "\n"


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
    write_table(evaluate_artifact(args.artifact, args.limit, args.which, args.seconds), args.out)
