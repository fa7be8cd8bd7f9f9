"""Step cost: seconds per student update of two_stage k=5, two_stage k=1, one_stage and hybrid k=5.

    python benchmarks/step_cost.py --threads 2                 # both model pairs, writes benchmarks/results/
    python benchmarks/step_cost.py --pairs lenet --repeats 3   # a quick look

Times dfkd's own step functions (dfkd/schemes.py SCHEMES) on models, optimizers, teacher and
Accelerator built by dfkd/build.py's functions, as a run builds them (the teacher keeps its random
initialisation: timing does not depend on weights). Per model pair, every scheme gets its
own copy of the same initial weights; one discarded warm-up block each, then ``repeats``
rounds in which every scheme times one block of ``updates`` student updates, the starting
scheme rotating from round to round so that machine noise and drift hit all alike. The
result is the median over rounds. On CUDA the device is synchronised before each clock read.

Next to the measurement stands a pass-count model of the cost, in units of one forward pass
of each network: a trained network's forward+backward costs 3 (weight and input gradients),
a frozen one's 2 (input gradients only), a forward without autograd 1. Writes
``<out>/step_cost.md`` and ``<out>/step_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import timm
import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

from dfkd.build import make_accelerator, make_parts
from dfkd.machine import machine_description
from dfkd.models import Generator
from dfkd.schema import Config
from dfkd.schemes import SCHEMES, Parts, parse_scheme
from dfkd.weights import create_model

SCHEME_NAMES = ("two_stage_k5", "two_stage_k1", "one_stage", "hybrid_k5")
PAIRS = {  # the models of the default recipe, and the CIFAR pair of DFAD at a CPU-sized batch
    "lenet": {"title": "LeNet-5 -> LeNet-5-half, generator ngf=8, 32x32x1 (recipes/default.yaml)",
              "teacher": "lenet5", "student": "lenet5_half", "ngf": 8, "channels": 1, "batch": 128,
              "updates": 10, "repeats": 7},
    "resnet": {"title": "CIFAR ResNet-34 -> ResNet-18 (random-init teacher), generator ngf=64, 32x32x3",
               "teacher": "resnet34_cifar", "student": "resnet18_cifar", "ngf": 64, "channels": 3, "batch": 16,
               "updates": 5, "repeats": 3},
}
RATIOS = {"one_stage vs two_stage_k1": ("two_stage_k1", "one_stage"),
          "hybrid_k5 vs two_stage_k5": ("two_stage_k5", "hybrid_k5")}
EXPECTED = {"one_stage vs two_stage_k1": "1.6-1.7", "hybrid_k5 vs two_stage_k5": "1.15-1.2"}  # target speed-ups


def dfad_accelerator(cpu: bool = False) -> Accelerator:
    """dfkd's Accelerator for DFAD's hyper-parameters (the schema's defaults); ``cpu`` keeps it on the CPU where CUDA
    is available (Accelerate's own switch, as ``accelerate launch --cpu`` sets it)."""
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    return make_accelerator(Config())


def build_parts(pair: Dict, batch: int, accelerator: Accelerator, seed: int = 0) -> Parts:
    """Teacher (frozen, random init: timing does not depend on weights), student and generator of ``pair``, made
    into a run's parts by ``dfkd.build.make_parts`` under DFAD's hyper-parameters: the schema's defaults (L1, SGD
    0.1, Adam 1e-3, no pool, no prior), not recipes/default.yaml, whose replay pool and EMA ``pool_cost`` times."""
    cfg = Config()
    cfg.batch_size, cfg.seed, cfg.generator.ngf = batch, seed, pair["ngf"]
    torch.manual_seed(seed)
    teacher = create_model(pair["teacher"], 10, in_chans=pair["channels"]).eval().requires_grad_(False)
    student = create_model(pair["student"], 10, in_chans=pair["channels"])
    generator = Generator(cfg.generator.nz, pair["ngf"], 32, pair["channels"])
    return make_parts(cfg, teacher, student, generator, accelerator)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_update(run_block: Callable[[], int], device: torch.device) -> float:
    """Time one block; ``run_block`` returns the student updates it made."""
    synchronize(device)
    start = time.perf_counter()
    made = run_block()
    synchronize(device)
    return (time.perf_counter() - start) / made


def interleaved_medians(blocks: Dict[str, Callable[[], int]], repeats: int, device: torch.device) -> Dict[str, Dict]:
    """One discarded warm-up block each, then ``repeats`` rounds with a rotating start; median per block."""
    names = list(blocks)
    for name in names:
        blocks[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(seconds_per_update(blocks[name], device))
    return {name: {"median": statistics.median(t), "all": t} for name, t in times.items()}


def scheme_block(parts: Parts, scheme: str, updates: int) -> Callable[[], int]:
    """Whole cycles of ``scheme`` until at least ``updates`` student updates are made."""
    kind, k = parse_scheme(scheme)
    step = SCHEMES[kind]

    def run() -> int:
        made = 0
        while made < updates:
            made += step(parts, k)[0]
        return made

    return run


def forward_flops(pair: Dict, accelerator: Accelerator) -> Dict[str, float]:
    """Forward FLOPs per sample of generator, teacher and student (torch's FLOP counter, batch of 2)."""
    parts = build_parts(pair, 2, accelerator)
    z = parts.sample_z()
    flops = {}
    with torch.no_grad():
        x = parts.generator(z)
        for name, net, inp in (("generator", parts.generator, z), ("teacher", parts.teacher, x),
                               ("student", parts.student, x)):
            with FlopCounterMode(display=False) as counter:
                net(inp)
            flops[name] = counter.get_total_flops() / 2
    return flops


def modelled_cost(scheme: str, g: float, t: float, s: float) -> float:
    """Pass-count cost of one student update (see the module docstring), in forward-pass units."""
    kind, k = parse_scheme(scheme)
    student_step = g + t + 3 * s  # G, T forward without autograd; S forward + backward
    generator_step = 3 * g + 2 * t + 2 * s  # G trained; T and S frozen: input gradients only
    joint_step = 3 * g + 2 * t + 3 * s  # one_stage_step: S trained as well, same backward
    if kind == "two_stage":
        return (k * student_step + generator_step) / k
    if kind == "one_stage":
        return joint_step
    return ((k - 1) * student_step + joint_step) / k


def benchmark_pair(name: str, batch: int, updates: int, repeats: int, accelerator: Accelerator) -> Dict:
    pair = PAIRS[name]
    if not (timm.is_model(pair["teacher"]) and timm.is_model(pair["student"])):
        reason = f"skipped: {pair['teacher']} / {pair['student']} are not registered in timm (dfkd/models/)"
        print(f"[step_cost] {name}: {reason}")
        return {"title": pair["title"], "skipped": reason}
    print(f"[step_cost] {name}: {pair['title']}, batch {batch}, {updates} updates x {repeats} rounds", flush=True)
    blocks = {s: scheme_block(build_parts(pair, batch, accelerator), s, updates) for s in SCHEME_NAMES}
    times = interleaved_medians(blocks, repeats, accelerator.device)
    flops = forward_flops(pair, accelerator)
    g, t, s = flops["generator"], flops["teacher"], flops["student"]
    ratios = {}
    for label, (slow, fast) in RATIOS.items():
        ratios[label] = {"measured": times[slow]["median"] / times[fast]["median"],
                         "model_equal_passes": modelled_cost(slow, 1, 1, 1) / modelled_cost(fast, 1, 1, 1),
                         "model_flops": modelled_cost(slow, g, t, s) / modelled_cost(fast, g, t, s),
                         "expected": EXPECTED[label]}
    return {"title": pair["title"], "batch": batch, "updates_per_block": updates, "repeats": repeats,
            "forward_flops_per_sample": flops, "seconds_per_update": times, "ratios": ratios,
            "model_cost_flops": {sc: modelled_cost(sc, g, t, s) * batch for sc in SCHEME_NAMES}}


def markdown(results: Dict, machine: Dict[str, str], command: str) -> str:
    lines = [f"# Step cost per student update\n\n`{command}`\n",
             f"Machine: {machine['cpu']}, {machine['cores']} usable cores, torch {machine['torch']} with "
             f"{machine['torch_threads']} threads, GPU: {machine['gpu']}, device {results['device']}, "
             f"1-minute load average {machine['load']} at the start, {machine['date']}.\n"]
    for r in results["pairs"].values():
        lines.append(f"## {r['title']}\n")
        if "skipped" in r:
            lines.append(r["skipped"] + "\n")
            continue
        f = r["forward_flops_per_sample"]
        total = sum(f.values())
        lines += [f"Batch {r['batch']}; median of {r['repeats']} interleaved rounds of {r['updates_per_block']} "
                  "student updates per scheme, after one discarded warm-up block each.\n",
                  "| scheme | ms / student update | all rounds (ms) | model GFLOP / update |", "|---|---|---|---|"]
        for scheme, t in r["seconds_per_update"].items():
            rounds = ", ".join(f"{1000 * v:.1f}" for v in t["all"])
            lines.append(f"| {scheme} | {1000 * t['median']:.1f} | {rounds} | "
                         f"{r['model_cost_flops'][scheme] / 1e9:.2f} |")
        lines += ["", "| speed-up | measured | model, equal passes | model, FLOP-weighted | expected |",
                  "|---|---|---|---|---|"]
        for label, q in r["ratios"].items():
            lines.append(f"| {label} | {q['measured']:.2f}x | {q['model_equal_passes']:.2f}x | "
                         f"{q['model_flops']:.2f}x | {q['expected']}x |")
        lines.append("\nForward FLOPs per sample: " + ", ".join(
            f"{k} {v / 1e6:.2f} MFLOP ({100 * v / total:.0f}%)" for k, v in f.items()) + ".\n")
    lines.append(PASS_MODEL)
    return "\n".join(lines)


PASS_MODEL = """## The pass-count model
In units of one forward pass of a network: a student step (dfkd.schemes.student_step) is G + T + 3S
(generator and teacher forward without autograd, student forward + backward for weight and input
gradients); a generator step is 3G + 2T + 2S (the frozen teacher and student need input gradients
only); the one-stage step (dfkd.onestage.one_stage_step) is 3G + 2T + 3S: the generator step's passes
with the student's weight gradients added to the same backward. Per student update: two_stage k =
(k(G+T+3S) + 3G+2T+2S)/k, one_stage = 3G+2T+3S, hybrid k = ((k-1)(G+T+3S) + 3G+2T+3S)/k. With equal
passes (G = T = S) one-stage is 12/8 = 1.5x faster than two_stage k=1 and hybrid k=5 32/28 = 1.14x
faster than two_stage k=5; the FLOP-weighted column puts in each network's measured forward FLOPs.
Where the generator dominates the FLOPs (LeNet-5 at 32x32: the generator's 16x16 and 32x32
convolutions outweigh the tiny classifiers), one-stage saves little more than one generator forward
per update and the k=1 ratio falls towards 4/3 (teacher-dominated: 3/2, student-dominated: 5/3);
the hybrid k=5 ratio stays between 17/15 and 7/6 whatever the mix.
Small models on a CPU are also bound by per-operator overhead rather than FLOPs, which the model ignores.
"""


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="lenet,resnet", help="comma-separated: " + ", ".join(PAIRS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=None, help="override every pair's batch size")
    parser.add_argument("--updates", type=int, default=None, help="student updates per timed block (a multiple of 5)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per pair")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results directory")
    args = parser.parse_args(argv)
    unknown = [p for p in args.pairs.split(",") if p not in PAIRS]
    if unknown:
        parser.error(f"unknown pair {unknown[0]!r}; choose from {', '.join(PAIRS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = dfad_accelerator(cpu=args.cpu)
    machine = machine_description()
    command = "python benchmarks/step_cost.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    results = {"device": str(accelerator.device), "machine": machine, "command": command, "pairs": {}}
    for name in args.pairs.split(","):
        p = PAIRS[name]
        results["pairs"][name] = benchmark_pair(name, args.batch or p["batch"], args.updates or p["updates"],
                                                args.repeats or p["repeats"], accelerator)
    write_results(Path(args.out), "step_cost", results, markdown(results, machine, command))
    return 0


def write_results(out: Path, stem: str, data: Dict, text: str) -> None:
    """A benchmark's results: ``<out>/<stem>.json`` (everything measured) and ``<out>/<stem>.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
