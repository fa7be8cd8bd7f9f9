"""The replay pool: a ring buffer of generated images and teacher logits that student steps draw from.

A pool step must cost one student forward and backward (no generator, no teacher), the generating
steps of every scheme must feed it, and it must not change anything when it is off.
"""
from __future__ import annotations

import pytest
import torch
from parts import parts_for  # tests/parts.py
from torch import nn

from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.models import Generator
from dfkd.onestage import one_stage_step
from dfkd.pool import SamplePool, make_pool
from dfkd.schemes import SCHEMES, Parts, generator_step, pool_intake, student_step

NZ, SIZE, CLASSES, BATCH = 8, 8, 4, 6


class Counted(nn.Module):
    """A network that counts the images it has been called on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += len(x)
        return self.net(x)


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES))


def parts(pool: SamplePool = None, fresh: float = 0.0, steps: int = 0) -> Parts:
    torch.manual_seed(0)
    teacher, student = Counted(net()).eval().requires_grad_(False), Counted(net())
    generator = Counted(Generator(NZ, 4, SIZE, 1))
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    made = parts_for(teacher, student, generator, ["loss=l1", f"pool.steps={steps}", f"pool.fresh={fresh}"],
                     optimizers=(opt_s, opt_g), pool=pool)
    made.sample_z = lambda: torch.randn(BATCH, NZ, generator=gen)
    return made


def empty_pool(capacity: int = 12) -> SamplePool:
    return SamplePool(capacity, (1, SIZE, SIZE), CLASSES, torch.device("cpu"), seed=0)


def test_pool_keeps_the_newest_images_in_a_ring_and_samples_only_what_it_holds():
    pool = SamplePool(5, (1, 1, 1), 2, torch.device("cpu"))
    pool.add(torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3, 2))
    assert pool.count == 3 and sorted(pool.sample(50)[0].flatten().unique().tolist()) == [0.0, 1.0, 2.0]
    pool.add(torch.arange(3.0, 7.0).view(4, 1, 1, 1), torch.ones(4, 2))
    assert (pool.count, pool.next) == (5, 2)
    assert pool.images.flatten().tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]  # 0 and 1 were the oldest
    images, logits = pool.sample(40)
    assert set(images.flatten().tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    assert torch.equal(logits[images.flatten() == 2.0], torch.zeros(int((images == 2.0).sum()), 2))


def test_pool_state_round_trips_with_its_sampling_rng():
    pool = empty_pool()
    pool.add(torch.randn(9, 1, SIZE, SIZE), torch.randn(9, CLASSES))
    state = pool.state_dict()
    expected = pool.sample(5)
    other = empty_pool()
    other.load_state_dict(state)
    assert other.count == 9 and all(torch.equal(a, b) for a, b in zip(other.sample(5), expected))
    # a checkpoint holds what the pool holds, not its capacity (torch.save writes a view's whole storage)
    assert state["images"].untyped_storage().nbytes() == state["images"].nbytes < pool.images.nbytes


def test_generating_steps_feed_the_pool():
    p = parts(empty_pool())
    one_stage_step(p, p.sample_z())
    generator_step(p, p.sample_z())
    assert p.pool.count == 2 * BATCH


def test_pool_step_runs_neither_generator_nor_teacher():
    p = parts(empty_pool())
    student_step(p, p.sample_z())  # the pool is empty: a fresh batch, which the pool keeps
    assert (p.generator.images, p.teacher.images, p.pool.count) == (BATCH, BATCH, BATCH)
    student_step(p, p.sample_z())
    assert (p.generator.images, p.teacher.images, p.student.images) == (BATCH, BATCH, 2 * BATCH)


def test_pool_step_with_a_fresh_share_generates_only_that_share():
    p = parts(empty_pool(), fresh=0.5)
    student_step(p, p.sample_z())
    student_step(p, p.sample_z())
    assert (p.generator.images, p.teacher.images, p.pool.count) == (BATCH + BATCH // 2,) * 2 + (BATCH + BATCH // 2,)


def test_every_scheme_adds_pool_steps_after_its_generating_step():
    for name, k, expected in (("two_stage", 2, 2 + 3), ("one_stage", 1, 1 + 3), ("hybrid", 2, 2 + 3)):
        p = parts(empty_pool(48), steps=3)
        made, metrics = SCHEMES[name](p, k)
        assert made == expected, name
        assert metrics["skipped"] == 0.0


@pytest.mark.parametrize("fresh", [0.0, 0.5])
@pytest.mark.parametrize("scheme,k", [("two_stage", 3), ("one_stage", 1), ("hybrid", 3)])
def test_pool_intake_is_what_each_cycle_adds(scheme, k, fresh):
    cfg = load_config(["recipe=default_v01", f"scheme={scheme}", f"k={k}", "pool.size=1000", "pool.steps=2",
                       f"pool.fresh={fresh}"])
    p = parts(empty_pool(1000), fresh=fresh, steps=2)
    SCHEMES[scheme](p, k)  # the first cycle: student steps generate whole batches until the pool holds one
    held = p.pool.count
    for _ in range(3):
        SCHEMES[scheme](p, k)
    assert p.pool.count - held == 3 * pool_intake(cfg, BATCH) > 0


def test_a_run_that_outgrows_its_pool_is_told_before_training():
    from dfkd.build import warn_pool_evicts

    said = []
    for updates in (15000, 45000):  # the default keeps all it makes (128,000 images); three times longer does not
        cfg = load_config([f"student_updates={updates}"])
        warn_pool_evicts(cfg, cfg.pool.size, pool_intake(cfg, cfg.batch_size), said.append)
    assert len(said) == 1
    assert "about 384,000 images" in said[0] and "keeps 200,000" in said[0] and "update 23,430" in said[0]


def test_without_a_pool_the_steps_are_unchanged():
    a, b = parts(), parts()
    for p in (a, b):
        p.pool_steps = 3  # ignored without a pool
    made, _ = SCHEMES["hybrid"](a, 3)
    assert made == 3 and a.generator.images == 3 * BATCH


def test_pool_that_does_not_fit_in_memory_stops_before_training():
    cfg = load_config(["pool.size=100000000000", "data.image_size=32", "data.channels=1", "data.num_classes=10"])
    with pytest.raises(DfkdError, match=r"the replay pool needs \d+ MB .* free; lower pool.size or set pool.mb"):
        make_pool(cfg, torch.device("cpu"))
    cfg = load_config(["pool.size=1000", "pool.mb=0.1", "data.image_size=32", "data.channels=1", "data.num_classes=10"])
    with pytest.raises(DfkdError, match=r"holds 24 images .* less than one batch"):
        make_pool(cfg, torch.device("cpu"))


def test_intensity_jitter_is_a_per_image_brightness_and_contrast_that_keeps_pixels_in_range():
    from dfkd.batches import IntensityJitter
    from dfkd.models.normalize import Normalize

    jitter, pixels = IntensityJitter([0.5], [0.25], torch.device("cpu"), seed=0), torch.rand(64, 1, SIZE, SIZE)
    normalize = Normalize([0.5], [0.25])
    out = normalize.invert(jitter(normalize(pixels))).flatten(1)
    p = pixels.flatten(1)
    a = (out[:, 0] - out[:, 1]) / (p[:, 0] - p[:, 1])  # each image: out = a * p + b, one a and b per image
    b = out[:, 0] - a * p[:, 0]
    assert torch.allclose(out, a[:, None] * p + b[:, None], atol=1e-5)
    assert a.min() >= IntensityJitter.LOW - 1e-5 and a.max() <= 1 + 1e-5 and a.std() > 0.1
    assert b.min() >= -1e-5 and (a + b).max() <= 1 + 1e-5, "pixels in [0, 1] stay in [0, 1]"
    state = jitter.state_dict()
    again = IntensityJitter([0.5], [0.25], torch.device("cpu"), seed=99)
    again.load_state_dict(state)
    assert torch.equal(jitter(normalize(pixels)), again(normalize(pixels))), "the checkpoint carries its RNG"


def test_with_augmentation_the_student_sees_jittered_images_the_teacher_labelled_anew():
    from dfkd.batches import IntensityJitter

    p = parts(empty_pool())
    p.augment = IntensityJitter([0.0], [1.0], torch.device("cpu"), seed=0)
    seen = []
    p.student.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    student_step(p, p.sample_z())  # fresh: the teacher labels the batch for the pool, then the jittered batch
    assert (p.teacher.images, p.pool.count) == (2 * BATCH, BATCH)
    assert not torch.equal(seen[-1], p.pool.images[:BATCH]), "the pool keeps the images as generated"
    student_step(p, p.sample_z())  # from the pool: no generator; the teacher labels the jittered images
    assert (p.generator.images, p.teacher.images) == (BATCH, 3 * BATCH)
    assert "augment_rng" in p.extras()
    assert "augment_rng" not in parts(empty_pool()).extras(), "off by default: the steps are unchanged"
