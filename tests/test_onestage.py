"""One-stage gradients equal two-stage gradients: same parameters, same z, fp64, exact up to rounding."""
from __future__ import annotations

import copy

import pytest
import torch
from parts import parts_for  # tests/parts.py
from torch import nn

from dfkd.losses import ADVERSARIAL, Adversarial, gradient_scale
from dfkd.models import Generator
from dfkd.onestage import one_stage_step, reverse_grad
from dfkd.schema import PriorsConfig
from dfkd.schemes import Parts, generator_step, student_step

CLASSES, NZ, SIZE = 5, 8, 8


def small_net(batchnorm: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if batchnorm else []) + [
        nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES)]
    return nn.Sequential(*layers).double()


def trio(teacher: nn.Module, student: nn.Module) -> tuple:
    """The frozen teacher with non-trivial BN running stats (so the BN prior is not zero), the student in
    train mode, and a small fp64 generator."""
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    torch.manual_seed(3)
    generator = Generator(nz=NZ, ngf=4, image_size=SIZE, channels=1).double().train()
    return teacher.eval().requires_grad_(False), student.train(), generator


def make_parts(loss: str, student_bn: bool, priors: PriorsConfig) -> Parts:
    teacher, student, generator = trio(small_net(batchnorm=True, seed=1), small_net(batchnorm=student_bn, seed=2))
    # lr=0: optimizer steps leave the weights where they are, and the gradients stay readable
    opt_s = torch.optim.SGD(student.parameters(), lr=0.0)
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.0)
    keys = [f"loss={loss}", *(f"priors.{k}={'null' if v is None else v}" for k, v in vars(priors).items())]
    return parts_for(teacher, student, generator, keys, optimizers=(opt_s, opt_g))


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


CASES = {
    "l1 symmetric": ("l1", False, PriorsConfig()),
    "kl symmetric": ("kl", False, PriorsConfig()),
    "l1 with BatchNorm student in train mode": ("l1", True, PriorsConfig()),
    "-log(1+L) per batch": ("l1_log", False, PriorsConfig()),
    "-log(1+L) per batch, BatchNorm student": ("l1_log", True, PriorsConfig()),
    "-log(1+L) per sample": ("l1_log_sample", False, PriorsConfig()),
    "l1 with bn, oh and ie priors": ("l1", True, PriorsConfig(bn=0.7, oh=0.3, ie=2.0)),
    "-log(1+L) per sample with priors": ("l1_log_sample", False, PriorsConfig(bn=0.5, oh=1.0, ie=1.0)),
}


def assert_one_stage_equals_two_stage(parts: Parts, z: torch.Tensor, reset=lambda: None) -> None:
    """A student step and a generator step, then one joint step, on the same z: the same gradients, in fp64.
    ``reset`` runs before each step (e.g. to put a replay pool back as it was)."""
    reset()
    student_step(parts, z)
    two_stage_student = grads(parts.student)
    reset()
    generator_step(parts, z)
    two_stage_generator = grads(parts.generator)
    for got, want in zip(grads(parts.student), two_stage_student):  # frozen student: no weight gradient
        assert torch.equal(got, want), "the generator step must not add to the student's gradients"
    reset()
    one_stage_step(parts, z)
    for got, want in zip(grads(parts.student), two_stage_student):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads(parts.generator), two_stage_generator):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in two_stage_generator), "the test must compare non-zero gradients"


@pytest.mark.parametrize("case", list(CASES))
def test_one_stage_gradients_equal_two_stage(case):
    loss, student_bn, priors = CASES[case]
    parts = make_parts(loss, student_bn, priors)
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert_one_stage_equals_two_stage(parts, z)


def test_one_stage_generator_gradient_matches_autograd_reference():
    """Independent of dfkd's two-stage code: -dL/dtheta_G from plain autograd, L1 plus priors."""
    priors = PriorsConfig(bn=0.0, oh=0.5, ie=1.0)
    parts = make_parts("l1", True, priors)
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = parts.generator(z)
    t = parts.teacher(x)
    p = torch.softmax(t, 1).mean(0)
    objective = (-(parts.student(x) - t).abs().mean() + 0.5 * nn.functional.cross_entropy(t, t.argmax(1))
                 + (p * p.log()).sum())
    want = torch.autograd.grad(objective, list(parts.generator.parameters()))
    one_stage_step(parts, z)
    for got, ref in zip(grads(parts.generator), want):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_teacher_gets_no_gradient_and_never_changes():
    parts = make_parts("l1", True, PriorsConfig(bn=1.0, oh=1.0))
    parts.opt_s = torch.optim.SGD(parts.student.parameters(), lr=0.1)
    parts.opt_g = torch.optim.Adam(parts.generator.parameters(), lr=0.1)
    before = copy.deepcopy(parts.teacher.state_dict())
    student_before = copy.deepcopy(parts.student.state_dict())
    z = torch.randn(16, NZ, dtype=torch.float64)
    for step in (student_step, generator_step, one_stage_step):
        step(parts, z)
    assert all(p.grad is None for p in parts.teacher.parameters())
    for key, value in parts.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(parts.student.state_dict()["0.weight"], student_before["0.weight"]), "student must move"


def test_reverse_grad_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(3, 2, requires_grad=True)
    scale = torch.tensor([1.0, 0.5, 2.0])
    y = reverse_grad(x, scale)
    assert torch.equal(y, x)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, -scale.view(3, 1).expand(3, 2))


def test_reverse_grad_reads_scale_filled_after_forward():
    x = torch.ones(2, requires_grad=True)
    scale = torch.ones(())
    y = reverse_grad(x, scale).sum()
    scale.fill_(0.25)  # an asymmetric loss fills the scale once the loss is known
    y.backward()
    assert torch.equal(x.grad, torch.full((2,), -0.25))


@pytest.mark.parametrize("name", ["l1_log", "l1_log_sample"])
def test_closed_form_scale_equals_autograd_ratio(name):
    closed = ADVERSARIAL[name]
    generic = Adversarial(closed.discrepancy, closed.generator_loss, closed.mode, scale=None)
    d = torch.rand(7, dtype=torch.float64) * 3
    got, stats = gradient_scale(closed, d, max_scale=10.0)
    want, _ = gradient_scale(generic, d, max_scale=10.0)
    torch.testing.assert_close(got.double(), want.double())
    assert stats["scale_clamped"] == 0.0 and 0 < stats["scale_min"] <= stats["scale_max"] <= 1


def test_gradient_scale_is_clamped_and_counted():
    adv = Adversarial(ADVERSARIAL["l1"].discrepancy, lambda d: -(d**3).mean(), "sample", scale=None)
    scale, stats = gradient_scale(adv, torch.tensor([0.1, 1.0, 10.0]), max_scale=5.0)
    assert scale.max().item() == 5.0 and stats["scale_clamped"] == pytest.approx(1 / 3)
