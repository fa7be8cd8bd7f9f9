"""Method presets and their loss terms: one-stage gradients equal two-stage ones for every new term (fp64),
each preset sets what its paper minimises, and the terms behave as their formulas say."""
from __future__ import annotations

import pytest
import torch
from parts import parts_for  # tests/parts.py
from test_onestage import NZ, SIZE, assert_one_stage_equals_two_stage, trio  # tests/ is on sys.path under pytest
from torch import nn

from dfkd.config import RECIPES_DIR, load_config
from dfkd.ema import ModelEMA
from dfkd.features import Taps, attention_transfer, contrastive_loss, second_view, stages_for
from dfkd.methods import DAFL_IE, METHODS
from dfkd.models import wrn
from dfkd.onestage import one_stage_step
from dfkd.pool import SamplePool
from dfkd.priors import entropy_loss
from dfkd.schema import PriorsConfig
from dfkd.schemes import Parts, generated, generator_step, student_step

CLASSES, FEATURES = 5, 6  # NZ, SIZE: test_onestage's


class Net(nn.Module):
    """A two-stage net with timm's feature_info and get_classifier, as dfkd's feature taps read them."""

    def __init__(self, batchnorm: bool, seed: int, width: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.act = nn.ReLU()
        self.stage = nn.Sequential(nn.Conv2d(width, FEATURES, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(FEATURES, CLASSES)
        self.feature_info = [{"module": "act", "num_chs": width, "reduction": 1},
                             {"module": "stage", "num_chs": FEATURES, "reduction": 2}]
        self.double()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.stage(self.act(self.bn(self.stem(x))))))


def make_parts(loss="kl", priors=None, at=0.0, adversarial=1.0, student_bn=False, pool=False,
               at_adversarial=True) -> Parts:
    priors = priors or PriorsConfig()
    teacher, student, generator = trio(Net(batchnorm=True, seed=1, width=5), Net(batchnorm=student_bn, seed=2))
    samples = None
    if pool:  # a few past images with features: the contrastive prior's negatives
        samples = SamplePool(64, (1, SIZE, SIZE), CLASSES, torch.device("cpu"), seed=5, dtype=torch.float64,
                             feature_dim=FEATURES)
        samples.add(torch.randn(8, 1, SIZE, SIZE, dtype=torch.float64), torch.randn(8, CLASSES, dtype=torch.float64),
                    torch.randn(8, FEATURES, dtype=torch.float64))
    keys = [f"loss={loss}", f"features.at={at}", f"features.at_adversarial={at_adversarial}",
            f"adversarial={adversarial}", *(f"priors.{k}={'null' if v is None else v}" for k, v in vars(priors).items())]
    optimizers = (torch.optim.SGD(student.parameters(), lr=0.0), torch.optim.Adam(generator.parameters(), lr=0.0))
    return parts_for(teacher, student, generator, keys, optimizers=optimizers, pool=samples)


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


CASES = {
    "attention transfer (ZSKT), KL": dict(at=250.0),
    "attention transfer, -log(1+L) per batch, BatchNorm student": dict(loss="l1_log", at=3.0, student_bn=True),
    "attention transfer, -log(1+L) per sample": dict(loss="l1_log_sample", at=3.0),
    "activation prior (DAFL)": dict(priors=PriorsConfig(bn=0.0, oh=1.0, ie=5.0, act=0.1)),
    "not adversarial (DAFL): priors only": dict(priors=PriorsConfig(bn=0.0, oh=1.0, act=0.1), adversarial=0.0),
    "half-weight adversarial term, contrastive prior on a pool (CMI)":
        dict(priors=PriorsConfig(bn=1.0, oh=0.5, cmi=0.8), adversarial=0.5, pool=True),
    "every term at once, per-sample scale": dict(loss="l1_log_sample", at=2.0, adversarial=0.7, pool=True,
                                                 priors=PriorsConfig(bn=0.5, oh=1.0, ie=1.0, act=0.3, cmi=0.4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_stage_gradients_equal_two_stage_for_method_terms(case):
    parts = make_parts(**CASES[case])
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pool_state = parts.pool.state_dict() if parts.pool else None

    def fresh_pool():  # every step starts from the same pool, so the same negatives are drawn
        if parts.pool:
            parts.pool.load_state_dict(pool_state)
            parts.pool.count, parts.pool.next = 8, 8

    assert_one_stage_equals_two_stage(parts, z, reset=fresh_pool)


def test_generator_gradient_matches_autograd_reference_for_zskt_and_dafl_terms():
    """Independent of dfkd's two-stage code: -d(KL + beta AT)/dtheta_G plus DAFL's priors, from plain autograd."""
    parts = make_parts(at=250.0, priors=PriorsConfig(bn=0.0, oh=1.0, ie=5.0, act=0.1))
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = parts.generator(z)
    maps = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: maps.setdefault(k, o))
             for k, m in (("t_act", parts.teacher.act), ("t_stage", parts.teacher.stage))]
    t = parts.teacher(x)
    pre = parts.teacher.head(maps["t_stage"])
    for h in hooks:
        h.remove()
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: maps.setdefault(k, o))
             for k, m in (("s_act", parts.student.act), ("s_stage", parts.student.stage))]
    s = parts.student(x)
    for h in hooks:
        h.remove()

    def att(f):
        return nn.functional.normalize(f.pow(2).mean(1).flatten(1), dim=1)

    at = sum((att(maps[f"s_{k}"]) - att(maps[f"t_{k}"])).pow(2).mean(1) for k in ("act", "stage"))
    kl = (torch.softmax(t, 1) * (torch.log_softmax(t, 1) - torch.log_softmax(s, 1))).sum(1)
    p = torch.softmax(t, 1).mean(0)
    objective = (-(kl + 250.0 * at).mean() + nn.functional.cross_entropy(t, t.argmax(1)) + 5.0 * (p * p.log()).sum()
                 - 0.1 * pre.abs().mean())
    want = torch.autograd.grad(objective, list(parts.generator.parameters()))
    one_stage_step(parts, z)
    for got, ref in zip(grads(parts.generator), want):  # beta=250 scales rounding: fp64 to 1e-10
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("step", [generator_step, one_stage_step], ids=["two stage", "one stage"])
def test_zskt_split_generator_maximises_kl_alone_unless_asked(step):
    """ZSKT's generator maximises KL, not the attention term: two stages and the joint step alike."""
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    plain = make_parts(at=0.0)  # same seeds: same networks, no attention term
    step(plain, z)
    split = make_parts(at=250.0, at_adversarial=False)
    step(split, z)
    for module in ("generator", "student") if step is one_stage_step else ("generator",):
        for got, want in zip(grads(getattr(split, module)), grads(getattr(plain, module))):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    both = make_parts(at=250.0, at_adversarial=True)
    step(both, z)
    assert any(not torch.allclose(a, b) for a, b in zip(grads(both.generator), grads(split.generator)))


def test_zskt_student_only_steps_keep_the_attention_term():
    z = torch.randn(16, NZ, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    plain, split = make_parts(at=0.0), make_parts(at=250.0, at_adversarial=False)
    student_step(plain, z)
    student_step(split, z)
    assert any(not torch.allclose(a, b) for a, b in zip(grads(split.student), grads(plain.student)))


def test_attention_transfer_is_zero_for_equal_maps_and_pools_to_the_smaller_map():
    f = torch.rand(3, 4, 8, 8)
    assert torch.equal(attention_transfer([f], [f]), torch.zeros(3))
    g = nn.functional.avg_pool2d(f, 2)  # a 4x4 map: the 8x8 attention is pooled to compare
    d = attention_transfer([f], [g * 3.0])
    assert d.shape == (3,) and (d >= 0).all() and (d < 2).all()


def test_zskt_taps_of_a_wrn_are_its_three_groups_raw_outputs():
    """As ZSKT's WRN returns its attention maps: the third group's output before the final BN-ReLU, which
    only the classifier path takes."""
    torch.manual_seed(0)
    teacher, student = wrn.wrn_16_2().eval(), wrn.wrn_16_1().eval()
    assert stages_for(teacher, student) == 3
    taps, x = Taps(teacher, "teacher", 3), torch.randn(2, 3, 32, 32)
    with torch.no_grad(), taps.record():
        logits = teacher(x)
    with torch.no_grad():
        groups = [teacher.stages[0](teacher.conv1(x))]
        groups += [teacher.stages[1](groups[0])]
        groups += [teacher.stages[2](groups[1])]
        assert torch.equal(logits, teacher.fc(teacher.act(teacher.norm(groups[2])).mean((2, 3))))
    assert len(taps.maps) == 3 and all(torch.equal(got, want) for got, want in zip(taps.maps, groups))
    assert (taps.maps[2] < 0).any()  # raw: not yet through the final ReLU


def test_contrastive_loss_is_low_for_distinct_views_and_high_for_identical_images():
    torch.manual_seed(0)
    distinct = torch.randn(8, 16)
    low = contrastive_loss(distinct, distinct + 0.01 * torch.randn(8, 16), None)
    same = torch.ones(8, 16)
    high = contrastive_loss(same, same, torch.ones(4, 16))
    assert low < 0.1 and high == pytest.approx(torch.log(torch.tensor(12.0)).item(), rel=1e-5)


def test_second_view_crops_each_image_from_a_corner_and_keeps_its_shape():
    x = torch.arange(4 * 8 * 8, dtype=torch.float32).view(4, 1, 8, 8)
    v = second_view(x)
    assert v.shape == x.shape and not torch.equal(v, x)
    assert v[0, 0, 0, 0] == x[0, 0, 0, 0] and v[3, 0, -1, -1] == x[3, 0, -1, -1]  # top-left, bottom-right corners


def test_generator_ema_makes_its_share_of_a_generated_batch():
    parts = make_parts()
    parts.generator_ema = ModelEMA(parts.generator, decay=0.9, train_mode=True)
    for p in parts.generator_ema.module.parameters():
        p.data.zero_()  # a constant average: its images are all equal
    z = torch.randn(16, NZ, dtype=torch.float64)
    with torch.no_grad():
        x = generated(parts, z)
    assert x.shape[0] == 16
    ema_part, fresh_part = x[8:], x[:8]
    assert torch.allclose(ema_part, ema_part[:1].expand_as(ema_part)) and fresh_part.std(0).mean() > 0


@pytest.mark.parametrize("method", list(METHODS))
def test_every_preset_loads_and_names_its_paper(method):
    recipe = "default" if method == "cmi" else "default_v01"  # CMI's student learns from the pool; MAD's not
    cfg = load_config([f"method={method}", f"recipe={recipe}"])
    assert cfg.method == method and METHODS[method].paper and METHODS[method].formula
    for key, value in METHODS[method].keys.items():
        section, _, name = key.rpartition(".")
        node = getattr(cfg, section) if section else cfg
        assert getattr(node, name) == value, key


def test_command_line_keys_win_over_the_preset_and_the_preset_over_the_recipe():
    cfg = load_config(["method=dafl", "priors.ie=2"])  # recipe=default sets priors.ie=1, DAFL 5 / ln 10
    assert cfg.priors.ie == 2 and cfg.priors.oh == 1.0 and cfg.adversarial == 0.0 and cfg.loss == "kl"
    assert load_config(["method=dafl"]).priors.ie == DAFL_IE


def test_dafl_entropy_term_is_dafl_weight_5_on_the_log10_entropy():
    """DAFL's code weighs sum_c p_c log10 p_c by 5; dfkd's term takes the natural log, so its weight is 5 / ln 10."""
    assert load_config(["method=dafl"]).priors.ie == DAFL_IE == pytest.approx(2.1714724095, abs=1e-10)
    logits = torch.randn(32, CLASSES, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    p = torch.softmax(logits, 1).mean(0)
    torch.testing.assert_close(DAFL_IE * entropy_loss(logits), 5.0 * (p * torch.log10(p)).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dfad"])
def test_each_cifar_pair_has_a_recipe_per_method_marked_as_not_yet_run(method):
    for pair in ("resnet34_to_resnet18", "wrn40_2_to_wrn16_1"):
        cfg = load_config([f"recipe={pair}_{method}"])
        assert cfg.method == method and cfg.data.dataset == "cifar10"
        header = (RECIPES_DIR / f"{pair}_{method}.yaml").read_text().split("\nmethod:")[0]
        author_year = METHODS[method].paper.split(",")[0]  # e.g. "Chen et al. 2019"
        assert "Not yet run on a GPU" in header and author_year in header
