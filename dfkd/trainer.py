"""The distillation loop on Accelerate: build, step, evaluate, log, save. Reads top to bottom."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Dict

import torch
from accelerate import Accelerator
from accelerate.utils import get_mixed_precision_context_manager, set_seed
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from dfkd.checkpoint import prepare_run_dir, restore, resume_candidates, save_checkpoint, trim_metrics
from dfkd.config import Config, DfkdError
from dfkd.evaluate import evaluate, test_loader
from dfkd.losses import ADVERSARIAL, Priors
from dfkd.models import Generator
from dfkd.schemes import SCHEMES, Parts
from dfkd.teacher import build_teacher, create_model


def lr_factor(cfg: Config, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the student-update budget."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** sum(progress >= m for m in cfg.lr_milestones)
    return 1.0


def check_models(cfg: Config, teacher: nn.Module, student: nn.Module, generator: nn.Module) -> None:
    """Teacher, student and generator must agree on classes and image shape before anything trains."""
    z = torch.randn(2, cfg.generator.nz)
    with torch.no_grad():
        x = generator.eval()(z)
        generator.train()
        outputs = []
        for role, name, model in (("teacher", cfg.teacher.name, teacher), ("student", cfg.student.name, student)):
            try:
                outputs.append(model.eval()(x))
            except RuntimeError as err:
                raise DfkdError(f"{role} {name} cannot take generated images of shape {tuple(x.shape[1:])} "
                                f"(data.image_size={cfg.data.image_size}, data.channels={cfg.data.channels}): "
                                f"{str(err).splitlines()[0][:120]}") from err
        t, s = outputs
        student.train()
    if t.shape[1] != s.shape[1] or t.shape[1] != cfg.data.num_classes:
        raise DfkdError(f"class counts differ: teacher {cfg.teacher.name} has {t.shape[1]}, student "
                        f"{cfg.student.name} {s.shape[1]}, data.num_classes={cfg.data.num_classes}")
    adv = ADVERSARIAL[cfg.loss]
    if adv.mode == "sample" and cfg.scheme != "two_stage":
        mixing = [n for n, m in student.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if mixing:
            raise DfkdError(f"loss={cfg.loss} rescales the generator gradient per sample, which one-stage can do "
                            f"exactly only if the student treats samples independently; {cfg.student.name} has "
                            f"train-mode BatchNorm ({mixing[0]}): use loss=l1_log (per batch) or scheme=two_stage")


def prepare_teacher(accelerator: Accelerator, teacher: nn.Module, compile: bool = False) -> nn.Module:
    """The frozen teacher on the accelerator's device, under the same autocast as the prepared student.

    Not ``accelerator.prepare``d: that would wrap it for DDP and put it in every checkpoint.
    """
    teacher = teacher.to(accelerator.device)
    if accelerator.native_amp:
        teacher.forward = get_mixed_precision_context_manager(True, accelerator.autocast_handler)(teacher.forward)
    return torch.compile(teacher) if compile else teacher


def grad_norm(module: nn.Module) -> float:
    """L2 norm of the module's gradients from its last update (0 when it has none yet)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).item() if grads else 0.0


def run_dir_for(cfg: Config) -> Path:
    name = cfg.run_name or f"{cfg.recipe}-{cfg.scheme}{cfg.k if cfg.scheme != 'one_stage' else ''}-s{cfg.seed}"
    return Path(cfg.out_dir).expanduser() / name


def distill(cfg: Config) -> Dict:
    """Run one distillation as configured; returns the summary (also written to summary.json)."""
    if cfg.logger == "wandb" and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # never block on a login prompt or the network
    # Without CUDA, torchrun / `accelerate launch --multi_gpu` would start N unconnected single-process
    # runs unless Accelerate is told the processes are CPU ones (then it joins them with gloo).
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # "no" (the default) leaves `accelerate launch --mixed_precision`, or its config, in charge;
    # compile=true compiles student and generator after DDP wrapping, in prepare()
    accelerator = Accelerator(cpu=cpu_processes,
                              mixed_precision=None if cfg.mixed_precision == "no" else cfg.mixed_precision,
                              dynamo_backend="inductor" if cfg.compile else None,
                              log_with="wandb" if cfg.logger == "wandb" else None)
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        raise DfkdError(f"mixed_precision=fp16 needs a GPU: on {accelerator.device.type} Accelerate has no fp16 "
                        f"autocast and would silently train in fp32; use mixed_precision=bf16 or no")
    if cfg.batch_size % accelerator.num_processes:
        raise DfkdError(f"batch_size {cfg.batch_size} (the global batch) is not divisible by the "
                        f"{accelerator.num_processes} processes; pick a multiple of {accelerator.num_processes}")
    set_seed(cfg.seed)
    run_dir = run_dir_for(cfg)
    main = accelerator.is_main_process
    candidates = resume_candidates(cfg, run_dir)  # refuses a run directory made with another config
    if main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        except OSError as err:
            raise DfkdError(f"cannot write the run directory {run_dir}: {err.strerror}; set out_dir=WRITABLE_DIR") from err
    prepare_run_dir(accelerator, run_dir, fresh=not candidates)

    with accelerator.main_process_first():  # only one process trains a missing teacher
        teacher = build_teacher(cfg, cfg.data.num_classes)
    student = create_model(cfg.student.name, cfg.data.num_classes)
    generator = Generator(cfg.generator.nz, cfg.generator.ngf, cfg.data.image_size, cfg.data.channels)
    check_models(cfg, teacher, student, generator)
    mean, std = teacher.pretrained_cfg["mean"], teacher.pretrained_cfg["std"]
    loader = test_loader(cfg.data, mean, std)

    if cfg.student.optimizer == "adam":
        opt_s = torch.optim.AdamW(student.parameters(), lr=cfg.student.lr, weight_decay=cfg.student.weight_decay)
    else:
        opt_s = torch.optim.SGD(student.parameters(), lr=cfg.student.lr, momentum=cfg.student.momentum,
                                weight_decay=cfg.student.weight_decay)
    joint = cfg.scheme != "two_stage" and cfg.generator.joint_lr is not None
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.generator.joint_lr if joint else cfg.generator.lr,
                             betas=(cfg.generator.beta1, cfg.generator.beta2))
    base_lrs = [opt_s.param_groups[0]["lr"], opt_g.param_groups[0]["lr"]]
    if cfg.channels_last:
        for model in (student, generator, teacher):
            model.to(memory_format=torch.channels_last)
    student, generator, opt_s, opt_g, loader = accelerator.prepare(student, generator, opt_s, opt_g, loader)

    z_rng = torch.Generator(accelerator.device).manual_seed(cfg.seed * 1000 + accelerator.process_index)
    local_batch = cfg.batch_size // accelerator.num_processes  # batch_size is the global batch
    priors = Priors(cfg.priors, teacher)  # before compiling: its BN hooks sit on the teacher's own layers
    teacher = prepare_teacher(accelerator, teacher, cfg.compile)  # frozen: not wrapped, never synchronised
    parts = Parts(student, teacher, generator, opt_s, opt_g, ADVERSARIAL[cfg.loss], priors, accelerator,
                  lambda: torch.randn(local_batch, cfg.generator.nz, generator=z_rng, device=accelerator.device),
                  cfg.max_scale)
    step = SCHEMES[cfg.scheme]
    if cfg.logger == "wandb":
        accelerator.init_trackers(cfg.wandb_project, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                                  init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}})

    teacher_acc = evaluate(teacher, loader, accelerator)
    accelerator.print(f"[dfkd] {cfg.recipe}: teacher {cfg.teacher.name} {teacher_acc:.2f}% | student "
                      f"{cfg.student.name} | scheme {cfg.scheme} k={cfg.k} loss={cfg.loss} | {cfg.student_updates} "
                      f"student updates, batch {cfg.batch_size}, {accelerator.num_processes} process(es) "
                      f"on {accelerator.device}")
    # Exact resume: weights, optimizers, RNGs and counters as they were at the end of a cycle
    last_good, state = restore(accelerator, candidates, z_rng, explicit=cfg.resume not in ("auto", "none"))
    updates, cycles, done = state.get("updates", 0), state.get("cycles", 0), state.get("done", False)
    best_acc, best_update = state.get("best_acc", -1.0), state.get("best_update", 0)
    train_s, eval_s, final_acc = state.get("train_s", 0.0), state.get("eval_s", 0.0), state.get("final_acc", 0.0)
    skipped_steps = state.get("skipped_steps", 0)
    if main and last_good:
        trim_metrics(run_dir / "metrics.jsonl", updates)  # then append: the file reads as one run
    metrics_file = open(run_dir / "metrics.jsonl", "a" if last_good else "w") if main else None
    nan_at = os.environ.get("DFKD_DEBUG_NAN_AT_UPDATE")  # testing aid: poison the student's weights there

    def unwrap(model: nn.Module) -> nn.Module:  # the bare module: no DDP, no torch.compile wrapper
        return accelerator.unwrap_model(model, keep_torch_compile=False)

    def log(record: Dict) -> None:
        if main:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        accelerator.log(record, step=record["update"])

    bar = tqdm(total=cfg.student_updates, initial=updates, disable=not main, unit="upd", dynamic_ncols=True)
    start = time.perf_counter()
    while not done:
        factor = lr_factor(cfg, updates / cfg.student_updates)
        for opt, base in zip((opt_s, opt_g), base_lrs):
            for group in opt.param_groups:
                group["lr"] = base * factor
        if nan_at is not None and updates >= int(nan_at):
            with torch.no_grad():
                next(student.parameters()).fill_(float("nan"))
        tick = time.perf_counter()
        made, metrics = step(parts, cfg.k)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - tick
        prev, updates, cycles = updates, updates + made, cycles + 1
        # NaN/Inf guard: one isfinite over the cycle's stacked losses, every cycle (about 20 us on CPU; on
        # CUDA the synchronize above already waits for the step, so it adds no stall)
        losses = torch.stack([torch.as_tensor(v, device=accelerator.device).float() for v in metrics.values()])
        if not torch.isfinite(losses).all():
            bad = [k for k, v in zip(metrics, losses.tolist()) if not math.isfinite(v)]
            bar.close()
            raise DfkdError(f"non-finite {', '.join(bad)} at student update {updates} (cycle {cycles}); stopped "
                            f"without saving; last good checkpoint: {last_good or 'none'}; lower student.lr / "
                            f"generator.lr or use mixed_precision=no")
        skipped_steps += int(metrics["skipped"])  # fp16 overflows: both optimizers skipped, scale halved
        bar.update(made)
        done = updates >= cfg.student_updates or (  # budget=time: the first whole cycle past the limit
            cfg.max_train_seconds is not None and train_s > cfg.max_train_seconds)
        if updates // cfg.log_every > prev // cfg.log_every or done:
            values = {k: float(v) for k, v in metrics.items()}
            samples_per_s = updates * cfg.batch_size / max(train_s, 1e-9)  # global batch, all processes
            log({"update": updates, "cycle": cycles, "train_s": round(train_s, 3),
                 "wall_s": round(time.perf_counter() - start, 3), "samples_per_s": round(samples_per_s, 1),
                 "lr_s": base_lrs[0] * factor, "lr_g": base_lrs[1] * factor, "grad_norm_s": grad_norm(student),
                 "grad_norm_g": grad_norm(generator), "skipped_steps": skipped_steps, **values})
            bar.set_postfix(loss_s=f"{values['loss_s']:.3f}", acc=f"{final_acc:.1f}", samples_s=f"{samples_per_s:.0f}")
        if updates // cfg.eval_every > prev // cfg.eval_every or done:
            tick = time.perf_counter()
            final_acc = evaluate(student, loader, accelerator)
            eval_s += time.perf_counter() - tick
            if final_acc > best_acc:
                best_acc, best_update = final_acc, updates
                if main:
                    save_student(unwrap(student), run_dir / "student_best.safetensors")
            log({"update": updates, "train_s": round(train_s, 3), "test_acc": final_acc, "best_acc": best_acc})
            if main:
                bar.write(f"[dfkd] update {updates}: student test acc {final_acc:.2f}% (best {best_acc:.2f}%), "
                          f"train {train_s:.1f}s")
        if done or (cfg.checkpoint_every and updates // cfg.checkpoint_every > prev // cfg.checkpoint_every):
            if not all(torch.isfinite(p).all() for p in [*student.parameters(), *generator.parameters()]):
                bar.close()
                raise DfkdError(f"non-finite weights at student update {updates} (a gradient went non-finite); "
                                f"not saved; last good checkpoint: {last_good or 'none'}")
            last_good = save_checkpoint(accelerator, run_dir, dict(
                updates=updates, cycles=cycles, done=done, train_s=train_s, eval_s=eval_s, best_acc=best_acc,
                best_update=best_update, final_acc=final_acc, lr_factor=factor, skipped_steps=skipped_steps),
                z_rng, cfg.keep_checkpoints)
    bar.close()
    summary = {
        "recipe": cfg.recipe, "scheme": cfg.scheme, "k": cfg.k, "loss": cfg.loss, "seed": cfg.seed,
        "teacher": cfg.teacher.name, "student": cfg.student.name, "teacher_acc": teacher_acc,
        "student_final_acc": final_acc, "student_best_acc": best_acc, "best_at_update": best_update,
        "student_updates": updates, "generator_updates": cycles if cfg.scheme != "one_stage" else updates,
        "train_seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
        "wall_seconds": round(time.perf_counter() - start, 2), "processes": accelerator.num_processes,
        "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
        "skipped_steps": skipped_steps, "run_dir": str(run_dir),
    }
    if main:
        save_student(unwrap(student), run_dir / "student.safetensors")
        save_student(unwrap(generator), run_dir / "generator.safetensors")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        metrics_file.close()
        if cfg.export:  # as `dfkd export RUN_DIR`: every format, parity-checked, into run_dir/export
            from dfkd.export import FILES, export
            export(run_dir, list(FILES))
    accelerator.print(f"[dfkd] done: teacher {teacher_acc:.2f}% | student final {final_acc:.2f}% best "
                      f"{best_acc:.2f}% | {cfg.scheme} | train {train_s:.1f}s, wall {summary['wall_seconds']:.1f}s "
                      f"| {run_dir}")
    accelerator.end_training()
    return summary


def save_student(student: nn.Module, path: Path) -> None:
    """Weights (student or generator) as safetensors, written to a temporary name and renamed (never half a file)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}, str(tmp))
    tmp.replace(path)
