"""A real 2-process run on CPU: `accelerate launch --multi_gpu --num_processes 2` (torchrun underneath, gloo).

Without CUDA, Accelerate joins the processes on CPU only when told to; dfkd's trainer tells it
whenever WORLD_SIZE > 1. Each rank saves the student and generator it ends with, through a hook in
the test's own launched script (production code has none), so the ranks can be compared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import PLAIN
from safetensors.torch import load_file

from dfkd import accuracy as evaluation
from dfkd.config import load_config
from dfkd.contract import resolve
from dfkd.models import Generator
from dfkd.weights import create_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("mnist_teacher"), pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# Runs dfkd's own entry point; as each rank ends training it also saves that rank's weights.
LAUNCHED = '''
import sys
from accelerate import Accelerator
from safetensors.torch import save_file
from dfkd.commands import distill_command as main

end_training = Accelerator.end_training

def save_rank_weights_then_end(self):
    for name, model in zip(("student", "generator"), self._models):
        state = self.unwrap_model(model).state_dict()
        path = f"{sys.argv[1]}/{name}_rank{self.process_index}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    end_training(self)

Accelerator.end_training = save_rank_weights_then_end
sys.exit(main(sys.argv[2:]))
'''
# eval_batch_size 1500: 7 test batches over 2 ranks, so one rank gets a padded batch that
# gather_for_metrics must drop for the accuracy to be the single-process one
ARGS = [*PLAIN, "scheme=one_stage", "student_updates=4", "batch_size=16", "generator.ngf=8", "logger=none", "eval_every=4",
        "checkpoint_every=0", "data.eval_batch_size=1500", "run_name=ddp"]


def test_two_process_run_ends_with_identical_weights_and_the_single_process_accuracy(tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    args = ARGS + [f"out_dir={tmp_path}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path),
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["student_updates"] == 4
    # Everything the student holds, and the generator's parameters: its BatchNorm running statistics
    # are rank-local after the last forward (DDP broadcasts rank 0's at the start of each forward) and
    # unused, the generator always running in train mode; rank 0's are the ones saved.
    generator_parameters = {k for k, _ in Generator(256, 8, 32, 1).named_parameters()}
    for name, compared in (("student", None), ("generator", generator_parameters)):
        rank0, rank1 = (load_file(tmp_path / f"{name}_rank{r}.safetensors") for r in (0, 1))
        assert rank0.keys() == rank1.keys()
        for key in compared or rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{name}.{key} differs between the ranks"
    saved = load_file(tmp_path / "ddp" / "student.safetensors")
    rank0 = load_file(tmp_path / "student_rank0.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved), "student.safetensors is rank 0's student"

    # The gathered 2-process accuracy equals a plain single-process evaluation of the saved weights.
    cfg = load_config(args)
    resolve(cfg)
    student = create_model("lenet5_half", 10)
    student.load_state_dict(saved)
    loader = evaluation.evaluation_loader(cfg.data)
    assert len(loader.dataset) == 10_000 and len(loader) == 7
    assert evaluation.evaluate(student, loader, Accelerator(cpu=True)) == summary["student_final_acc"]
