"""Generator priors: generator-only loss terms on the teacher's view of a generated batch, never reversed.

``PRIORS`` is the table of them. Each entry is everything dfkd knows of a prior: its key ``priors.NAME``
(schema, ``--help``, range check), its default weight, what of the teacher it reads (so the run taps its
pre-logits, hooks its BatchNorm layers or keeps pre-logits in the replay pool, and refuses a teacher or a
run that cannot give them), and its term. The method presets switch every prior off but the ones they name.
Adding a prior is one entry here (docs/extending.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import DfkdError
from dfkd.features import Taps, activation_loss, contrastive_loss, full, hookable, second_view
from dfkd.losses import TeacherOutput

BN_PRIOR = 1.0  # priors.bn=null: this weight when the teacher has BatchNorm layers, as CMI weighs it
MEMORY = 4096  # past images' pre-logits drawn from the replay pool as the contrastive prior's negatives
READS = {  # what a prior may read, and what the run must provide for it
    "bn": "the teacher's BatchNorm layers (their batch statistics, by forward hooks)",
    "pre_logits": "the teacher's pre-logits (the input of its classifier)",
    "pool": "past images kept in the replay pool",
}


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss: cross-entropy of the teacher against its own arg-max."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(1))


def entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: minus the entropy (natural log) of the batch-mean teacher prediction."""
    p = F.softmax(full(teacher_logits), dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, down and across (anisotropic TV): small for smooth
    images, large for the saturated high-frequency patterns a generator finds without an image prior."""
    x = full(x)
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def class_perplexity(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Effective number of classes in a batch: exp of the entropy of the batch-mean teacher prediction."""
    return torch.exp(-entropy_loss(teacher_logits))


def batchnorm_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``model``'s BatchNorm layers (any dimension), with their names: ``nn.BatchNorm*``, or an exported program's
    layer holding BatchNorm's running statistics. None in a TorchScript module, whose layers cannot be hooked."""
    if not hookable(model):
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
        {"running_mean", "running_var"} <= {b for b, _ in m.named_buffers(recurse=False)} and not list(m.children()))]


def bn_rule(teacher: nn.Module) -> Tuple[float, str]:
    """priors.bn=null: ``BN_PRIOR`` for a teacher with BatchNorm layers, else 0; and why."""
    if not hookable(teacher):
        return 0.0, "a TorchScript teacher's layers cannot be hooked"
    found = len(batchnorm_layers(teacher))
    if found:
        return BN_PRIOR, f"it has {found} BatchNorm layers"
    return 0.0, ("it has no BatchNorm layer, so the generator has no image statistics to match; expect the student "
                 "further from such a teacher, docs/students.md 'Beyond digits'")


@dataclass(frozen=True)
class Prior:
    """One generator prior. ``term(priors, teacher, x, out)`` is its 0-dim loss on images ``x`` whose teacher
    outputs are ``out``; ``priors`` (the run's ``Priors``) holds what it reads (``bn_terms``, ``taps``, ``pool``)."""

    doc: str
    term: Callable[["Priors", nn.Module, torch.Tensor, TeacherOutput], torch.Tensor]
    default: Optional[float] = 0.0  # None: decided from the teacher by ``auto`` (the run says what it decided)
    reads: FrozenSet[str] = frozenset()  # keys of READS
    auto: Optional[Callable[[nn.Module], Tuple[float, str]]] = None  # the weight of a null from the teacher, and why


PRIORS: Dict[str, Prior] = {  # the order is the order of the terms in the generator's loss
    "bn": Prior("BatchNorm-statistics matching on the teacher's BN layers (DeepInversion/DFQ); null: "
                f"{BN_PRIOR} if the teacher has BatchNorm, else 0",
                lambda p, teacher, x, out: torch.stack(p.bn_terms).sum(), default=None, reads=frozenset({"bn"}),
                auto=lambda teacher: bn_rule(teacher)),
    "oh": Prior("one-hot cross-entropy of the teacher's prediction (DAFL)",
                lambda p, teacher, x, out: one_hot_loss(out.logits)),
    "ie": Prior("information entropy of the batch-mean teacher prediction: class balance (DAFL)",
                lambda p, teacher, x, out: entropy_loss(out.logits)),
    "act": Prior("activation: minus the mean |teacher pre-logits| (DAFL)",
                 lambda p, teacher, x, out: activation_loss(out.pre_logits), reads=frozenset({"pre_logits"})),
    "cmi": Prior("contrastive: teacher pre-logits of each image against a second view of it, the batch and the "
                 "replay pool's past images (CMI); needs pool.size > 0",
                 lambda p, teacher, x, out: p.contrastive(teacher, x, out.pre_logits),
                 reads=frozenset({"pre_logits", "pool"})),
    "tv": Prior("total variation of the images, as the teacher takes them: smooth pixels (DeepInversion's image "
                "prior), for teachers without BatchNorm statistics to match",
                lambda p, teacher, x, out: total_variation(x)),
}


def prior_weights(weights, teacher: nn.Module) -> Dict[str, float]:
    """Every prior's weight from ``weights`` (a PriorsConfig), a null decided from the teacher (``decide``)."""
    return {name: decide(weights, name, teacher)[0] for name in PRIORS}


def decide(weights, name: str, teacher: nn.Module) -> Tuple[float, str]:
    """Prior ``name``'s weight and, where a null was decided from the teacher, why (else "")."""
    value = getattr(weights, name)
    if value is not None:
        return float(value), ""
    weight, why = PRIORS[name].auto(teacher)
    return float(weight), why


def reads_of(weights: Dict[str, float]) -> FrozenSet[str]:
    """What the priors switched on in ``weights`` read (keys of READS)."""
    return frozenset().union(*(PRIORS[name].reads for name, w in weights.items() if w > 0))


class BNStatsPrior:
    """DeepInversion/CMI prior: batch statistics at each teacher BatchNorm input match its running stats.

    Forward hooks record the loss terms only inside ``record()``, so evaluation forwards
    and the no-grad teacher forwards of student steps cost nothing extra.
    """

    def __init__(self, teacher: nn.Module):
        self.layers = [m for _, m in batchnorm_layers(teacher)]
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


class Priors:
    """The weighted sum of the generator priors switched on (``PRIORS``), and the teacher's features the
    methods read (``at_stages`` stage outputs for attention transfer, pre-logits where a prior reads them)."""

    def __init__(self, weights, teacher: nn.Module, at_stages: int = 0, pool=None):
        self.weights = prior_weights(weights, teacher)
        self.on = {name: w for name, w in self.weights.items() if w > 0}
        reads = reads_of(self.on)
        hooked = [n for n in self.on if PRIORS[n].reads & {"bn", "pre_logits"}]
        if hooked and not hookable(teacher):
            names = ", ".join(f"priors.{n}" for n in hooked)
            raise DfkdError(f"{names} read the teacher's layers through hooks, which a TorchScript teacher does not "
                            f"allow: set {names.replace(', ', '=0 ')}=0, or give the teacher as a torch.export .pt2 "
                            f"file or as code (docs/own-teacher.md)")
        if "bn" in reads and not batchnorm_layers(teacher):
            names = ", ".join(f"priors.{n}" for n in self.on if "bn" in PRIORS[n].reads)
            raise DfkdError(f"{names} needs BatchNorm layers in the teacher, and it has none (method=dfq is defined "
                            f"by them): use {names}=0, or a teacher with BatchNorm")
        self.bn = BNStatsPrior(teacher) if "bn" in reads else None
        self.bn_terms: List[torch.Tensor] = []
        self.pool = pool
        pre_logits = "pre_logits" in reads
        self.taps = Taps(teacher, "teacher", at_stages, pre_logits) if at_stages or pre_logits else None

    @property
    def active(self) -> bool:
        return bool(self.on)

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
            out = self.observe(teacher, x)
        else:
            with self.bn.record() as terms:
                out = self.observe(teacher, x)
            self.bn_terms = terms
        loss, metrics = out.logits.new_zeros((), dtype=torch.float32), {}
        for name, w in self.on.items():
            value = PRIORS[name].term(self, teacher, x, out)
            metrics[f"prior_{name}"] = value.detach()
            loss = loss + w * value
        self.bn_terms = []
        # how many classes the generator covers, as the teacher sees it: the perplexity of the batch-mean
        # prediction, C when balanced, 1 when collapsed to one class (logged, never optimised)
        metrics["gen_classes"] = class_perplexity(out.logits.detach())
        return out, loss, metrics

    def contrastive(self, teacher: nn.Module, x: torch.Tensor, pre_logits: torch.Tensor) -> torch.Tensor:
        """CMI's term: each image's pre-logits against a second view's, with the pool's past images as negatives."""
        with self.taps.record() as taps:
            teacher(second_view(x))
        memory = self.pool.memory(MEMORY) if self.pool is not None and self.pool.count else None
        return contrastive_loss(pre_logits, taps.pre_logits, memory)
