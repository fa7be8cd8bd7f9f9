"""Intermediate features of teacher and student, and the loss terms of the methods that use them.

Features are read with forward hooks on the modules timm names in ``model.feature_info`` (stage
outputs) and on the input of ``model.get_classifier()`` (the pre-logits), so any timm model works,
wrapped by DDP, autocast or torch.compile or not. Hooks record only inside ``record()``: evaluation
forwards cost nothing extra.

- attention transfer (ZSKT, Zagoruyko & Komodakis 2017): per sample,
  ``sum_j mean_p (a_S^j - a_T^j)^2`` with ``a^j = normalize(mean_c f_j^2)`` the spatial attention of stage j;
- activation (DAFL): ``-mean |f_T|`` of the teacher's pre-logits;
- contrastive (CMI): InfoNCE of each image's pre-logits against those of a second view of it,
  the other images of the batch and a memory of past images (the replay pool) as negatives.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import DfkdError

AT_STAGES = 3  # ZSKT matches the three groups of its WRNs; other nets: their last three feature_info stages
TEMPERATURE = 0.1  # of the contrastive loss (CMI's)


def full(x: torch.Tensor) -> torch.Tensor:
    """Upcast fp16/bf16 to fp32 for reductions and logs; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def stage_modules(model: nn.Module, role: str) -> List[nn.Module]:
    """The modules of ``model.feature_info`` (timm's stage outputs), in order."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise DfkdError(f"the {role} has no timm feature_info, which attention transfer needs to find its stages; "
                        f"use features.at=0 or a timm model")
    names = [entry["module"] for entry in (info.get_dicts() if hasattr(info, "get_dicts") else info)]
    modules = dict(model.named_modules())
    return [modules[n] for n in names]


def hookable(model: nn.Module) -> bool:
    """Forward hooks (BatchNorm prior, feature taps) work on every module but TorchScript ones."""
    return not isinstance(model, torch.jit.ScriptModule)


def classifier_of(model: nn.Module, role: str = "teacher") -> nn.Module:
    """The layer whose input is the pre-logits: timm's ``get_classifier()``, else the last linear layer (a plain
    ``nn.Linear``, or an exported program's layer holding one 2-D weight)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    linear = [m for m in model.modules() if isinstance(m, nn.Linear) or (
        {n for n, _ in m.named_parameters(recurse=False)} in ({"weight"}, {"weight", "bias"})
        and getattr(m, "weight", None) is not None and m.weight.ndim == 2 and not list(m.children()))]
    if not linear:
        raise DfkdError(f"the {role} has no classifier layer (timm's get_classifier, or a linear layer) whose input "
                        f"the pre-logit terms read; switch them off (priors.act=0 priors.cmi=0)")
    return linear[-1]


class Taps:
    """Records stage outputs (``maps``) and/or the pre-logits (``pre_logits``) of forwards run inside ``record()``."""

    def __init__(self, model: nn.Module, role: str, stages: int = 0, pre_logits: bool = False):
        self.maps: List[torch.Tensor] = []
        self.pre_logits: Optional[torch.Tensor] = None
        self.on = False
        if stages:
            for module in stage_modules(model, role)[-stages:]:
                module.register_forward_hook(self._map)
        if pre_logits:
            classifier_of(model, role).register_forward_hook(self._pre_logits)

    def _map(self, _module, _inputs, output) -> None:
        if self.on:
            self.maps.append(output)

    def _pre_logits(self, _module, inputs, _output) -> None:
        if self.on:
            self.pre_logits = inputs[0].flatten(1)

    @contextmanager
    def record(self) -> Iterator["Taps"]:
        self.maps, self.pre_logits, self.on = [], None, True
        try:
            yield self
        finally:
            self.on = False


def stages_for(teacher: nn.Module, student: nn.Module) -> int:
    """How many stages attention transfer pairs: the last ``AT_STAGES`` of the shallower of the two."""
    return min(AT_STAGES, len(stage_modules(teacher, "teacher")), len(stage_modules(student, "student")))


def attention(f: torch.Tensor, size: int) -> torch.Tensor:
    """Spatial attention of a feature map, pooled to ``size`` x ``size``, flattened and L2-normalised per sample."""
    a = full(f).pow(2).mean(1, keepdim=True)
    if a.shape[-1] != size:
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_transfer(student_maps: List[torch.Tensor], teacher_maps: List[torch.Tensor]) -> torch.Tensor:
    """Per-sample attention-transfer distance summed over paired stages (ZSKT's term, before its weight beta)."""
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps):
        size = min(fs.shape[-1], ft.shape[-1])
        total = total + (attention(fs, size) - attention(ft, size)).pow(2).mean(1)
    return total


def activation_loss(pre_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss: minus the mean absolute teacher pre-logit activation."""
    return -full(pre_logits).abs().mean()


def second_view(x: torch.Tensor) -> torch.Tensor:
    """A local view of every image: a 3/4 crop from one of the four corners (by index, so no RNG to
    checkpoint), resized back: differentiable, so the generator learns from it."""
    h, w = x.shape[-2:]
    ch, cw = (3 * h) // 4, (3 * w) // 4
    crops = [x[i::4, :, r:r + ch, c:c + cw] for i, (r, c) in enumerate(((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)))]
    views = torch.empty_like(x)
    for i, crop in enumerate(crops):
        views[i::4] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return views


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, memory: Optional[torch.Tensor]) -> torch.Tensor:
    """InfoNCE (temperature ``TEMPERATURE``): each anchor against its positive, the other positives and
    ``memory`` (past pre-logits, detached) as negatives. Minimised by images the teacher tells apart."""
    a, p = F.normalize(full(anchor), dim=1), F.normalize(full(positive), dim=1)
    keys = p if memory is None or not len(memory) else torch.cat([p, F.normalize(full(memory).to(p.dtype), dim=1)])
    logits = a @ keys.t() / TEMPERATURE
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
