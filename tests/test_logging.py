"""What a run logs: per-step metrics in metrics.jsonl, and wandb offline when there is no API key."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PLAIN

from dfkd.config import load_config
from dfkd.priors import class_perplexity
from dfkd.trainer import distill

pytestmark = pytest.mark.usefixtures("mnist_teacher", "one_thread", "fresh_accelerator_state")
TINY = [*PLAIN, "scheme=one_stage", "student_updates=6", "log_every=3", "eval_every=6", "batch_size=16", "generator.ngf=8",
        "generator.nz=32", "student.lr=0.01", "generator.lr=1e-3", "lr_schedule=constant", "checkpoint_every=0",
        "data.eval_batch_size=2000", "run_name=r"]


def records(run_dir) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_step_records(run_dir, summary: dict, precision: str) -> None:
    steps = [r for r in records(run_dir) if "loss_s" in r]
    assert [r["update"] for r in steps] == [3, 6], "one record per logging step, not per update"
    for r in steps:
        assert r["grad_norm_s"] > 0 and r["grad_norm_g"] > 0 and math.isfinite(r["grad_norm_g"])
        assert r["lr_s"] == 0.01 and r["lr_g"] == 1e-3  # as set in TINY, constant schedule
        assert 0 < r["train_s"] <= r["wall_s"] and r["samples_per_s"] > 0
        assert r["skipped"] == 0.0 and r["skipped_steps"] == 0
        assert 1.0 <= r["gen_classes"] <= 10.0  # effective number of generated classes (MNIST: 10)
    assert summary["mixed_precision"] == precision and summary["skipped_steps"] == 0


def test_bf16_run_records_gradient_norms_learning_rates_wall_time_and_throughput(tmp_path):
    summary = distill(load_config(TINY + ["logger=none", "mixed_precision=bf16", f"out_dir={tmp_path}"]))
    check_step_records(tmp_path / "r", summary, "bf16")


def test_wandb_without_an_api_key_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "unset")  # records "absent" so the trainer's offline default is undone after
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # nothing written to ~/.config
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = distill(load_config(TINY + ["logger=wandb", "mixed_precision=no", f"out_dir={tmp_path}"]))
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "one offline run, written where the run directory is"
    assert list(runs[0].glob("*.wandb")), "the offline run holds its logged history"
    check_step_records(tmp_path / "r", summary, "no")  # the same metrics in the JSONL


def test_gen_classes_is_the_number_of_classes_the_teacher_sees_in_a_batch():
    balanced = torch.eye(10).repeat(4, 1) * 30  # 40 confident predictions, 4 of each class
    assert class_perplexity(balanced).item() == pytest.approx(10.0, rel=1e-3)
    collapsed = torch.zeros(40, 10)
    collapsed[:, 3] = 30  # every sample labelled 3
    assert class_perplexity(collapsed).item() == pytest.approx(1.0, rel=1e-3)
    half = balanced.clone()
    half[:20] = collapsed[:20]  # half the batch collapsed onto one class
    assert 1.0 < class_perplexity(half).item() < 10.0
