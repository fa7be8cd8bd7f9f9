"""Cost of a student step from the replay pool against DFAD's student step, and the pool's own overhead.

    python benchmarks/pool_cost.py --threads 2          # both pairs, writes benchmarks/results/pool_cost.{md,json}

Per model pair (random weights: timing does not depend on them), interleaved rounds, median per block:
- ``dfad``: dfkd's ``student_step`` without a pool (generator and teacher forward without autograd,
  student forward and backward), DFAD's student step;
- ``pool``: the same ``student_step`` with a full pool (no generator, no teacher);
- ``bare``: the pooled update written by hand (index a tensor, student forward/backward, SGD step),
  the floor the pool's bookkeeping is measured against.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import block  # noqa: E402
from step_cost import build_parts, dfad_accelerator, interleaved_medians, write_results  # noqa: E402

from dfkd.machine import machine_description  # noqa: E402
from dfkd.pool import SamplePool  # noqa: E402
from dfkd.schemes import student_step  # noqa: E402

PAIRS = {
    "lenet64": {"title": "LeNet-5 -> LeNet-5-half, generator ngf=64 (DFAD's width), 32x32x1, batch 512",
                "teacher": "lenet5", "student": "lenet5_half", "ngf": 64, "channels": 1, "batch": 512,
                "updates": 4, "pool_updates": 64, "repeats": 5, "target": 5.0},
    "resnet": {"title": "CIFAR ResNet-34 -> ResNet-18, generator ngf=64, 32x32x3, batch 16",
               "teacher": "resnet34_cifar", "student": "resnet18_cifar", "ngf": 64, "channels": 3, "batch": 16,
               "updates": 4, "pool_updates": 8, "repeats": 3, "target": 1.5},
}
POOL_IMAGES = 4096


def filled_pool(parts, pair: Dict) -> SamplePool:
    pool = SamplePool(POOL_IMAGES, (pair["channels"], 32, 32), 10, parts.accelerator.device)
    with torch.no_grad():
        while pool.count < POOL_IMAGES:
            x = parts.generator(parts.sample_z())
            pool.add(x, parts.teacher(x))
    return pool


def bare_step(parts, pool: SamplePool, batch: int) -> Callable[[], None]:
    """The pooled update by hand: what a researcher would write without dfkd."""
    def step() -> None:
        idx = torch.randint(pool.count, (batch,), generator=pool.rng, device=pool.images.device)
        loss = (parts.student(pool.images[idx]) - pool.logits[idx]).abs().mean()
        parts.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        parts.opt_s.step()
    return step


def benchmark_pair(name: str, repeats: int, accelerator) -> Dict:
    pair = PAIRS[name]
    dfad = build_parts(pair, pair["batch"], accelerator)
    pooled = build_parts(pair, pair["batch"], accelerator)
    pooled.pool = filled_pool(pooled, pair)
    bare = build_parts(pair, pair["batch"], accelerator)
    bare_pool = filled_pool(bare, pair)
    # the cheap pooled steps run longer blocks (pool_updates), so a block lasts long enough to time steadily
    blocks = {"dfad": block(lambda: student_step(dfad, dfad.sample_z()), pair["updates"]),
              "pool": block(lambda: student_step(pooled, pooled.sample_z()), pair["pool_updates"]),
              "bare": block(bare_step(bare, bare_pool, pair["batch"]), pair["pool_updates"])}
    medians = interleaved_medians(blocks, repeats, accelerator.device)
    ms = {k: 1000 * v["median"] for k, v in medians.items()}
    return {"title": pair["title"], "batch": pair["batch"], "ms": ms,
            "rounds_ms": {k: [round(1000 * t, 2) for t in v["all"]] for k, v in medians.items()},
            "pool_vs_dfad": ms["dfad"] / ms["pool"], "target": pair["target"],
            "overhead_vs_bare": ms["pool"] / ms["bare"] - 1}


def markdown(results: Dict, machine: Dict[str, str], command: str) -> str:
    lines = ["# Replay pool: cost of a student step", "",
             f"`{command}` on {machine['cpu']} ({machine['cores']} cores, torch {machine['torch']}, "
             f"{machine['torch_threads']} threads), {machine['date']}, 1-minute load {machine['load']}.",
             "Median of interleaved rounds (rotating start), ms per student update; random weights.", ""]
    for r in results["pairs"].values():
        lines += [f"## {r['title']}", "", "| step | ms / update | all rounds (ms) |", "|---|---:|---|"]
        lines += [f"| {k} | {v:.1f} | {', '.join(map(str, r['rounds_ms'][k]))} |" for k, v in r["ms"].items()]
        lines += ["", f"Pool step vs DFAD student step: **{r['pool_vs_dfad']:.2f}x** cheaper (target "
                      f"{r['target']:g}x). Pool bookkeeping vs the bare pooled loop: {100 * r['overhead_vs_bare']:+.1f} % "
                      f"(target at most +5 %).", ""]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--repeats", type=int, help="rounds (default: per pair)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    accelerator = dfad_accelerator(cpu=True)
    command = "python benchmarks/pool_cost.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    results = {"command": command, "machine": machine_description(), "pairs": {}}
    for name in args.pairs.split(","):
        results["pairs"][name] = benchmark_pair(name, args.repeats or PAIRS[name]["repeats"], accelerator)
    write_results(Path(args.out), "pool_cost", results, markdown(results, results["machine"], command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
