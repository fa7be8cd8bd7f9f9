"""Build a run: accelerator, the teacher's input contract, models, optimizers, evaluation data, checks.

``build(cfg)`` makes and checks every part before anything trains or is written; the loop in
``dfkd/trainer.py`` only steps, logs, evaluates and checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import get_mixed_precision_context_manager, set_seed
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dfkd.accuracy import evaluate, evaluation_loader
from dfkd.batches import IntensityJitter, LatentCodes, RealImages
from dfkd.checkpoint import prepare_run_dir, resume_candidates
from dfkd.checks import check_models, check_no_data, check_teacher, check_unlabelled, warn_pool_evicts
from dfkd.contract import Contract, resolve
from dfkd.ema import ModelEMA
from dfkd.errors import DfkdError
from dfkd.features import Taps, classifier_of, stages_for
from dfkd.fidelity import Probe, data_mode, make_probe, probe_pixels
from dfkd.losses import ADVERSARIAL
from dfkd.models import Generator, evaluating
from dfkd.pool import SamplePool, make_pool
from dfkd.priors import PRIORS, Priors, decide, prior_weights, reads_of
from dfkd.schema import Config
from dfkd.schemes import DATA_FREE, Parts, pool_intake, scheme_label
from dfkd.teacher import build_student, build_teacher, teacher_source


@dataclass
class Run:
    """The parts of one distillation, built by ``build`` before anything trains or is written."""

    cfg: Config
    accelerator: Accelerator
    parts: Parts
    loader: Optional[DataLoader]  # the real images evaluated on; None with data.dataset=none
    run_dir: Path
    candidates: List[Path]  # checkpoints to resume from, newest first
    base_lrs: List[float]
    teacher_acc: Optional[float]  # on labelled real images only
    contract: Contract
    teacher_warning: Optional[str] = None  # check_teacher's warning, kept in summary.json
    probe: Optional[Probe] = None  # the held-out generated images fidelity is measured on (dfkd/fidelity.py)
    mode: str = "labelled"  # labelled, unlabelled or none (dfkd.fidelity.data_mode)


def run_dir_for(cfg: Config) -> Path:
    """``out_dir/run_name``; by default ``<recipe>-[<method>-]<scheme>-s<seed>``, the scheme named as in dfkd
    compare (``default-hybrid_k5-s0``, ``default-zskt-one_stage-s0``)."""

    method = f"{cfg.method}-" if cfg.method else ""
    name = cfg.run_name or f"{cfg.recipe}-{method}{scheme_label(cfg.scheme, cfg.k)}-s{cfg.seed}"
    return Path(cfg.out_dir).expanduser() / name


def make_accelerator(cfg: Config) -> Accelerator:
    """Accelerate for this config: devices, processes, mixed precision, logging; refuses what it cannot do."""
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
    return accelerator


def make_optimizers(cfg: Config, student: nn.Module, generator: nn.Module):
    if cfg.student.optimizer == "adam":
        opt_s = torch.optim.AdamW(student.parameters(), lr=cfg.student.lr, weight_decay=cfg.student.weight_decay)
    else:
        opt_s = torch.optim.SGD(student.parameters(), lr=cfg.student.lr, momentum=cfg.student.momentum,
                                weight_decay=cfg.student.weight_decay)
    joint = cfg.scheme != "two_stage" and cfg.generator.joint_lr is not None
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.generator.joint_lr if joint else cfg.generator.lr,
                             betas=(cfg.generator.beta1, cfg.generator.beta2))
    return opt_s, opt_g


def prepare_teacher(accelerator: Accelerator, teacher: nn.Module, compile: bool = False) -> nn.Module:
    """The frozen teacher on the accelerator's device, under the same autocast as the prepared student.

    Not ``accelerator.prepare``d: that would wrap it for DDP and put it in every checkpoint.
    """
    teacher = teacher.to(accelerator.device)
    if accelerator.native_amp:
        teacher.forward = get_mixed_precision_context_manager(True, accelerator.autocast_handler)(teacher.forward)
    return torch.compile(teacher) if compile else teacher


def decide_nulls(cfg: Config, teacher: nn.Module, print_fn) -> None:
    """Keys whose null the run decides from the teacher, written into ``cfg`` (config.yaml records the decision),
    each said in one line: prior weights (``PRIORS``' auto rules) and ZSKT's split of attention transfer."""
    for name in PRIORS:
        if getattr(cfg.priors, name) is None:
            weight, why = decide(cfg.priors, name, teacher)
            setattr(cfg.priors, name, weight)
            print_fn(f"[dfkd] priors.{name}=null: {weight:g} ({'on' if weight else 'off'}: {why}; set priors.{name} to "
                     f"choose)")
    if cfg.features.at_adversarial is None:  # ZSKT's split: the generator maximises the discrepancy alone
        cfg.features.at_adversarial = False


def make_parts(cfg: Config, teacher: nn.Module, student: nn.Module, generator: nn.Module, accelerator: Accelerator,
               *, optimizers=None, pool: Optional[SamplePool] = None) -> Parts:
    """The parts of a run from its config and its three networks, as every run, benchmark and test makes them:
    the optimizers (``cfg``'s unless given), student and generator prepared by Accelerate, the latent codes, the
    replay pool (``cfg``'s unless given), the priors and feature taps with their hooks, the weight averages."""
    opt_s, opt_g = optimizers or make_optimizers(cfg, student, generator)
    if cfg.channels_last:
        for model in (student, generator, teacher):
            model.to(memory_format=torch.channels_last)
    student, generator, opt_s, opt_g = accelerator.prepare(student, generator, opt_s, opt_g)
    local_batch = cfg.batch_size // accelerator.num_processes  # batch_size is the global batch
    sample_z = LatentCodes(local_batch, cfg.generator.nz, accelerator.device, cfg.seed * 1000 + accelerator.process_index)
    data_free = cfg.scheme in DATA_FREE
    if pool is None and data_free:  # the pool keeps the teacher's pre-logits too when a prior draws them from it
        reads_pool = "pool" in reads_of(prior_weights(cfg.priors, teacher))
        pool = make_pool(cfg, accelerator.device, accelerator.process_index,
                         feature_dim=pre_logits_size(teacher) if reads_pool else 0)
    stages = stages_for(teacher, bare(accelerator, student)) if cfg.features.at else 0
    # before compiling: the hooks of the priors and of the feature taps sit on the networks' own layers
    priors = Priors(cfg.priors, teacher, stages, pool)
    return Parts(
        student=student, teacher=prepare_teacher(accelerator, teacher, cfg.compile), generator=generator,
        opt_s=opt_s, opt_g=opt_g, adversarial=ADVERSARIAL[cfg.loss], priors=priors, accelerator=accelerator,
        sample_z=sample_z, max_scale=cfg.max_scale, pool=pool, pool_steps=cfg.pool.steps, pool_fresh=cfg.pool.fresh,
        adversarial_weight=cfg.adversarial, at_weight=cfg.features.at, at_adversarial=bool(cfg.features.at_adversarial),
        student_taps=Taps(bare(accelerator, student), "student", stages) if stages else None,
        generator_ema=ModelEMA(bare(accelerator, generator), cfg.generator.ema, train_mode=True)
        if cfg.generator.ema else None, ema_mix=cfg.generator.ema_mix,
        student_ema=ModelEMA(bare(accelerator, student), cfg.student.ema) if cfg.student.ema else None,
        real=None if data_free else real_images(cfg, local_batch, accelerator),
        augment=IntensityJitter(cfg.data.mean, cfg.data.std, accelerator.device,
                                cfg.seed * 1000 + accelerator.process_index + 23)
        if data_free and cfg.student.augment == "intensity" else None)


def real_images(cfg: Config, batch: int, accelerator: Accelerator) -> RealImages:
    """scheme=real_data's images: the real training split of ``data.dataset``, as the teacher takes them."""
    from dfkd.data import LOADERS, tensor_dataset

    if cfg.data.dataset not in LOADERS:
        raise DfkdError(f"scheme=real_data trains on a real training split, and data.dataset={cfg.data.dataset} has "
                        f"none dfkd loads: use one of {', '.join(sorted(LOADERS))}")
    images = tensor_dataset(cfg.data, train=True).tensors[0]
    return RealImages(images, batch, accelerator.device, cfg.seed * 1000 + accelerator.process_index + 11)


def build(cfg: Config, teacher: Optional[nn.Module] = None, student: Optional[nn.Module] = None,
          eval_data: Optional[Dataset] = None) -> Run:
    """Everything a run needs, checked before anything trains or is written: accelerator, the resolved input
    contract, teacher (evaluated), student, generator, optimizers, evaluation data, resume candidates.
    ``teacher``, ``student``, ``eval_data``: modules and a Dataset given to the Python API (dfkd.distill)."""
    accelerator = make_accelerator(cfg)
    source, input_shape = teacher_source(cfg, teacher)  # not a timm architecture: a module, import path or file
    contract = resolve(cfg, source, input_shape)  # fills data.* / teacher.name left null: config.yaml records them
    set_seed(cfg.seed)
    run_dir = run_dir_for(cfg)
    with accelerator.main_process_first():  # only one process trains a missing teacher
        teacher = build_teacher(cfg, source)
    decide_nulls(cfg, teacher, accelerator.print)
    candidates = resume_candidates(cfg, run_dir)  # refuses a run directory made with another config
    student = build_student(cfg, student)
    generator = make_generator(cfg)
    check_models(cfg, teacher, student, generator, contract)
    mode = data_mode(cfg.data.dataset)
    loader = evaluation_loader(cfg.data, given=eval_data) if mode != "none" else None
    with accelerator.main_process_first():  # one process makes the held-out set, the others read it
        pixels, key = probe_pixels(cfg, teacher, accelerator.device, accelerator.print)
    parts = make_parts(cfg, teacher, student, generator, accelerator)
    loader = accelerator.prepare(loader) if loader is not None else None
    if parts.pool is not None:
        warn_pool_evicts(cfg, parts.pool.capacity, pool_intake(cfg, cfg.batch_size // accelerator.num_processes),
                         accelerator.print)
    if cfg.adversarial == 0 and not parts.priors.active:
        raise DfkdError(f"adversarial=0 leaves the generator nothing to learn: switch a prior on "
                        f"({', '.join(f'priors.{name}' for name in PRIORS)}) or set adversarial > 0")
    base_lrs = [parts.opt_s.param_groups[0]["lr"], parts.opt_g.param_groups[0]["lr"]]
    teacher_acc, warning = measure_teacher(cfg, parts.teacher, loader, accelerator, contract, mode)
    probe = make_probe(cfg, pixels, key, parts.teacher, accelerator.device)
    return Run(cfg, accelerator, parts, loader, run_dir, candidates, base_lrs, teacher_acc, contract, warning, probe,
               mode)


def measure_teacher(cfg: Config, teacher: nn.Module, loader: Optional[DataLoader], accelerator: Accelerator,
                    contract: Contract, mode: str):
    """The teacher on the real images, and its checks: accuracy and the near-chance check on labelled data; on an
    unlabelled folder, its predictions (the labels student agreement is measured against) and their spread; with
    none, the note that the contract is unchecked. Returns its accuracy (labelled data only) and any warning."""
    if mode == "none":
        check_no_data(cfg, contract, accelerator.print)
        return None, None
    if mode == "unlabelled":  # every process reads the whole folder once, in order
        with torch.no_grad(), evaluating(teacher):
            preds = torch.cat([teacher(x.to(accelerator.device)).argmax(1).cpu()
                               for x, _ in DataLoader(loader.dataset, batch_size=cfg.data.eval_batch_size)])
        loader.dataset.labels = preds
    else:
        confusion = torch.zeros(cfg.data.num_classes, cfg.data.num_classes, dtype=torch.long)
        teacher_acc = evaluate(teacher, loader, accelerator, confusion)  # one pass: accuracy and predictions
    accelerator.print(f"[dfkd] input: {contract.describe(cfg)}")
    for warning in contract.warnings:
        accelerator.print(f"[dfkd] warning: {warning}")
    if mode == "unlabelled":
        return None, check_unlabelled(cfg, torch.bincount(preds, minlength=cfg.data.num_classes), accelerator.print)
    return teacher_acc, check_teacher(cfg, teacher_acc, contract, accelerator.print, confusion)


def make_generator(cfg: Config) -> Generator:
    """The run's generator, its output as ``generator.output`` says (pixels: normalised with the teacher's mean/std)."""
    pixels = cfg.generator.output == "pixels"
    return Generator(cfg.generator.nz, cfg.generator.ngf, cfg.data.image_size, cfg.data.channels,
                     cfg.data.mean if pixels else None, cfg.data.std if pixels else None)


def bare(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The module itself: no DDP, no torch.compile wrapper (hooks and averages go on its own layers)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def pre_logits_size(teacher: nn.Module) -> int:
    """Width of the teacher's pre-logits: the input of its classifier (``features.classifier_of``)."""
    weight = getattr(classifier_of(teacher), "weight", None)
    size = weight.shape[1] if weight is not None and weight.ndim == 2 else None
    if size is None:
        raise DfkdError(f"a prior reads the teacher's pre-logits from the replay pool, and its classifier "
                        f"{type(classifier_of(teacher)).__name__} has no 2-D weight; switch off the priors "
                        f"that read the pool (" + ", ".join(f"priors.{n}" for n, p in PRIORS.items() if "pool" in p.reads)
                        + ")")
    return size


def open_run_dir(run: Run) -> None:
    """Create the run directory and write the resolved config, once every check has passed."""
    if run.accelerator.is_main_process:
        try:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run.cfg)))
        except OSError as err:
            raise DfkdError(f"cannot write the run directory {run.run_dir}: {err.strerror}; "
                            f"set out_dir=WRITABLE_DIR") from err
    prepare_run_dir(run.accelerator, run.run_dir, fresh=not run.candidates)
