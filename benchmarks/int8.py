"""Int8 students calibrated without data: accuracy, size and CPU latency against fp32, for finished runs.

    OMP_NUM_THREADS=1 python benchmarks/int8.py RUN_DIR [RUN_DIR ...] --name mnist     # writes benchmarks/results/

For each run (its best student): ``dfkd export --format onnx,onnx_int8`` once per calibration source (generator,
pool, real, noise; 512 images, MinMax, the agreement floor off so that every source is measured), then the
frontier that ``dfkd evaluate`` shows for the generator-calibrated file (teacher and student, fp32 and int8, the
teacher quantized on the same generator's images), with latency repeated ``--repeats`` times (median of the
medians), and the student's int8 in onnxruntime's other layouts (QOperator; uint8 activations) for contrast.
Accuracy is on the full real test split. Writes ``int8_<name>.md``, ``int8_<name>.json`` and one frontier plot per
run, ``int8_<name>_<run>.png``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import onnxruntime
import torch

from dfkd.accuracy import accuracy, real_batches
from dfkd.artifacts import export, read_run
from dfkd.evaluate import latency_ms, model_rows, plot_frontier
from dfkd.formats import reload
from dfkd.machine import command_line, machine_description
from dfkd.quantize import SOURCES, Calibration, calibration_images, quantize_onnx

LAYOUTS = {"QDQ, int8 activations (dfkd's)": ("QDQ", "QInt8"), "QDQ, uint8 activations": ("QDQ", "QUInt8"),
           "QOperator, uint8 activations": ("QOperator", "QUInt8")}


def repeated_latency(predicts: Dict, example: torch.Tensor, repeats: int, seconds: float) -> Dict[str, Dict]:
    """Per model and batch size (1, 64): the median over ``repeats`` of ``latency_ms``'s interleaved medians."""
    out: Dict[str, Dict] = {name: {} for name in predicts}
    for batch in (1, 64):
        runs = [latency_ms(predicts, example[:batch], seconds) for _ in range(repeats)]
        for name in predicts:
            values = [r[name] for r in runs]
            out[name][f"b{batch}"] = statistics.median(values)
            out[name][f"b{batch}_range"] = [min(values), max(values)]
    return out


def calibration_table(run: Path, tmp: Path) -> Dict[str, Dict]:
    """Per calibration source: the int8 student's card record (agreement, test accuracy, size)."""
    records = {}
    for source in SOURCES:
        out = export(run, ["onnx", "onnx_int8"], tmp / source, calibration=Calibration(source, floor=0.0))
        records[source] = json.loads((out / "student.json").read_text())["int8"]
    return records


def layouts(run: Path, folder: Path, card: Dict, repeats: int, seconds: float) -> Dict[str, Dict]:
    """The student's int8 in onnxruntime's layouts, generator-calibrated as dfkd's: size, accuracy, latency."""
    images = calibration_images(read_run(run)[0], run, "generator", 512)
    files = {"fp32": folder / "student.onnx"}
    for name, (fmt, act) in LAYOUTS.items():
        files[name] = folder / f"layout_{fmt}_{act}.onnx"
        quantize_onnx(files["fp32"], files[name], images, "MinMax", fmt, act)
    predicts = {name: reload("onnx", file, card) for name, file in files.items()}
    example = torch.cat([x for x, _ in real_batches(card, 64)])
    times = repeated_latency(predicts, example, repeats, seconds)
    return {name: {"mb": files[name].stat().st_size / 1e6, "acc": accuracy(predicts[name], real_batches(card))[0],
                   **times[name]} for name in files}


def measure(run: Path, repeats: int, seconds: float, plot: Path) -> Dict:
    """Everything the results file shows for one run."""
    with tempfile.TemporaryDirectory(prefix="dfkd-int8-") as tmp:
        tmp = Path(tmp)
        sources = calibration_table(run, tmp)
        folder = tmp / "generator"
        card = json.loads((folder / "student.json").read_text())
        example = torch.cat([x for x, _ in real_batches(card, 64)])
        rows = model_rows(card, "onnx", folder / "student.int8.onnx", example, tmp)
        for row in rows.values():
            row["acc"], images = accuracy(row.pop("predict"), real_batches(card))
        predicts = model_rows(card, "onnx", folder / "student.int8.onnx", example, tmp)  # fresh sessions to time
        times = repeated_latency({n: r["predict"] for n, r in predicts.items()}, example, repeats, seconds)
        rows = {name: {**row, **times[name]} for name, row in rows.items()}
        plot_frontier(rows, plot, f"{card['data']['dataset']} test split, {images:,} images; {run.name}")
        cfg, summary = read_run(run)
        return {"run": str(run), "recipe": cfg.recipe, "student_updates": summary.get("student_updates"),
                "train_seconds": summary.get("train_seconds"), "student": card["architecture"],
                "student_kwargs": card["student_kwargs"],
                "params": card["params"], "teacher": card["teacher"]["name"], "test_images": images,
                "calibration": sources, "frontier": rows, "layouts": layouts(run, folder, card, repeats, seconds)}


def targets(m: Dict) -> List[str]:
    """The targets this run is measured against, met or not, with their margins."""
    acc = {s: r["test_acc"]["int8"] for s, r in m["calibration"].items()}
    fp32 = m["calibration"]["generator"]["test_acc"]["fp32"]
    lines = [f"- int8 (generator-calibrated) within 0.5 points of fp32: {acc['generator'] - fp32:+.2f} points -> "
             f"{'met' if abs(acc['generator'] - fp32) <= 0.5 else 'NOT met'}",
             f"- generator calibration within 0.2 points of real-image calibration: "
             f"{acc['generator'] - acc['real']:+.2f} points -> "
             f"{'met' if abs(acc['generator'] - acc['real']) <= 0.2 else 'NOT met'}"]
    if m["params"] >= 1_000_000:
        s, q = m["frontier"]["student"], m["frontier"]["student int8"]
        lines += [f"- file >= 3x smaller: {s['mb'] / q['mb']:.2f}x -> {'met' if s['mb'] / q['mb'] >= 3 else 'NOT met'}",
                  f"- batch-64 latency >= 1.5x lower: {s['b64'] / q['b64']:.2f}x -> "
                  f"{'met' if s['b64'] / q['b64'] >= 1.5 else 'NOT met'}",
                  f"- accuracy within 1 point: {q['acc'] - s['acc']:+.2f} -> "
                  f"{'met' if abs(q['acc'] - s['acc']) <= 1 else 'NOT met'}"]
    return lines


def markdown(results: List[Dict], machine: Dict, command: str, plots: List[str]) -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags + " ")
    lines = ["# Int8 students calibrated without data", "", f"`{command}`", "",
             f"{machine['date']}; {machine['cpu']} ({isa or 'no AVX2'}), {machine['cores']} cores shared with other "
             f"jobs (1-minute load {machine['load']} at the end), {machine['torch_threads']} thread(s); torch "
             f"{machine['torch']}, onnxruntime {onnxruntime.__version__}. Accuracy: full real test split. Latency: "
             "ms per image, models taking turns, median of the repeats' medians (range in the JSON).", ""]
    for m, plot in zip(results, plots):
        lines += [f"## {m['student']} {m['student_kwargs'] or ''} ({m['params']:,} parameters) from {m['teacher']}",
                  "", f"Run `{m['run']}`: recipe {m['recipe']}, {m['student_updates']:,} student updates "
                  f"({m['train_seconds'] / 60:.0f} min of training), its best student.", "",
                  "Calibration source (512 images, MinMax). Top-1 agreement with fp32 on 1,024 held-out generated "
                  "images: on those the fp32 student decides (softmax top-1 minus top-2 >= 0.5; the export's "
                  "floor, 97 %, is on this one), and on all:", "",
                  "| calibration | int8 test acc % | fp32 test acc % | agreement, decided % (images) | agreement, all % "
                  "| int8 MB |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {s} ({r['calibration']['images']} images) | {r['test_acc']['int8']:.2f} | "
                  f"{r['test_acc']['fp32']:.2f} | {r['agreement']['top1_agreement']:.2f} "
                  f"({r['agreement']['counted_images']}) | {r['agreement']['top1_agreement_all']:.2f} | "
                  f"{r['size_mb']:.3f} |" for s, r in m["calibration"].items()]
        lines += ["", "Frontier (`dfkd evaluate` of the generator-calibrated int8 file; ONNX Runtime, CPU):", "",
                  "| model | params | MB | ms/image, batch 1 | ms/image, batch 64 | test acc % |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} ({r['arch']}) | {r['params']:,} | {r['mb']:.3f} | {r['b1']:.3f} | {r['b64']:.4f} | "
                  f"{r['acc']:.2f} |" for n, r in m["frontier"].items()]
        lines += ["", f"![accuracy against size]({plot})", "", "The student's int8 in onnxruntime's layouts:", "",
                  "| layout | MB | ms/image, batch 1 | ms/image, batch 64 | test acc % |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {r['mb']:.3f} | {r['b1']:.3f} | {r['b64']:.4f} | {r['acc']:.2f} |"
                  for n, r in m["layouts"].items()]
        lines += ["", "Targets:", *targets(m), ""]
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="finished dfkd run directories")
    parser.add_argument("--name", default="mnist", help="results file: benchmarks/results/int8_NAME.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per model, batch size, repeat")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    plots = [f"int8_{args.name}_{Path(run).name}.png" for run in args.runs]
    results = [measure(Path(run), args.repeats, args.seconds, out / plot) for run, plot in zip(args.runs, plots)]
    machine = machine_description()
    command = command_line("benchmarks/int8.py", argv)
    (out / f"int8_{args.name}.json").write_text(json.dumps({"command": command, "machine": machine,
                                                             "results": results}, indent=2) + "\n")
    text = markdown(results, machine, command, plots)
    (out / f"int8_{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
