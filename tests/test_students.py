"""What the student is kept as, and the priors derived from the teacher: the EMA student and the BN rule."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import PLAIN
from safetensors.torch import load_file
from torch import nn

from dfkd.config import load_config
from dfkd.ema import ModelEMA
from dfkd.priors import BN_PRIOR, Priors
from dfkd.schema import Config
from dfkd.trainer import distill
from dfkd.weights import create_model


def test_ema_averages_floats_with_a_warm_up_cap_and_copies_integer_buffers():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(student, decay=0.99)
    start = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    student[1].num_batches_tracked += 7
    ema.update(updates=1, made=1)  # first update: the cap (1 + 0) / (10 + 0) = 0.1 rules, not 0.99
    assert torch.allclose(ema.module[0].weight, 0.1 * start + 0.9 * (start + 1))
    assert ema.module[1].num_batches_tracked.item() == 7
    before = ema.module[0].weight.clone()
    ema.update(updates=10_005, made=5)  # late: decay 0.99 per update, raised to the cycle's 5 updates
    d = 0.99 ** 5
    assert torch.allclose(ema.module[0].weight, d * before + (1 - d) * (start + 1))
    assert not ema.module[0].weight.requires_grad and not ema.module.training


def test_bn_prior_is_on_for_a_teacher_with_batchnorm_and_off_without():
    weights = Config().priors
    assert weights.bn is None  # the default is the rule
    assert Priors(weights, create_model("test_resnet", 10, in_chans=1)).weights["bn"] == BN_PRIOR > 0
    assert Priors(weights, create_model("lenet5", 10, in_chans=1)).weights["bn"] == 0
    weights.bn = 0.0  # an explicit value wins
    assert Priors(weights, create_model("test_resnet", 10, in_chans=1)).weights["bn"] == 0


@pytest.mark.usefixtures("mnist_teacher", "one_thread")
def test_ema_run_keeps_and_exports_the_averaged_student_and_logs_both(tmp_path):
    distill(load_config([*PLAIN, "student_updates=40", "eval_every=20", "batch_size=16", "generator.ngf=8",
                         "student.ema=0.9", "checkpoint_every=40", "run_name=r", f"out_dir={tmp_path}"]))
    run = tmp_path / "r"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "test_acc" in r]
    assert len(evals) == 2 and all("test_acc_trained" in r for r in evals)
    kept = load_file(str(run / "student.safetensors"))
    trained = load_file(str(run / "checkpoints" / "step_000040" / "model.safetensors"))
    assert kept.keys() == trained.keys() and any(not torch.equal(kept[k], trained[k]) for k in kept)
    assert "priors:\n  bn: 0.0" in (run / "config.yaml").read_text()  # the rule, resolved and recorded (no BN)
