"""Training throughput (generated samples/s) of the default recipe's one-stage run: processes, precision, compile.

    python benchmarks/throughput.py                         # writes benchmarks/results/throughput.{md,json}
    python benchmarks/throughput.py --updates 60 --warmup 20 --cases "1 process fp32" "2 processes fp32"

Each case is a real run of ``dfkd/distill.py`` (the default recipe: MNIST LeNet-5 -> LeNet-5-half,
batch 128 global, generator ngf 8), in a subprocess under the launcher it names; several processes
go through ``accelerate launch --multi_gpu`` (torchrun underneath, gloo on CPU). The rate is taken
from the run's own metrics.jsonl: student updates x global batch / training seconds between the
``--warmup``-th update and the last one, so start-up, the first steps (and torch.compile's
compilation) and evaluation are left out. Slow cases run fewer updates (``scale``), never fewer
than ``--warmup`` + 10. The 1-minute load average is recorded around every case: on a shared
machine, other jobs take cores too.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dfkd.machine import machine_description  # noqa: E402

# name -> (processes, threads per process, overrides, share of --updates it runs: bf16 is slow on
# CPUs without bf16 instructions)
CASES = {
    "1 process fp32": (1, 1, [], 1.0),
    "1 process fp32, 2 threads": (1, 2, [], 1.0),
    "2 processes fp32": (2, 1, [], 1.0),
    "1 process bf16": (1, 1, ["mixed_precision=bf16"], 0.25),
    "2 processes bf16": (2, 1, ["mixed_precision=bf16"], 0.25),
    "1 process fp32, channels_last": (1, 1, ["channels_last=true"], 1.0),
    "1 process fp32, compile": (1, 1, ["compile=true"], 1.0),
}


def bf16_units() -> str:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def command(processes: int, run_args: List[str]) -> List[str]:
    script = [str(REPO / "dfkd" / "distill.py"), *run_args]
    if processes == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script]


def run_case(name: str, updates: int, warmup: int, out: Path) -> Dict:
    processes, threads, overrides, share = CASES[name]
    updates = max(int(updates * share), warmup + 10)
    run_name = name.replace(" ", "_").replace(",", "")
    run_args = ["scheme=one_stage", f"student_updates={updates}", f"log_every={warmup}", f"eval_every={updates}",
                "checkpoint_every=0", "logger=none", f"out_dir={out}", f"run_name={run_name}", *overrides]
    cmd = command(processes, run_args)
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    run_dir = out / run_name
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = {r["update"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "loss_s" in r}
    first, last = steps[warmup], steps[max(steps)]
    seconds = last["train_s"] - first["train_s"]
    batch = OmegaConf.load(run_dir / "config.yaml").batch_size  # the run's global batch, as it resolved it
    return {"case": name, "processes": processes, "threads_per_process": threads, "overrides": overrides,
            "updates_timed": last["update"] - first["update"], "seconds": round(seconds, 2),
            "samples_per_s": round((last["update"] - first["update"]) * batch / seconds, 1),
            "first_updates_s": round(first["train_s"], 2), "mixed_precision": summary["mixed_precision"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "command": f"OMP_NUM_THREADS={threads} " + shlex.join(cmd).replace(sys.executable, "python")
            .replace(f"{REPO}/", "").replace(str(out), "OUT")}


def write(results: List[Dict], machine: Dict, argv: str, out: Path) -> None:
    base = next((r["samples_per_s"] for r in results if r["case"] == "1 process fp32"), None)
    rows = []
    for r in results:
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        rows.append(f"| {r['case']} | {r['processes']} x {r['threads_per_process']} | {r['samples_per_s']:.0f} | "
                    f"{ratio} | {r['updates_timed']} | {r['first_updates_s']:.1f} | "
                    f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    text = f"""# Throughput of the default recipe's one-stage training

`{argv}`

- Machine: {machine['cpu']}, {machine['cores']} usable cores, torch {machine['torch']}, GPU: {machine['gpu']},
  Python {machine['python']}, {machine['date']}; 1-minute load average {machine['load']} at the start.
  CPU bf16 instructions (avx512_bf16 / amx_bf16): {machine['bf16_units']}; without them, bf16 autocast
  converts to and from bf16 around fp32 arithmetic and is slower, not faster.
  The machine is shared: another job's CPU benchmarks ran at the same time, so every number is noisy
  (load average before / after each case in the last column; 2.0 means both cores busy).
- Default recipe (MNIST LeNet-5 -> LeNet-5-half, generator ngf 8), one_stage, global batch 128
  (64 per process with 2 processes). samples/s = generated images per second of training, from the
  run's metrics.jsonl, after the first updates (start-up, compilation and evaluation left out).

| case | processes x threads | samples/s | vs 1 process fp32 | updates timed | s before timing | load before / after |
|---|---|---:|---:|---:|---:|---|
""" + "\n".join(rows) + """

What limits two processes on two cores: each process runs half the batch (64) through the same
three networks, so the arithmetic halves, but (1) the cores are the same two, and any other job on
the machine takes its share of them from both processes; (2) every step synchronises the ranks:
a gloo all-reduce of the student's and the generator's gradients (15.7 k + 267 k parameters) and
DDP's broadcast of the generator's BatchNorm buffers before each forward, so the slower rank (the
one sharing its core) sets the pace; (3) LeNet-sized layers at batch 64 are dominated by per-call
overhead (Python, dispatch, optimizer loops over parameters), which does not halve with the batch.
One process with 2 intra-op threads is the other way to use two cores; on LeNet-sized convolutions
its threads mostly wait for each other (and for a core held by another job).

Commands:

```bash
""" + "\n".join(r["command"] for r in results) + "\n```\n"
    (out / "throughput.md").write_text(text)
    (out / "throughput.json").write_text(json.dumps({"machine": machine, "command": argv, "results": results},
                                                    indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=140, help="student updates per fp32 case")
    parser.add_argument("--warmup", type=int, default=20, help="updates before the clock starts")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    machine = {**machine_description(), "bf16_units": bf16_units()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for name in args.cases:
            results.append(run_case(name, args.updates, args.warmup, Path(runs)))
            print(json.dumps(results[-1]), flush=True)
    write(results, machine, shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]), out)


if __name__ == "__main__":
    main()
