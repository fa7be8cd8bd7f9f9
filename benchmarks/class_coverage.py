"""Class coverage of finished runs: which classes the generator makes, and how the student does on each.

    python benchmarks/class_coverage.py runs/NAME [runs/OTHER ...] --out benchmarks/results/class_coverage.md

For each run directory: the teacher's labels of ``--samples`` images from the run's final generator
(share per class, and ``gen_classes``, the effective number of classes: exp of the entropy of the mean
teacher prediction, as logged during training), and the final and best students' accuracy per class
on the real test split. A generator that stops producing a class shows up as a near-zero share, and
the student then forgets that class. Deterministic: the latent codes come from ``--seed``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import load_file

from dfkd.accuracy import evaluation_loader
from dfkd.artifacts import read_run
from dfkd.build import make_generator
from dfkd.machine import command_line, machine_description
from dfkd.priors import class_perplexity
from dfkd.results import print_and_write
from dfkd.teacher import build_teacher
from dfkd.weights import create_model


@torch.no_grad()
def coverage(run_dir: Path, samples: int, seed: int) -> Dict:
    cfg, summary = read_run(run_dir)
    if not (run_dir / "generator.safetensors").is_file():
        raise SystemExit(f"{run_dir} has no generator.safetensors: the run did not finish")
    n = cfg.data.num_classes
    teacher = build_teacher(cfg)
    generator = make_generator(cfg)
    generator.load_state_dict(load_file(run_dir / "generator.safetensors"))
    generator.train()  # as in training: its BatchNorm layers normalise with the batch's statistics
    z = torch.randn(samples, cfg.generator.nz, generator=torch.Generator().manual_seed(seed))
    logits = teacher(generator(z))
    share = torch.bincount(logits.argmax(1), minlength=n).float() / samples
    loader = evaluation_loader(cfg.data)
    per_class = {}
    for which, file in (("final", "student.safetensors"), ("best", "student_best.safetensors")):
        student = create_model(cfg.student.name, n, in_chans=cfg.data.channels)
        student.load_state_dict(load_file(run_dir / file))
        student.eval()
        correct, total = torch.zeros(n), torch.zeros(n)
        for x, y in loader:
            hit = student(x).argmax(1) == y
            total += torch.bincount(y, minlength=n)
            correct += torch.bincount(y[hit], minlength=n)
        per_class[which] = (100 * correct / total.clamp_min(1)).tolist()
    return {"run": str(run_dir), "gen_classes": class_perplexity(logits).item(), "share": share.tolist(),
            "student": per_class, "final_acc": summary.get("student_final_acc"),
            "best_acc": summary.get("student_best_acc"), "best_at": summary.get("best_at_update")}


def markdown(rows: List[Dict], command: str, machine: Dict[str, str], samples: int) -> str:
    n = len(rows[0]["share"])
    head = "| run | what | " + " | ".join(str(c) for c in range(n)) + " | overall |"
    lines = [f"# Class coverage\n\n`{command}`\n",
             f"Machine: {machine['cpu']}, torch {machine['torch']}, {machine['date']}. Per class: the share (%) of "
             f"{samples} generated images the teacher assigns to it, and the student's test accuracy (%) on it.\n",
             head, "|" + "---|" * (n + 3)]
    for r in rows:
        name = Path(r["run"]).name
        lines.append(f"| {name} | generated share | " + " | ".join(f"{100 * s:.1f}" for s in r["share"])
                     + f" | gen_classes {r['gen_classes']:.2f} |")
        lines.append(f"| {name} | final student | " + " | ".join(f"{a:.1f}" for a in r["student"]["final"])
                     + f" | {r['final_acc']:.2f} |")
        lines.append(f"| {name} | best student (update {r['best_at']}) | "
                     + " | ".join(f"{a:.1f}" for a in r["student"]["best"]) + f" | {r['best_acc']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--samples", type=int, default=2048, help="generated images per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of their latent codes")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--out", type=Path, help="write the markdown table here (printed in any case)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [coverage(run, args.samples, args.seed) for run in args.runs]
    command = command_line("benchmarks/class_coverage.py", sys.argv[1:] if argv is None else argv)
    return print_and_write(markdown(rows, command, machine_description(), args.samples), args.out)


if __name__ == "__main__":
    sys.exit(main())
