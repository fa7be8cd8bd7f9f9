"""The distillation loop on Accelerate: step, log, evaluate, checkpoint. Reads top to bottom.

``build`` (dfkd/build.py) makes and checks the parts; ``distill`` runs them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Dict

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from dfkd.accuracy import evaluate
from dfkd.build import Run, bare, build, open_run_dir
from dfkd.checkpoint import restore, save_checkpoint, trim_metrics
from dfkd.contract import teacher_label
from dfkd.errors import DfkdError
from dfkd.fidelity import better, fidelity, summary_measures
from dfkd.samples import save_samples
from dfkd.schema import Config
from dfkd.schemes import SCHEMES
from dfkd.weights import save_weights


def lr_factor(cfg: Config, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the student-update budget."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** sum(progress >= m for m in cfg.lr_milestones)
    return 1.0


def grad_norm(module: nn.Module) -> float:
    """L2 norm of the module's gradients from its last update (0 when it has none yet)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).item() if grads else 0.0


@dataclass
class RunState:
    """Everything the loop carries from one cycle to the next; a checkpoint saves it whole."""

    updates: int = 0
    cycles: int = 0
    done: bool = False
    train_s: float = 0.0  # training clock: steps only
    eval_s: float = 0.0
    wall_s: float = 0.0  # all processes of this run, resumed ones included
    final_acc: float = 0.0  # on the real images: test accuracy, or agreement with the teacher (unlabelled folder)
    final_agree: float = 0.0  # fidelity on the held-out generated images: top-1 agreement (%) ...
    final_kl: float = 0.0  # ... and mean KL(teacher || student)
    best_agree: float = -1.0  # the kept student_best.safetensors: the evaluation that agreed most (ties: lower KL)
    best_kl: float = 0.0
    best_update: int = 0
    best_acc: float = -1.0  # the real-image measure of that evaluation
    best_test_acc: float = -1.0  # the highest test accuracy of any evaluation: a reference, not a choice
    best_test_update: int = 0
    skipped_steps: int = 0  # fp16 overflows: both optimizers skipped, scale halved

    @classmethod
    def from_checkpoint(cls, saved: Dict) -> "RunState":
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def set_lr(run: Run, factor: float) -> None:
    for opt, base in zip((run.parts.opt_s, run.parts.opt_g), run.base_lrs):
        for group in opt.param_groups:
            group["lr"] = base * factor


def check_finite(metrics: Dict, state: RunState, last_good, device) -> None:
    """NaN/Inf guard: one isfinite over the cycle's stacked losses, every cycle (about 20 us on CPU; on CUDA
    the synchronize after the step already waits for it, so it adds no stall)."""
    losses = torch.stack([torch.as_tensor(v, device=device).float() for v in metrics.values()])
    if not torch.isfinite(losses).all():
        bad = [k for k, v in zip(metrics, losses.tolist()) if not math.isfinite(v)]
        raise DfkdError(f"non-finite {', '.join(bad)} at student update {state.updates} (cycle {state.cycles}); "
                        f"stopped without saving; last good checkpoint: {last_good or 'none'}; lower student.lr / "
                        f"generator.lr or use mixed_precision=no")


class MetricsLog:
    """metrics.jsonl (rank 0) and Accelerate's trackers: one record per call."""

    def __init__(self, run: Run, resumed_at: int = -1):
        self.accelerator, path = run.accelerator, run.run_dir / "metrics.jsonl"
        self.file = None
        if run.accelerator.is_main_process:
            if resumed_at >= 0:
                trim_metrics(path, resumed_at)  # then append: the file reads as one run
            self.file = open(path, "a" if resumed_at >= 0 else "w")

    def __call__(self, record: Dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.accelerator.log(record, step=record["update"])

    def close(self) -> None:
        if self.file:
            self.file.close()


def crossed(prev: int, now: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (prev, now]: cycles of k updates may step over it."""
    return now // every > prev // every


def train_cycle(run: Run, state: RunState, last_good) -> Dict:
    """One cycle of the scheme, timed on the training clock, counted, and guarded against NaN/Inf."""
    cfg, accelerator = run.cfg, run.accelerator
    tick = time.perf_counter()
    made, metrics = SCHEMES[cfg.scheme](run.parts, cfg.k)
    run.parts.after_cycle(state.updates + made, made, state.cycles + 1)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    state.train_s += time.perf_counter() - tick
    state.updates, state.cycles = state.updates + made, state.cycles + 1
    check_finite(metrics, state, last_good, accelerator.device)
    state.skipped_steps += int(metrics["skipped"])
    state.done = state.updates >= cfg.student_updates or (  # budget=time: the first whole cycle past the limit
        cfg.max_train_seconds is not None and state.train_s > cfg.max_train_seconds)
    return metrics


def log_training(run: Run, state: RunState, metrics: Dict, factor: float, log: MetricsLog, bar) -> None:
    values = {k: float(v) for k, v in metrics.items()}
    samples_per_s = state.updates * run.cfg.batch_size / max(state.train_s, 1e-9)  # global batch, all processes
    log({"update": state.updates, "cycle": state.cycles, "train_s": round(state.train_s, 3),
         "wall_s": round(state.wall_s, 3), "samples_per_s": round(samples_per_s, 1),
         "lr_s": run.base_lrs[0] * factor, "lr_g": run.base_lrs[1] * factor,
         "grad_norm_s": grad_norm(run.parts.student), "grad_norm_g": grad_norm(run.parts.generator),
         "skipped_steps": state.skipped_steps, **pool_metrics(run.parts.pool), **values})
    bar.set_postfix(loss_s=f"{values['loss_s']:.3f}", agree=f"{state.final_agree:.1f}", samples_s=f"{samples_per_s:.0f}")


def pool_metrics(pool) -> Dict:
    """How full the replay pool is, and its memory (no entries without a pool)."""
    if pool is None:
        return {}
    return {"pool_images": pool.count, "pool_mb": round(pool.nbytes / 1e6, 1)}


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kept_student(run: Run) -> nn.Module:
    """The student that is evaluated, saved and exported: the weight average when student.ema > 0."""
    ema = run.parts.student_ema
    return ema.module if ema is not None else bare(run.accelerator, run.parts.student)


def evaluate_student(run: Run, state: RunState, log: MetricsLog, bar) -> None:
    """Fidelity on the held-out generated images, and the real-image measure where there are real images (test
    accuracy, or agreement with the teacher on an unlabelled folder); the evaluation that agrees most is kept as
    student_best.safetensors. With an EMA student, also the trained student's own accuracy (``test_acc_trained``)."""
    tick, student, device = time.perf_counter(), kept_student(run), run.accelerator.device
    real, record = {"labelled": "test_acc", "unlabelled": "real_agree"}.get(run.mode), {}
    state.final_agree, state.final_kl = fidelity(student, run.probe, device)
    if real:
        state.final_acc = record[real] = evaluate(student, run.loader, run.accelerator)
    if real == "test_acc" and run.parts.student_ema is not None:
        record["test_acc_trained"] = evaluate(run.parts.student, run.loader, run.accelerator)
    state.eval_s += time.perf_counter() - tick
    if real == "test_acc" and state.final_acc > state.best_test_acc:
        state.best_test_acc, state.best_test_update = state.final_acc, state.updates
    if better(state.final_agree, state.final_kl, state.best_agree, state.best_kl):
        state.best_agree, state.best_kl, state.best_update = state.final_agree, state.final_kl, state.updates
        state.best_acc = state.final_acc
        if run.accelerator.is_main_process:
            save_weights(student, run.run_dir / "student_best.safetensors")
    log({"update": state.updates, "train_s": round(state.train_s, 3), **record, "fidelity_agree": state.final_agree,
         "fidelity_kl": state.final_kl, "best_fidelity_agree": state.best_agree})
    if run.accelerator.is_main_process:
        what = {"test_acc": "test acc", "real_agree": "agreement on real images"}.get(real)
        measure = f"student {what} {state.final_acc:.2f}%, " if what else "student "
        bar.write(f"[dfkd] update {state.updates}: {measure}fidelity {state.final_agree:.2f}% agreement, KL "
                  f"{state.final_kl:.4f} (best {state.best_agree:.2f}%), train {state.train_s:.1f}s")


def checkpoint(run: Run, state: RunState, last_good):
    """Save a checkpoint of finite weights; returns its path (the new last good one)."""
    student, generator = run.parts.student, run.parts.generator
    if not all(torch.isfinite(p).all() for p in [*student.parameters(), *generator.parameters()]):
        raise DfkdError(f"non-finite weights at student update {state.updates} (a gradient went "
                        f"non-finite); not saved; last good checkpoint: {last_good or 'none'}")
    # the loop's counters and the stateful extras (latent-code RNG, pool, averages): a resumed run goes on exactly
    return save_checkpoint(run.accelerator, run.run_dir, {**asdict(state), **run.parts.extras_state()},
                           run.cfg.keep_checkpoints)


def finish(run: Run, state: RunState, log: MetricsLog) -> Dict:
    """Final weights, samples.png, summary.json and (export=true) the exported student."""
    cfg, accelerator, run_dir = run.cfg, run.accelerator, run.run_dir
    summary = {
        "recipe": cfg.recipe, "method": cfg.method, "scheme": cfg.scheme, "k": cfg.k, "loss": cfg.loss, "seed": cfg.seed,
        "teacher": teacher_label(cfg.teacher), "student": cfg.student.name, "student_ema": cfg.student.ema,
        "teacher_params": parameters(run.parts.teacher), "student_params": parameters(run.parts.student),
        "teacher_card_acc": run.contract.card_accuracy, "teacher_warning": run.teacher_warning, "data": run.mode,
        **summary_measures(run.mode, state, run.teacher_acc), "fidelity_images": len(run.probe.pixels),
        "student_updates": state.updates, "generator_updates": state.cycles,
        "train_seconds": round(state.train_s, 2), "eval_seconds": round(state.eval_s, 2),
        "wall_seconds": round(state.wall_s, 2), "processes": accelerator.num_processes,
        "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
        "skipped_steps": state.skipped_steps, "run_dir": str(run_dir),
    }
    log.close()
    if accelerator.is_main_process:
        save_weights(kept_student(run), run_dir / "student.safetensors")
        save_weights(bare(run.accelerator, run.parts.generator), run_dir / "generator.safetensors")
        save_samples(bare(run.accelerator, run.parts.generator), bare(run.accelerator, run.parts.teacher), cfg,
                     run_dir / "samples.png")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.export:  # as `dfkd export RUN_DIR`: every format, parity-checked, into run_dir/export
            from dfkd.artifacts import default_formats, export
            export(run_dir, default_formats())
    accuracy = (f"teacher {run.teacher_acc:.2f}% | student final {state.final_acc:.2f}% | "
                if run.teacher_acc is not None else "")
    accelerator.print(f"[dfkd] done: {accuracy}fidelity final {state.final_agree:.2f}% best {state.best_agree:.2f}% "
                      f"| {cfg.scheme} | train {state.train_s:.1f}s, wall "
                      f"{summary['wall_seconds']:.1f}s | {run_dir}")
    accelerator.end_training()
    return summary


def distill(cfg: Config) -> Dict:
    """Run one distillation as configured; returns the summary (also written to summary.json)."""
    return train(build(cfg))  # every check passes before the run directory is written


def train(run: Run) -> Dict:
    """Train the parts ``build`` made: from scratch, or on from the run's newest checkpoint; returns the summary."""
    cfg, accelerator, run_dir = run.cfg, run.accelerator, run.run_dir
    open_run_dir(run)
    if cfg.logger == "wandb":
        accelerator.init_trackers(cfg.wandb_project, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                                  init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}})
    card_acc = run.contract.card_accuracy
    own = f" (its card: {card_acc:.2f}%)" if card_acc is not None else ""
    acc = f" {run.teacher_acc:.2f}%{own}" if run.teacher_acc is not None else ""
    accelerator.print(f"[dfkd] {cfg.recipe}: teacher {teacher_label(cfg.teacher)}{acc} | student "
                      f"{cfg.student.name} | scheme {cfg.scheme} k={cfg.k} loss={cfg.loss} | {cfg.student_updates} "
                      f"student updates, batch {cfg.batch_size}, {accelerator.num_processes} process(es) "
                      f"on {accelerator.device}")
    # Exact resume: weights, optimizers, RNGs and counters as they were at the end of a cycle
    last_good, saved = restore(accelerator, run.candidates, run.parts.load_extras,
                               explicit=cfg.resume not in ("auto", "none"))
    state = RunState.from_checkpoint(saved)
    if state.done and (run_dir / "summary.json").is_file():  # nothing left to do: keep the run's own summary
        accelerator.print(f"[dfkd] {run_dir} already finished (summary.json); resume=none starts it over")
        accelerator.end_training()
        return json.loads((run_dir / "summary.json").read_text())
    log = MetricsLog(run, resumed_at=state.updates if last_good else -1)
    bar = tqdm(total=cfg.student_updates, initial=state.updates, disable=not accelerator.is_main_process,
               unit="upd", dynamic_ncols=True)
    start, wall_before = time.perf_counter(), state.wall_s
    while not state.done:
        factor = lr_factor(cfg, state.updates / cfg.student_updates)
        set_lr(run, factor)
        prev = state.updates
        metrics = train_cycle(run, state, last_good)
        bar.update(state.updates - prev)
        state.wall_s = wall_before + time.perf_counter() - start
        if crossed(prev, state.updates, cfg.log_every) or state.done:
            log_training(run, state, metrics, factor, log, bar)
        if crossed(prev, state.updates, cfg.eval_every) or state.done:
            evaluate_student(run, state, log, bar)
        if state.done or (cfg.checkpoint_every and crossed(prev, state.updates, cfg.checkpoint_every)):
            state.wall_s = wall_before + time.perf_counter() - start
            last_good = checkpoint(run, state, last_good)
    bar.close()
    return finish(run, state, log)
