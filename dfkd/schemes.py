"""Step policies: how student and generator updates are scheduled. One function each.

``two_stage(k)`` is DFAD's alternating baseline, ``one_stage`` the joint OSGAN update and
``hybrid(k)`` mixes them: k-1 cheap student-only steps, then one joint step. Each call runs
one cycle and returns (student updates made, metrics of its last steps); ``skipped`` counts the
cycle's updates skipped by the fp16 loss scaler (inf/NaN gradients).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch import nn

from dfkd.losses import Adversarial, Priors, full
from dfkd.onestage import one_stage_step, step_together


@dataclass
class Parts:
    """Everything a step touches. ``sample_z(n)`` draws fresh latent codes."""

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


def student_step(parts: Parts, z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One student update on a fresh batch; generator and teacher run without autograd."""
    with torch.no_grad():
        x = parts.generator(z)
        t = parts.teacher(x)
    loss = full(parts.adversarial.discrepancy(parts.student(x), t)).mean()
    parts.opt_s.zero_grad(set_to_none=True)
    parts.accelerator.backward(loss)
    return {"loss_s": loss.detach(), "skipped": step_together(parts.accelerator, parts.opt_s)}


def generator_step(parts: Parts, z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One generator update: maximise the discrepancy (plus priors); the student's weights get no gradient."""
    x = parts.generator(z)
    t, prior_loss, metrics = parts.priors.teacher_forward(parts.teacher, x)
    with frozen(parts.student), parts.accelerator.no_sync(parts.student):
        d = parts.adversarial.discrepancy(parts.student(x), t)
        loss_g = parts.adversarial.generator_loss(full(d))
        parts.opt_g.zero_grad(set_to_none=True)
        parts.accelerator.backward(loss_g + prior_loss)
    metrics.update(loss_g=loss_g.detach(), skipped=step_together(parts.accelerator, parts.opt_g))
    return metrics


def two_stage(parts: Parts, k: int) -> Tuple[int, Dict[str, torch.Tensor]]:
    """DFAD: k student steps, then one generator step (four passes per student step at k=1)."""
    skipped = 0.0
    for _ in range(k):
        metrics = student_step(parts, parts.sample_z())
        skipped += metrics["skipped"]
    metrics.update(generator_step(parts, parts.sample_z()))
    metrics["skipped"] += skipped
    return k, metrics


def one_stage(parts: Parts, k: int = 1) -> Tuple[int, Dict[str, torch.Tensor]]:
    """OSGAN: one joint step (k is ignored: one student and one generator update per cycle)."""
    return 1, one_stage_step(parts, parts.sample_z())


def hybrid(parts: Parts, k: int) -> Tuple[int, Dict[str, torch.Tensor]]:
    """k-1 student-only steps, then one joint step: DFAD's k:1 ratio with one pass saved per cycle."""
    skipped = sum(student_step(parts, parts.sample_z())["skipped"] for _ in range(k - 1))
    metrics = one_stage_step(parts, parts.sample_z())
    metrics["skipped"] += skipped
    return k, metrics


SCHEMES = {"two_stage": two_stage, "one_stage": one_stage, "hybrid": hybrid}
