"""Adversarial discrepancies between student and teacher (generator priors: dfkd/priors.py).

An adversarial loss is written through a per-sample discrepancy ``d_i`` (e.g. L1 between
logits). The student minimises ``mean_i d_i``; the generator minimises ``generator_loss(d)``.
For symmetric losses that is ``-mean_i d_i`` and one-stage training simply reverses the
gradient. For asymmetric ones, OSGAN's decomposition rescales the reversed gradient by
``gamma_i = -(dl_G/dd_i) / (dl_S/dd_i)`` per sample, or by ``lambda = -g'(mean d)`` per batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from dfkd.features import full  # re-exported: the upcast every loss term uses


def l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference of logits (DFAD); its batch mean is ``F.l1_loss``."""
    return (student_logits - teacher_logits).abs().flatten(1).mean(1)


def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(teacher || student) of the softmax outputs."""
    log_s = F.log_softmax(full(student_logits), dim=1)
    log_t = F.log_softmax(full(teacher_logits), dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1)


@dataclass(frozen=True)
class Adversarial:
    """One adversarial loss: the discrepancy, the generator's loss on it, and how one-stage scales.

    ``mode`` is ``symmetric`` (generator loss = -student loss: plain reversal), ``batch``
    (one scale for the batch: exact for any student) or ``sample`` (a scale per sample:
    exact only when the student treats samples independently, i.e. no train-mode BatchNorm).
    ``scale`` gives that scale in closed form from the detached discrepancies.
    """

    discrepancy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator_loss: Callable[[torch.Tensor], torch.Tensor]
    mode: str = "symmetric"
    scale: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


ADVERSARIAL: Dict[str, Adversarial] = {
    "l1": Adversarial(l1, lambda d: -d.mean()),
    "kl": Adversarial(kl, lambda d: -d.mean()),
    # generator minimises -log(1 + L), L the batch L1: lambda = 1 / (1 + L)
    "l1_log": Adversarial(l1, lambda d: -torch.log1p(d.mean()), "batch", lambda d: 1 / (1 + d.mean())),
    # per-sample version: generator minimises -mean_i log(1 + d_i): gamma_i = 1 / (1 + d_i)
    "l1_log_sample": Adversarial(l1, lambda d: -torch.log1p(d).mean(), "sample", lambda d: 1 / (1 + d)),
}


def gradient_scale(adv: Adversarial, d: torch.Tensor, max_scale: float) -> tuple[torch.Tensor, Dict[str, float]]:
    """The generator's gradient scale (scalar or per sample) from detached fp32 discrepancies.

    Uses the closed form where the loss has one, else the ratio of autograd derivatives with a
    guarded denominator. The result is clamped to ``[0, max_scale]``; statistics are returned for logging.
    """
    d = full(d.detach())
    if adv.scale is not None:
        scale = adv.scale(d)
    else:
        dv = d.clone().requires_grad_(True)
        (dg,) = torch.autograd.grad(adv.generator_loss(dv), dv)
        ds = torch.full_like(d, 1.0 / d.numel())  # d(mean d)/dd_i
        if adv.mode == "batch":
            dg, ds = dg.sum(), ds.sum()
        scale = -dg / ds.abs().clamp_min(1e-12).copysign(ds)
    clamped = (scale < 0) | (scale > max_scale)
    scale = scale.clamp(0.0, max_scale)
    stats = {"scale_min": scale.min().item(), "scale_mean": scale.mean().item(),
             "scale_max": scale.max().item(), "scale_clamped": clamped.float().mean().item()}
    return scale, stats


@dataclass
class TeacherOutput:
    """The teacher's logits on a batch and, when a method reads them, its stage outputs and pre-logits."""

    logits: torch.Tensor
    maps: List[torch.Tensor] = field(default_factory=list)  # stage outputs (attention transfer), else []
    pre_logits: Optional[torch.Tensor] = None  # input of the classifier (activation, contrastive), else None
