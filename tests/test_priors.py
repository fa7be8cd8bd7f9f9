"""Priors are one table (dfkd/priors.py PRIORS): an entry is all a new prior needs. Its key, default, range check,
``--help`` line, method presets and its term in the generator's loss all follow from the entry."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from dfkd.methods import METHODS
from dfkd.priors import PRIORS, Priors
from dfkd.schema import PriorsConfig, schema_fields

REPO = Path(__file__).resolve().parents[1]


def test_every_prior_has_a_schema_key_and_every_preset_states_it():
    keys = {name for name, _ in schema_fields()}
    for name, prior in PRIORS.items():
        assert f"priors.{name}" in keys
        assert getattr(PriorsConfig(), name) == prior.default
        for method in METHODS.values():
            assert f"priors.{name}" in method.keys, f"a preset must state priors.{name}"


def test_a_prior_adds_its_weighted_term_to_the_generator_loss():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(6, 1, 2, 2)
    alone = {name: Priors(PriorsConfig(**{n: float(n == name) for n in PRIORS}), teacher) for name in ("oh", "ie")}
    both = Priors(PriorsConfig(**{n: {"oh": 0.5, "ie": 2.0}.get(n, 0.0) for n in PRIORS}), teacher)
    terms = {name: p.teacher_forward(teacher, x)[1] for name, p in alone.items()}
    _, loss, metrics = both.teacher_forward(teacher, x)
    assert torch.allclose(loss, 0.5 * terms["oh"] + 2.0 * terms["ie"])
    assert torch.equal(metrics["prior_oh"], terms["oh"]) and "prior_bn" not in metrics


TOY = """
import torch
from dfkd.priors import PRIORS, Prior

# the one place: a prior that pulls the teacher's mean logit up
PRIORS["toy"] = Prior("toy prior: minus the mean teacher logit", lambda p, teacher, x, out: -out.logits.mean())

from dfkd.cli import main
from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.methods import METHODS
from dfkd.priors import Priors

cfg = load_config(["priors.toy=0.5", "priors.ie=0"])
assert cfg.priors.toy == 0.5
assert all(m.keys["priors.toy"] == 0.0 for m in METHODS.values())
try:
    load_config(["priors.toy=-1"])
    raise SystemExit("a negative weight passed")
except DfkdError as err:
    assert "priors.toy must be >= 0" in str(err), err
teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
x = torch.randn(5, 1, 2, 2)
_, loss, metrics = Priors(cfg.priors, teacher).teacher_forward(teacher, x)
assert torch.allclose(loss, 0.5 * -teacher(x).mean()) and "prior_toy" in metrics
assert main(["distill", "--help"]) == 0
print("OK")
"""


def test_a_new_prior_is_one_entry_of_the_table():
    """Run in a fresh interpreter: the schema is made from the table when dfkd.schema is first imported."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(TOY)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "OK" and "priors.toy" in done.stdout, (
        done.stdout[-2000:] + done.stderr[-2000:])


def test_total_variation_is_zero_on_flat_images_and_grows_with_high_frequencies():
    from dfkd.priors import total_variation

    flat = torch.full((2, 1, 8, 8), 0.7)
    stripes = torch.arange(8.0).remainder(2).view(1, 1, 1, 8).expand(2, 1, 8, 8)  # 0, 1, 0, 1 across
    assert total_variation(flat) == 0
    assert abs(total_variation(stripes) - 1.0) < 1e-6, "every horizontal neighbour differs by 1, no vertical one"
    assert PRIORS["tv"].default == 0.0, "off unless asked: the default recipe's images are unchanged"


def test_the_bn_prior_is_decided_by_the_teacher_and_a_teacher_without_batchnorm_is_warned_of():
    from dfkd.priors import BN_PRIOR, bn_rule

    weight, why = bn_rule(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    assert weight == BN_PRIOR and why == "it has 1 BatchNorm layers"
    weight, why = bn_rule(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)))
    assert weight == 0.0 and "no image statistics to match" in why and "docs/students.md" in why
