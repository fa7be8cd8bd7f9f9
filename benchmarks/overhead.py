"""Overhead: dfkd's one-stage step against the same step written as a bare PyTorch loop.

    python benchmarks/overhead.py --threads 1            # both model pairs, writes benchmarks/results/

dfkd's step (dfkd.onestage.one_stage_step) goes through an Accelerator, Accelerate's optimizer
wrappers, the priors' teacher forward, the tensor-scaled reversal and the NaN-guard metrics. The
reference below is the step a researcher would write by hand in a notebook: plain modules, plain
optimizers, the sign flipped by a tensor hook. Both start from the same weights and see the same
latent codes; they are timed in interleaved rounds (benchmarks/step_cost.py's protocol) and the
result is the median. Writes ``<out>/overhead.md`` and ``<out>/overhead.json``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
from accelerate import Accelerator

# benchmarks/ is this script's folder:
from step_cost import PAIRS, build_parts, dfad_accelerator, interleaved_medians, write_results

from dfkd.machine import machine_description
from dfkd.onestage import one_stage_step

TARGET = 0.05  # dfkd's step at most 5 % slower than the bare loop


def bare_loop(pair: Dict, batch: int, accelerator: Accelerator, seed: int = 0, parts=None) -> Callable[[], None]:
    """The one-stage DFAD step by hand: same models, optimizers and hyper-parameters as build_parts."""
    parts = parts or build_parts(pair, batch, accelerator, seed)  # same weights and z as dfkd's
    student, teacher, generator = parts.student, parts.teacher, parts.generator
    opt_s, opt_g = parts.opt_s.optimizer, parts.opt_g.optimizer  # the plain torch optimizers inside

    def step() -> None:
        x = generator(parts.sample_z())
        t = teacher(x)
        x_s, t_s = x * 1.0, t * 1.0  # fresh nodes for the hooks, so the teacher's path is not flipped
        x_s.register_hook(torch.neg)  # generator ascends what the student descends
        t_s.register_hook(torch.neg)
        loss = (student(x_s) - t_s).abs().mean()
        opt_s.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        opt_g.step()

    return step


def same_update(pair: Dict, batch: int, accelerator: Accelerator) -> float:
    """Largest difference between student and generator weights after one step of each: both loops do the same."""
    ours, bare = build_parts(pair, batch, accelerator), build_parts(pair, batch, accelerator)
    one_stage_step(ours, ours.sample_z())
    bare_loop(pair, batch, accelerator, parts=bare)()
    pairs = zip([*ours.student.parameters(), *ours.generator.parameters()],
                [*bare.student.parameters(), *bare.generator.parameters()])
    return max((a - b).abs().max().item() for a, b in pairs)


def block(step: Callable[[], object], updates: int) -> Callable[[], int]:
    def run() -> int:
        for _ in range(updates):
            step()
        return updates

    return run


def benchmark_pair(name: str, batch: int, updates: int, repeats: int, accelerator: Accelerator) -> Dict:
    pair = PAIRS[name]
    parts = build_parts(pair, batch, accelerator)
    blocks = {"dfkd one_stage_step": block(lambda: one_stage_step(parts, parts.sample_z()), updates),
              "bare PyTorch loop": block(bare_loop(pair, batch, accelerator), updates)}
    max_diff = same_update(pair, batch, accelerator)
    times = interleaved_medians(blocks, repeats, accelerator.device)
    dfkd_s, bare_s = times["dfkd one_stage_step"]["median"], times["bare PyTorch loop"]["median"]
    return {"title": pair["title"], "batch": batch, "updates_per_block": updates, "repeats": repeats,
            "seconds_per_update": times, "overhead": dfkd_s / bare_s - 1,
            "max_weight_difference_after_one_step": max_diff}


def markdown(results: Dict, machine: Dict[str, str], command: str) -> str:
    lines = [f"# Overhead of dfkd's one-stage step over a bare PyTorch loop\n\n`{command}`\n",
             f"Machine: {machine['cpu']}, {machine['cores']} usable cores, torch {machine['torch']} with "
             f"{machine['torch_threads']} threads, 1-minute load average {machine['load']} at the start, "
             f"{machine['date']}. Target: at most {100 * TARGET:.0f} % slower.\n",
             "| models | batch | dfkd ms / update | bare loop ms / update | overhead | all rounds dfkd / bare (ms) "
             "| weights after one step, max abs difference |", "|---|---|---|---|---|---|---|"]
    for r in results.values():
        d, b = r["seconds_per_update"]["dfkd one_stage_step"], r["seconds_per_update"]["bare PyTorch loop"]
        rounds = "; ".join(f"{1000 * x:.1f} / {1000 * y:.1f}" for x, y in zip(d["all"], b["all"]))
        lines.append(f"| {r['title']} | {r['batch']} | {1000 * d['median']:.2f} | {1000 * b['median']:.2f} | "
                     f"{100 * r['overhead']:+.1f} % | {rounds} | {r['max_weight_difference_after_one_step']:.1e} |")
    lines.append("\nMedian over interleaved rounds, after one discarded warm-up block each; each round times "
                 "a block of student updates of both steps, the starting one alternating.\n")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="lenet,resnet", help="comma-separated: " + ", ".join(PAIRS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--updates", type=int, default=None, help="student updates per timed block")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per pair")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results directory")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = dfad_accelerator(cpu=True)  # a CPU benchmark, also where CUDA is available
    machine = machine_description()
    command = "python benchmarks/overhead.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    results = {}
    for name in args.pairs.split(","):
        p = PAIRS[name]
        print(f"[overhead] {name}: {p['title']}", flush=True)
        results[name] = benchmark_pair(name, p["batch"], args.updates or 4 * p["updates"], args.repeats or p["repeats"],
                                       accelerator)
    write_results(Path(args.out), "overhead", {"machine": machine, "command": command, "pairs": results},
                  markdown(results, machine, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
