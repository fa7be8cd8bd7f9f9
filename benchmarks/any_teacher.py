"""A teacher from the user's own code, and the same teacher as one exported file: do both give the same student?

    python benchmarks/any_teacher.py --seeds 0 1 2                  # default recipe and budget, ~30 min on 2 cores
    python benchmarks/any_teacher.py --seeds 0 --base "student_updates=300"   # a quick look

The teacher is a small CNN class defined in this file (no timm, no registry, no card), trained here on the
sklearn digits training split at 32x32 (as a user would, a few seconds), then saved with ``torch.export``
(a dynamic batch). Each seed distils it twice through the Python API, interleaved: ``dfkd.distill(teacher=the
module)`` and ``dfkd.distill(teacher="teacher.pt2")``, everything else the default recipe's (``recipe=default``,
``data.dataset=digits``, student ``lenet5_half``). Writes ``benchmarks/results/any_teacher.md`` (+ .json): the
teacher's accuracy, each run's final and best student accuracy, the ratio to the teacher, mean +- std over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from step_cost import write_results  # noqa: E402

import dfkd  # noqa: E402
from dfkd.machine import command_line, machine_description  # noqa: E402
from dfkd.results import mean_std  # noqa: E402

SIZE, MEAN, STD = 32, 0.3, 0.4


class DigitsNet(nn.Module):
    """The user's model: two conv blocks with BatchNorm, global pooling, a linear head."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
                                      nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits(train: bool):
    """dfkd's digits split (first 1,197 train, last 600 test) as 0-1 pixels at 32x32, resized as dfkd resizes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().mul(255 / 16).round().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    part = slice(None, 1197) if train else slice(1197, None)
    return x[part].contiguous(), torch.from_numpy(d.target)[part]


def train_teacher(steps: int = 400) -> DigitsNet:
    torch.manual_seed(0)
    model, (x, y) = DigitsNet(), digits(train=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,))
        loss = F.cross_entropy(model((x[idx] - MEAN) / STD), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", default="", help="extra key=value overrides for every run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--runs", default="runs/any_teacher", help="where the run folders go")
    args = parser.parse_args()
    command = command_line("benchmarks/any_teacher.py", sys.argv[1:])
    teacher = train_teacher()
    runs_dir = Path(args.runs).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(teacher, (torch.rand(4, 1, SIZE, SIZE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(runs_dir / "teacher.pt2"))
    routes = {"module": teacher, "pt2": str(runs_dir / "teacher.pt2")}
    results = []
    for seed in args.seeds:
        for route, source in (routes.items() if seed % 2 == 0 else reversed(list(routes.items()))):  # alternate
            tick = time.perf_counter()
            result = dfkd.distill(source, "lenet5_half", input_size=(1, SIZE, SIZE), mean=(MEAN,), std=(STD,),
                                  overrides=["data.dataset=digits", f"seed={seed}", f"out_dir={runs_dir}",
                                             f"run_name={route}-s{seed}", *args.base.split()])
            s = result.summary
            results.append({"route": route, "seed": seed, "teacher_acc": s["teacher_acc"],
                            "final": s["student_final_acc"], "best": s["student_best_acc"],
                            "ratio": s["student_final_acc"] / s["teacher_acc"], "wall_s": time.perf_counter() - tick})
            print(json.dumps(results[-1]), flush=True)
    write_report(results, command, Path(args.out))


def write_report(results, command: str, out: Path) -> None:
    machine = machine_description()
    lines = ["# A teacher from the user's code, and the same teacher as a torch.export file", "",
             f"`{command}` on {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch thread(s), "
             f"torch {machine['torch']}), {machine['date']}.",
             "Default recipe and budget (15,000 student updates), data.dataset=digits, student lenet5_half; the "
             "teacher is DigitsNet of benchmarks/any_teacher.py. Final: the last evaluation's test accuracy; kept: the test "
             "accuracy of student_best.safetensors, which the run chose by held-out fidelity, without the test set.", "",
             "| route | seeds | teacher % | student final % | student kept % | final / teacher |", "|---|---|---|---|---|---|"]
    summary = {}
    for route in ("module", "pt2"):
        rows = [r for r in results if r["route"] == route]
        stats = {k: mean_std([r[k] for r in rows]) for k in ("teacher_acc", "final", "best", "ratio")}
        summary[route] = {k: {"mean": m, "std": sd} for k, (m, sd) in stats.items()}
        lines.append(f"| `teacher={'the module' if route == 'module' else 'teacher.pt2'}` | {len(rows)} | "
                     f"{stats['teacher_acc'][0]:.2f} | {stats['final'][0]:.2f} ± {stats['final'][1]:.2f} | "
                     f"{stats['best'][0]:.2f} ± {stats['best'][1]:.2f} | "
                     f"{100 * stats['ratio'][0]:.1f} ± {100 * stats['ratio'][1]:.1f} % |")
    pairs = [(a, b) for a in results for b in results if a["route"] == "module" and b["route"] == "pt2"
             and a["seed"] == b["seed"]]
    lines += ["", "Per seed, final % (module / pt2): " + ", ".join(
        f"s{a['seed']}: {a['final']:.2f} / {b['final']:.2f}" for a, b in pairs)]
    write_results(out, "any_teacher", {"command": command, "machine": machine, "runs": results, "summary": summary},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
