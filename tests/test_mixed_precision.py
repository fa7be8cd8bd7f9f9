"""Mixed precision in the one-stage step: bf16 autocast on CPU, and fp16 with ONE loss scaler for both optimizers.

One backward feeds the student's and the generator's optimizer, so under fp16 both are unscaled by
the same scale, both step or both skip, and the scale is updated once. The scaler logic is tested on
CPU with torch's own GradScaler("cpu") and fp16 autocast (Accelerate only autocasts fp16 on GPUs);
the end-to-end fp16 run through Accelerate needs CUDA and skips visibly without it.
"""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from parts import parts_for  # tests/parts.py

import dfkd.models  # noqa: F401  (registers lenet5 / lenet5_half in timm)
from dfkd.models import Generator
from dfkd.onestage import one_stage_step
from dfkd.schemes import Parts
from dfkd.weights import create_model

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerator_state")
NZ, BATCH = 32, 16


def default_recipe_parts(accelerator: Accelerator, lr: float, loss: str = "l1") -> Parts:
    """The default recipe's networks (random teacher), prepared as the trainer prepares them."""
    torch.manual_seed(0)
    teacher = create_model("lenet5", 10).eval().requires_grad_(False)
    student = create_model("lenet5_half", 10).train()
    generator = Generator(nz=NZ, ngf=8, image_size=32, channels=1).train()
    opt_s = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr)
    return parts_for(teacher, student, generator, [f"loss={loss}", f"generator.nz={NZ}"], optimizers=(opt_s, opt_g),
                     accelerator=accelerator)


def z_batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, NZ, generator=torch.Generator().manual_seed(seed))


def flat_grad(module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def weights(parts: Parts) -> dict:
    """Parameters only: BatchNorm running statistics change in every training forward, stepped or not."""
    return {name: [p.detach().clone() for p in getattr(parts, name).parameters()] for name in ("student", "generator")}


def moved(before: dict, parts: Parts) -> dict:
    """For student and generator: did any parameter change?"""
    return {name: any(not torch.equal(old, p) for old, p in zip(before[name], getattr(parts, name).parameters()))
            for name in before}


# ---- bf16 on CPU, through Accelerate ---------------------------------------------------------------

# Tolerances on the whole flattened gradient: (min cosine similarity, max relative L2 error). bf16 keeps
# 8 mantissa bits (~0.4 % per rounding); the generator's gradient compounds them through the teacher's
# and student's backward and its own BatchNorm layers. Measured over 4 seeds x (l1, l1_log, kl): student
# cosine >= 0.9987, relative error <= 0.051; generator cosine >= 0.978, relative error <= 0.212.
BF16_TOLERANCE = {"student": (0.995, 0.1), "generator": (0.95, 0.3)}


@pytest.mark.parametrize("loss", ["l1", "kl"])
def test_bf16_one_stage_gradients_agree_with_fp32(loss):
    fp32 = default_recipe_parts(Accelerator(cpu=True), lr=0.0, loss=loss)
    one_stage_step(fp32, z_batch())
    AcceleratorState._reset_state(reset_partial_state=True)
    bf16 = default_recipe_parts(Accelerator(cpu=True, mixed_precision="bf16"), lr=0.0, loss=loss)
    assert bf16.accelerator.native_amp, "bf16 autocast must be on"
    metrics = one_stage_step(bf16, z_batch())
    assert metrics["skipped"] == 0.0
    for name in ("student", "generator"):
        want, got = flat_grad(getattr(fp32, name)), flat_grad(getattr(bf16, name))
        assert not torch.equal(got, want), f"{name}: bf16 must actually run in bf16"
        cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
        relative = ((got - want).norm() / want.norm()).item()
        min_cosine, max_relative = BF16_TOLERANCE[name]
        assert cosine >= min_cosine and relative <= max_relative, f"{name}: cosine {cosine:.4f}, rel. {relative:.4f}"


def test_bf16_one_stage_steps_move_student_and_generator():
    parts = default_recipe_parts(Accelerator(cpu=True, mixed_precision="bf16"), lr=1e-2)
    before = weights(parts)
    for seed in range(3):
        metrics = one_stage_step(parts, z_batch(seed))
        assert torch.isfinite(metrics["loss_s"]) and metrics["skipped"] == 0.0
    assert moved(before, parts) == {"student": True, "generator": True}


# ---- fp16: one shared loss scaler ------------------------------------------------------------------

class CountingScaler(torch.amp.GradScaler):
    """torch's CPU GradScaler, counting ``update`` calls."""

    def __init__(self):
        super().__init__("cpu", init_scale=2.0 ** 12)
        self.updates = 0

    def update(self, new_scale=None):
        self.updates += 1
        super().update(new_scale)


def scaled_parts(lr: float) -> Parts:
    """fp32 networks on CPU with a real GradScaler in the accelerator: accelerator.backward scales the loss."""
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = CountingScaler()
    return default_recipe_parts(accelerator, lr)


@pytest.mark.parametrize("poisoned", ["student", "generator"])
def test_inf_in_one_optimizers_gradients_skips_both_and_halves_the_scale_once(poisoned):
    parts = scaled_parts(lr=1e-2)
    first = next(getattr(parts, poisoned).parameters())
    first.register_hook(lambda grad: torch.full_like(grad, float("inf")))  # an overflow in this net only
    before = weights(parts)
    metrics = one_stage_step(parts, z_batch())
    assert metrics["skipped"] == 1.0
    assert moved(before, parts) == {"student": False, "generator": False}, "both optimizers must skip"
    assert parts.accelerator.scaler.updates == 1
    assert parts.accelerator.scaler.get_scale() == 2.0 ** 11


def test_shared_scaler_steps_both_with_exactly_the_unscaled_gradients():
    """A power-of-two scale is exact: scaled-then-unscaled gradients and the updates equal the fp32 ones bitwise."""
    plain = default_recipe_parts(Accelerator(cpu=True), lr=1e-2)
    one_stage_step(plain, z_batch())
    AcceleratorState._reset_state(reset_partial_state=True)
    scaled = scaled_parts(lr=1e-2)
    before = weights(scaled)
    assert one_stage_step(scaled, z_batch())["skipped"] == 0.0
    assert moved(before, scaled) == {"student": True, "generator": True}
    for name in ("student", "generator"):
        assert torch.equal(flat_grad(getattr(scaled, name)), flat_grad(getattr(plain, name))), name
        for want, got in zip(getattr(plain, name).parameters(), getattr(scaled, name).parameters()):
            assert torch.equal(got, want), name
    assert scaled.accelerator.scaler.updates == 1 and scaled.accelerator.scaler.get_scale() == 2.0 ** 12


def test_fp16_autocast_one_stage_on_cpu_with_the_shared_scaler():
    """Real fp16 forwards (torch's CPU autocast): the steps that are not skipped move both networks."""
    parts = scaled_parts(lr=1e-2)
    before = weights(parts)
    skipped = 0.0
    with torch.autocast("cpu", dtype=torch.float16):
        for seed in range(4):
            metrics = one_stage_step(parts, z_batch(seed))
            assert torch.isfinite(metrics["loss_s"])
            skipped += metrics["skipped"]
    assert parts.accelerator.scaler.updates == 4, "one scaler update per backward"
    assert skipped < 4 and moved(before, parts) == {"student": True, "generator": True}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast through Accelerate needs a CUDA device")
def test_fp16_one_stage_through_accelerate_on_gpu():
    parts = default_recipe_parts(Accelerator(mixed_precision="fp16"), lr=1e-2)
    scaler = parts.accelerator.scaler
    assert scaler is not None and parts.accelerator.native_amp
    before = weights(parts)
    skipped = 0.0
    for seed in range(8):
        metrics = one_stage_step(parts, z_batch(seed).cuda())
        assert torch.isfinite(metrics["loss_s"])
        skipped += metrics["skipped"]
    # one update per step: the scale halved once per skipped step and never grew (growth_interval 2000)
    assert scaler.get_scale() == 65536.0 * 0.5 ** skipped
    assert skipped < 8 and moved(before, parts) == {"student": True, "generator": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, fp16 is allowed")
def test_fp16_without_a_gpu_is_refused_not_silently_run_in_fp32(tmp_path):
    from dfkd.config import load_config
    from dfkd.errors import DfkdError
    from dfkd.trainer import distill

    with pytest.raises(DfkdError, match="mixed_precision=fp16 needs a GPU.*use mixed_precision=bf16 or no"):
        distill(load_config(["mixed_precision=fp16", f"out_dir={tmp_path}"]))
