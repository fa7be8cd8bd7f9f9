"""Step policies: how student and generator updates are scheduled. One function each.

``two_stage(k)`` is DFAD's alternating baseline, ``one_stage`` the joint OSGAN update and
``hybrid(k)`` mixes them: k-1 cheap student-only steps, then one joint step. ``real_data`` is not
data-free: plain KD on the real training split, the upper bound a data-free run is judged by. Each call runs
one cycle and returns (student updates made, metrics of its last steps); ``skipped`` counts the
cycle's updates skipped by the fp16 loss scaler (inf/NaN gradients).
"""
from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from dfkd.batches import IntensityJitter, RealImages
from dfkd.ema import ModelEMA
from dfkd.errors import DfkdError
from dfkd.features import Taps
from dfkd.losses import Adversarial, TeacherOutput, full
from dfkd.onestage import discrepancy, one_stage_step, step_together
from dfkd.pool import SamplePool
from dfkd.priors import Priors


@dataclass(kw_only=True)
class Parts:
    """Everything a step touches, made by ``dfkd.build.make_parts``. ``sample_z()`` draws fresh latent codes."""

    student: nn.Module
    teacher: nn.Module
    generator: nn.Module
    opt_s: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    adversarial: Adversarial
    priors: Priors
    accelerator: object
    sample_z: Callable[[], torch.Tensor]
    max_scale: float = 10.0
    pool: Optional[SamplePool] = None  # replay pool (dfkd/pool.py); None: every student step generates
    pool_steps: int = 0  # extra student steps from the pool after each generating step
    pool_fresh: float = 0.0  # fraction of a pool step's batch generated anew
    adversarial_weight: float = 1.0  # of the adversarial term in the generator's loss (0: DAFL)
    student_taps: Optional[Taps] = None  # the student's stage outputs, when attention transfer is on
    at_weight: float = 0.0  # attention transfer's weight in the student's discrepancy (ZSKT's beta)
    at_adversarial: bool = False  # the generator maximises the attention term too (else: ZSKT's split)
    generator_ema: Optional[ModelEMA] = None  # MAD: a weight-averaged generator ...
    ema_mix: float = 0.5  # ... making this fraction of every generated student batch
    student_ema: Optional[ModelEMA] = None  # the weight-averaged student, evaluated, kept and exported
    real: Optional[RealImages] = None  # scheme=real_data's real training images (not data-free)
    augment: Optional[IntensityJitter] = None  # student.augment: the student's images jittered, the teacher asked again

    def extras(self) -> Dict[str, Any]:
        """The state a checkpoint keeps besides weights and optimizers, by name, where switched on: the latent
        codes' RNG, the replay pool and the two weight averages (each with state_dict / load_state_dict)."""
        named = {"z_rng": self.sample_z, "pool": self.pool, "ema": self.student_ema,
                 "generator_ema": self.generator_ema, "real_rng": self.real, "augment_rng": self.augment}
        return {name: part for name, part in named.items() if hasattr(part, "state_dict")}

    def extras_state(self) -> Dict[str, Any]:
        return {name: part.state_dict() for name, part in self.extras().items()}

    def load_extras(self, saved: Dict[str, Any]) -> None:
        for name, part in self.extras().items():
            if name in saved:
                part.load_state_dict(saved[name])

    def after_cycle(self, updates: int, made: int, cycles: int) -> None:
        """The averages take in the cycle just run: ``made`` student updates (``updates`` in all), one generator
        update (``cycles`` in all)."""
        if self.student_ema is not None:
            self.student_ema.update(updates, made)
        if self.generator_ema is not None:
            self.generator_ema.update(cycles, 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Skip weight gradients of ``module`` (input gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def generated(parts: Parts, z: torch.Tensor) -> torch.Tensor:
    """Images for a student step (no autograd): with a generator EMA (MAD), ``ema_mix`` of them from it."""
    ema = parts.generator_ema
    n = round(parts.ema_mix * len(z)) if ema is not None and len(z) >= 4 else 0
    n = min(max(n, 2), len(z) - 2) if n else 0  # train-mode BatchNorm needs two samples on each side
    if not n:
        return parts.generator(z)
    return torch.cat([parts.generator(z[n:]), ema.module(z[:n])])


def student_step(parts: Parts, z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One student update on a fresh batch (generator and teacher without autograd), or, with a replay
    pool holding a batch, on images drawn from it: no generator, no teacher, ``pool_fresh`` of it new. With
    ``student.augment``, the batch is jittered and the teacher labels it anew."""
    pool, observe = parts.pool, parts.priors.observe
    fresh = len(z) if pool is None or pool.count < len(z) else round(parts.pool_fresh * len(z))
    fresh = 2 if fresh == 1 else fresh  # the generator's train-mode BatchNorm needs two samples
    relabel = parts.augment is not None  # the teacher labels the student's batch once more, after the jitter
    with torch.no_grad():
        x = generated(parts, z[:fresh]) if fresh else None
        # the fresh images' outputs: for the pool, and for the student unless the batch is relabelled anyway
        out = observe(parts.teacher, x) if fresh and (pool is not None or not relabel) else None
    if pool is not None:
        if fresh:
            pool.add(x, out.logits, out.pre_logits)
        if fresh < len(z):
            old_x, old_t = pool.sample(len(z) - fresh)
            x, t = (old_x, old_t) if x is None else (torch.cat([x, old_x.to(x.dtype)]),
                                                     torch.cat([out.logits, old_t.to(out.logits.dtype)]))
            out = TeacherOutput(t)
            relabel = relabel or parts.student_taps is not None  # the pool keeps no stage outputs
    if relabel:
        with torch.no_grad():
            x = x if parts.augment is None else parts.augment(x)
            out = observe(parts.teacher, x)
    return student_update(parts, x, out)


def student_update(parts: Parts, x: torch.Tensor, out: TeacherOutput) -> Dict[str, torch.Tensor]:
    """The student's step towards the teacher's outputs ``out`` on images ``x``: its loss and whether it was skipped."""
    loss = full(discrepancy(parts, x, out)).mean()
    parts.opt_s.zero_grad(set_to_none=True)
    parts.accelerator.backward(loss)
    return {"loss_s": loss.detach(), "skipped": step_together(parts.accelerator, parts.opt_s)}


def generator_step(parts: Parts, z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One generator update: maximise the discrepancy (plus priors); the student's weights get no gradient."""
    x = parts.generator(z)
    out, prior_loss, metrics = parts.priors.teacher_forward(parts.teacher, x)
    if parts.pool is not None:
        parts.pool.add(x, out.logits, out.pre_logits)
    loss_g = torch.zeros((), device=x.device)
    with frozen(parts.student), parts.accelerator.no_sync(parts.student):
        if parts.adversarial_weight:  # DAFL's generator (weight 0) never asks the student
            d = discrepancy(parts, x, out, with_at=parts.at_adversarial)
            loss_g = parts.adversarial_weight * parts.adversarial.generator_loss(full(d))
        parts.opt_g.zero_grad(set_to_none=True)
        parts.accelerator.backward(loss_g + prior_loss)
    metrics.update(loss_g=loss_g.detach(), skipped=step_together(parts.accelerator, parts.opt_g))
    return metrics


def replay(parts: Parts, made: int, metrics: Dict[str, torch.Tensor]) -> Tuple[int, Dict[str, torch.Tensor]]:
    """After a generating step: ``pool_steps`` student steps from the pool (none without a pool)."""
    skipped = metrics["skipped"]
    for _ in range(parts.pool_steps if parts.pool is not None else 0):
        skipped = skipped + student_step(parts, parts.sample_z())["skipped"]
        made += 1
    metrics["skipped"] = skipped
    return made, metrics


def two_stage(parts: Parts, k: int) -> Tuple[int, Dict[str, torch.Tensor]]:
    """DFAD: k student steps, then one generator step (four passes per student step at k=1)."""
    skipped = 0.0
    for _ in range(k):
        metrics = student_step(parts, parts.sample_z())
        skipped += metrics["skipped"]
    metrics.update(generator_step(parts, parts.sample_z()))
    metrics["skipped"] += skipped
    return replay(parts, k, metrics)


def one_stage(parts: Parts, k: int = 1) -> Tuple[int, Dict[str, torch.Tensor]]:
    """OSGAN: one joint step (k is ignored: one student and one generator update per cycle)."""
    return replay(parts, 1, one_stage_step(parts, parts.sample_z()))


def hybrid(parts: Parts, k: int) -> Tuple[int, Dict[str, torch.Tensor]]:
    """k-1 student-only steps, then one joint step: DFAD's k:1 ratio with one pass saved per cycle."""
    skipped = sum(student_step(parts, parts.sample_z())["skipped"] for _ in range(k - 1))
    metrics = one_stage_step(parts, parts.sample_z())
    metrics["skipped"] += skipped
    return replay(parts, k, metrics)


def real_data(parts: Parts, k: int = 1) -> Tuple[int, Dict[str, torch.Tensor]]:
    """Not data-free: one student update on a batch of the real training split, with the same loss, optimizer,
    schedule and weight average as the data-free schemes (no generator, no pool; k is ignored)."""
    x, idx = parts.real()
    observe = partial(parts.priors.observe, parts.teacher)
    if parts.student_taps is not None:  # attention transfer needs the teacher's stage outputs of this batch
        with torch.no_grad():
            out = observe(x)
    else:
        out = parts.real.teacher_logits(observe, x, idx)
    return 1, student_update(parts, x, out)


SCHEMES = {"two_stage": two_stage, "one_stage": one_stage, "hybrid": hybrid, "real_data": real_data}
DATA_FREE = ("two_stage", "one_stage", "hybrid")  # the schemes with a generator (and a replay pool, if asked)


def schemes_with_k() -> Dict[str, bool]:
    """Every scheme of ``SCHEMES`` (dfkd/schemes.py) and whether its name carries k: a scheme that
    ignores k gives it a default (``one_stage(parts, k=1)``)."""
    return {name: inspect.signature(step).parameters["k"].default is inspect.Parameter.empty
            for name, step in SCHEMES.items()}


def scheme_label(scheme: str, k: int) -> str:
    """The name of a scheme in compare's tables and every run directory: one_stage, two_stage_k5, hybrid_k5."""
    return f"{scheme}_k{k}" if schemes_with_k()[scheme] else scheme


def parse_scheme(name: str) -> Tuple[str, int]:
    """``two_stage_k5`` -> ("two_stage", 5); ``one_stage`` -> ("one_stage", 1); ``hybrid_k5`` -> ("hybrid", 5)."""
    with_k = schemes_with_k()
    base, _, k = name.rpartition("_k")
    if with_k.get(name) is False:
        return name, 1
    if with_k.get(base) and re.fullmatch(r"[1-9][0-9]*", k):
        return base, int(k)
    names = ", ".join(f"{s}_kN" if takes_k else s for s, takes_k in with_k.items())
    example = next(s for s, takes_k in with_k.items() if takes_k)
    raise DfkdError(f"scheme '{name}' is not one of {names} (e.g. {example}_k5)")


def cycle_updates(cfg) -> int:
    """Student updates in one cycle of ``cfg``'s scheme: k (1 for one_stage), plus the pool steps."""
    k = cfg.k if schemes_with_k()[cfg.scheme] else 1
    return k + (cfg.pool.steps if cfg.pool.size and cfg.scheme in DATA_FREE else 0)


def pool_intake(cfg, batch: int) -> int:
    """Images one cycle of ``cfg``'s scheme adds to its replay pool, once the pool holds a batch: the
    generating step's whole ``batch`` (a process's share), and ``pool.fresh`` of each student-only step's."""
    joint = cfg.scheme != "two_stage"  # one_stage's and hybrid's generating step is also a student update
    fresh = round(cfg.pool.fresh * batch)
    return batch + (cycle_updates(cfg) - joint) * (2 if fresh == 1 else fresh)
