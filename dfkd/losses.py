"""Adversarial discrepancies between student and teacher, and optional generator priors.

An adversarial loss is written through a per-sample discrepancy ``d_i`` (e.g. L1 between
logits). The student minimises ``mean_i d_i``; the generator minimises ``generator_loss(d)``.
For symmetric losses that is ``-mean_i d_i`` and one-stage training simply reverses the
gradient. For asymmetric ones, OSGAN's decomposition rescales the reversed gradient by
``gamma_i = -(dl_G/dd_i) / (dl_S/dd_i)`` per sample, or by ``lambda = -g'(mean d)`` per batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import DfkdError
from dfkd.features import Taps, activation_loss, contrastive_loss, full, second_view  # full: re-exported


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


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss: cross-entropy of the teacher against its own arg-max."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(1))


def class_perplexity(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Effective number of classes in a batch: exp of the entropy of the batch-mean teacher prediction."""
    return torch.exp(-entropy_loss(teacher_logits))


def entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: minus the entropy of the batch-mean teacher prediction."""
    p = F.softmax(full(teacher_logits), dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


BN_PRIOR = 1.0  # priors.bn=null: this weight when the teacher has BatchNorm layers, as CMI weighs it


def batchnorm_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``model``'s BatchNorm layers (any dimension), with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_prior_weight(bn: Optional[float], teacher: nn.Module) -> float:
    """``priors.bn``, or when null the rule: ``BN_PRIOR`` for a teacher with BatchNorm layers, else 0."""
    if bn is not None:
        return bn
    return BN_PRIOR if batchnorm_layers(teacher) else 0.0


class BNStatsPrior:
    """DeepInversion/CMI prior: batch statistics at each teacher BatchNorm input match its running stats.

    Forward hooks record the loss terms only inside ``record()``, so evaluation forwards
    and the no-grad teacher forwards of student steps cost nothing extra.
    """

    def __init__(self, teacher: nn.Module):
        self.layers = [m for _, m in batchnorm_layers(teacher)]
        if not self.layers:
            raise ValueError("priors.bn needs BatchNorm layers in the teacher, and it has none")
        self.terms: Optional[List[torch.Tensor]] = None
        for layer in self.layers:
            layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, _output) -> None:
        if self.terms is None:
            return
        x = full(inputs[0])
        dims = [0] + list(range(2, x.ndim))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    @contextmanager
    def record(self) -> Iterator[List[torch.Tensor]]:
        self.terms = []
        try:
            yield self.terms
        finally:
            self.terms = None


@dataclass
class TeacherOutput:
    """The teacher's logits on a batch and, when a method reads them, its stage outputs and pre-logits."""

    logits: torch.Tensor
    maps: List[torch.Tensor] = field(default_factory=list)  # stage outputs (attention transfer), else []
    pre_logits: Optional[torch.Tensor] = None  # input of the classifier (activation, contrastive), else None


MEMORY = 4096  # past images' pre-logits drawn from the replay pool as the contrastive prior's negatives


class Priors:
    """The weighted sum of the generator priors switched on in the recipe (see PriorsConfig), and the
    teacher's features the methods read (``at_stages`` stage outputs, pre-logits for act / cmi)."""

    def __init__(self, weights, teacher: nn.Module, at_stages: int = 0, pool=None):
        self.bn_w, self.oh_w, self.ie_w = bn_prior_weight(weights.bn, teacher), weights.oh, weights.ie
        self.act_w, self.cmi_w, self.pool = weights.act, weights.cmi, pool
        if self.bn_w > 0 and not batchnorm_layers(teacher):
            raise DfkdError("priors.bn needs BatchNorm layers in the teacher, and it has none (method=dfq is "
                            "defined by them): use priors.bn=0, or a teacher with BatchNorm")
        self.bn = BNStatsPrior(teacher) if self.bn_w > 0 else None
        pre_logits = bool(self.act_w or self.cmi_w)  # the pool keeps pre-logits exactly when cmi reads them
        self.taps = Taps(teacher, "teacher", at_stages, pre_logits) if at_stages or pre_logits else None

    @property
    def active(self) -> bool:
        return bool(self.bn_w or self.oh_w or self.ie_w or self.act_w or self.cmi_w)

    def observe(self, teacher: nn.Module, x: torch.Tensor) -> TeacherOutput:
        """The teacher's outputs on ``x`` (under the caller's grad mode), features included when read."""
        if self.taps is None:
            return TeacherOutput(teacher(x))
        with self.taps.record() as taps:
            t = teacher(x)
        return TeacherOutput(t, taps.maps, taps.pre_logits)

    def teacher_forward(self, teacher: nn.Module, x: torch.Tensor):
        """Teacher outputs on ``x`` and the prior loss (a 0-dim tensor, 0 when no prior is on), with metrics."""
        if self.bn is None:
            out, bn_term = self.observe(teacher, x), None
        else:
            with self.bn.record() as terms:
                out = self.observe(teacher, x)
            bn_term = torch.stack(terms).sum()
        t = out.logits
        loss, parts = t.new_zeros((), dtype=torch.float32), {}
        for name, w, term in (("bn", self.bn_w, lambda: bn_term), ("oh", self.oh_w, lambda: one_hot_loss(t)),
                              ("ie", self.ie_w, lambda: entropy_loss(t)),
                              ("act", self.act_w, lambda: activation_loss(out.pre_logits)),
                              ("cmi", self.cmi_w, lambda: self.contrastive(teacher, x, out.pre_logits))):
            if w > 0:
                value = term()
                parts[f"prior_{name}"] = value.detach()
                loss = loss + w * value
        # how many classes the generator covers, as the teacher sees it: the perplexity of the batch-mean
        # prediction, C when balanced, 1 when collapsed to one class (logged, never optimised)
        parts["gen_classes"] = class_perplexity(t.detach())
        return out, loss, parts

    def contrastive(self, teacher: nn.Module, x: torch.Tensor, pre_logits: torch.Tensor) -> torch.Tensor:
        """CMI's term: each image's pre-logits against a second view's, with the pool's past images as negatives."""
        with self.taps.record() as taps:
            teacher(second_view(x))
        memory = self.pool.memory(MEMORY) if self.pool.count else None
        return contrastive_loss(pre_logits, taps.pre_logits, memory)
