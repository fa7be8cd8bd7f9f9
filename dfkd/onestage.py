"""One-stage adversarial distillation (OSGAN, Shen et al., CVPR 2021): one forward, one backward.

The student's loss is ``mean_i d_i`` with ``d_i`` the student-teacher discrepancy on
generated images. The generator wants the opposite (or a rescaled opposite). Instead of a
second forward/backward for the generator, the gradient that flows back from the loss
into the generated images is reversed (and rescaled) on the way: the student's weights
get the student's gradient, the generator's weights the generator's, from one backward.
"""
from __future__ import annotations

from typing import Dict

import torch

from dfkd.features import attention_transfer
from dfkd.losses import TeacherOutput, full, gradient_scale


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; backward returns ``-scale * grad``.

    ``scale`` (0-dim, or one value per sample) is read when the gradient flows back, not
    when the op runs, so a scale that depends on the loss (asymmetric losses) can be
    filled in after the forward with ``scale.copy_(...)``: still one forward, one backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.scale = scale  # kept by reference on purpose, see the class docstring
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = ctx.scale.to(grad.dtype)
        if scale.ndim:  # per sample: broadcast over the non-batch dimensions
            scale = scale.reshape(-1, *([1] * (grad.ndim - 1)))
        return -scale * grad, None


def reverse_grad(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Gradient reversal with a tensor scale (scalar or per sample); identity in the forward."""
    return _ReverseGrad.apply(x, scale)


def discrepancy(parts, x: torch.Tensor, teacher: TeacherOutput, with_at: bool = True) -> torch.Tensor:
    """Per-sample student-teacher discrepancy on ``x``: the adversarial loss's, plus attention transfer
    on the stage outputs when ``features.at`` > 0 (and ``with_at``)."""
    if parts.student_taps is None or not with_at:
        return parts.adversarial.discrepancy(parts.student(x), teacher.logits)
    with parts.student_taps.record() as taps:
        s = parts.student(x)
    attention = attention_transfer(taps.maps, teacher.maps)
    return parts.adversarial.discrepancy(s, teacher.logits) + parts.at_weight * attention


def one_stage_step(parts, z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One joint update of student and generator from a single forward and a single backward.

    The teacher sees the generated images unreversed, so the generator priors computed on
    its logits/features get their plain gradient; only the adversarial path is reversed:
    the images entering the student and the teacher logits (and stage outputs, for attention
    transfer, when the generator is to maximise it too) entering the discrepancy. The generator's
    weight of the adversarial term rides on the reversal's scale: 0 (DAFL) sends the generator
    nothing from the student's loss.
    """
    adv, w = parts.adversarial, parts.adversarial_weight
    x = parts.generator(z)
    out, prior_loss, metrics = parts.priors.teacher_forward(parts.teacher, x)
    if parts.pool is not None:  # the replay pool keeps the batch and its teacher outputs
        parts.pool.add(x, out.logits, out.pre_logits)
    scale = torch.full((x.shape[0],) if adv.mode == "sample" else (), float(w), device=x.device,
                       dtype=torch.promote_types(x.dtype, torch.float32))  # never below fp32
    reversed_teacher = TeacherOutput(reverse_grad(out.logits, scale), [reverse_grad(m, scale) for m in out.maps])
    # ZSKT's split (at_adversarial false): the joint step leaves attention transfer out
    d = discrepancy(parts, reverse_grad(x, scale), reversed_teacher, with_at=parts.at_adversarial)
    loss = full(d).mean()
    if adv.mode != "symmetric":  # gamma / lambda from the unscaled fp32 discrepancies
        value, stats = gradient_scale(adv, d, parts.max_scale)
        scale.copy_(w * value)
        metrics.update({k: torch.tensor(v) for k, v in stats.items()})
    parts.opt_s.zero_grad(set_to_none=True)
    parts.opt_g.zero_grad(set_to_none=True)
    parts.accelerator.backward(loss + prior_loss)
    skipped = step_together(parts.accelerator, parts.opt_s, parts.opt_g)
    metrics.update(loss_s=loss.detach(), loss_g=w * adv.generator_loss(full(d.detach())), skipped=skipped)
    return metrics


def step_together(accelerator, *optimizers) -> float:
    """Step every optimizer after one backward; under fp16, all of them or none. Returns 1.0 if skipped.

    Accelerate's ``AcceleratedOptimizer.step`` runs ``scaler.step`` *and* ``scaler.update`` per
    optimizer: with one backward feeding two, the second would be unscaled by an already-updated
    scale, and an inf in one optimizer's gradients would not stop the other. So: one scale, one
    inf check over all gradients, one ``update``.
    """
    scaler = accelerator.scaler
    if scaler is None:  # fp32 / bf16: nothing to unscale, nothing to skip
        for opt in optimizers:
            opt.step()
        return 0.0
    inner = [getattr(opt, "optimizer", opt) for opt in optimizers]  # the torch optimizers Accelerate wraps
    for opt in inner:
        scaler.unscale_(opt)
    # what scaler.step itself reads to decide a skip, summed over all optimizers
    states = [scaler._per_optimizer_states[id(opt)] for opt in inner]
    found_inf = sum(v.item() for state in states for v in state["found_inf_per_device"].values())
    if not found_inf:
        for opt in inner:
            scaler.step(opt)  # already unscaled: steps without a second inf check
    scaler.update()  # once per backward: halves the scale after an overflow
    return float(found_inf > 0)
