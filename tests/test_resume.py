"""Crash and resume: a run killed with SIGKILL and resumed ends bitwise equal to one never interrupted.

Runs are real (MNIST teacher, CPU) but tiny. The crashed run is a subprocess; the reference and
resumed runs run in this process. All use one CPU thread, so their floating-point sums agree.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import PLAIN
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from dfkd import schemes
from dfkd.checkpoint import complete_checkpoints, restore, save_checkpoint
from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.schema import Config
from dfkd.trainer import distill

REPO = Path(__file__).resolve().parents[1]
# one_thread (conftest): as the subprocess (OMP_NUM_THREADS=1): same reduction order, same bits
pytestmark = [pytest.mark.usefixtures("mnist_teacher"),  # trained and cached first (conftest)
              pytest.mark.usefixtures("one_thread")]

TINY = [*PLAIN, "student_updates=40", "checkpoint_every=10", "eval_every=20", "log_every=5", "batch_size=16",
        "generator.ngf=8", "generator.nz=32", "logger=none", "run_name=r"]
SCHEMES = {"one_stage": ["scheme=one_stage"], "two_stage k=5": ["scheme=two_stage", "k=5"],
           # 3 student steps (from the pool once it holds a batch), a joint step, 1 more pool step: 5 per cycle;
           # student.safetensors is then the weight-averaged student, whose average the checkpoint carries
           "hybrid k=4, replay pool, EMA student": ["scheme=hybrid", "k=4", "pool.size=64", "pool.steps=1",
                                                    "pool.fresh=0.25", "student.ema=0.9"],
           # method state: the generator's average (MAD) with attention transfer (ZSKT's term), and the
           # pool's pre-logits, the contrastive prior's negatives (CMI)
           "two_stage k=5, MAD generator EMA, attention transfer": ["scheme=two_stage", "k=5", "method=mad",
                                                                    "features.at=10"],
           "hybrid k=4, CMI with its pool": ["scheme=hybrid", "k=4", "method=cmi", "pool.size=64", "pool.steps=1",
                                             "pool.fresh=0.25"],
           # the student's images jittered by an RNG the checkpoint carries, the teacher asked again
           "hybrid k=4, replay pool, intensity jitter": ["scheme=hybrid", "k=4", "pool.size=64", "pool.steps=1",
                                                         "student.augment=intensity"],
           # not data-free: batches of the real training split, drawn by an RNG the checkpoint carries
           "real_data": ["scheme=real_data"]}


def run(args: list, out: Path) -> Path:
    distill(load_config(args + [f"out_dir={out}"]))
    return out / "r"


class Crash:
    """A real run in a subprocess, SIGKILLed (by a watcher thread) as soon as its first checkpoint is complete."""

    def __init__(self, args: list, out: Path):
        self.run_dir, self.log = out / "r", out.parent / f"{out.name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "dfkd" / "distill.py"), *args, f"out_dir={out}"],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.watcher = threading.Thread(target=self._kill_after_first_checkpoint, daemon=True)
        self.watcher.start()

    def _kill_after_first_checkpoint(self) -> None:
        while not complete_checkpoints(self.run_dir) and self.proc.poll() is None:
            time.sleep(0.01)  # polling a real process: there is no event to wait on
        self.proc.send_signal(signal.SIGKILL)

    def wait(self) -> Path:
        self.watcher.join(timeout=300)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL, self.log.read_text()[-2000:]
        assert not (self.run_dir / "summary.json").exists(), "the run ended before it was killed: make it longer"
        return self.run_dir


def weights(run_dir: Path, name: str) -> dict:
    return load_file(str(run_dir / f"{name}.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def metrics_without_clock(run_dir: Path) -> list:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train_s", "wall_s", "samples_per_s")} for r in records]


_RUNS: dict = {}


def reference_and_resumed(scheme: str, tmp_path_factory) -> tuple:
    """(uninterrupted run dir, crashed-then-resumed run dir, resume output, checkpoints at the crash).

    Made once for all schemes; the crashed subprocesses start first and run while the references do.
    """
    if not _RUNS:
        base = {s: tmp_path_factory.mktemp(s.replace(" ", "_")) for s in SCHEMES}
        crashes = {s: Crash(TINY + SCHEMES[s], base[s] / "crashed") for s in SCHEMES}
        references = {s: run(TINY + SCHEMES[s], base[s] / "reference") for s in SCHEMES}
        for s in SCHEMES:
            crashed = crashes[s].wait()
            killed_at = [p.name for p in complete_checkpoints(crashed)]
            out = io.StringIO()
            with redirect_stdout(out):
                run(TINY + SCHEMES[s], base[s] / "crashed")
            _RUNS[s] = references[s], crashed, out.getvalue(), killed_at
    return _RUNS[scheme]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_killed_run_resumes_bitwise_identical(scheme, tmp_path_factory):
    reference, resumed, output, killed_at = reference_and_resumed(scheme, tmp_path_factory)
    assert f"resuming from {resumed / 'checkpoints' / killed_at[-1]}" in output
    assert killed_at[-1] != "step_000040", "the crash must come before the end"
    for name in ("student", "generator"):
        assert_bitwise_equal(weights(resumed, name), weights(reference, name))
    # the metrics file was appended to, not restarted: the same records as the uninterrupted run
    assert metrics_without_clock(resumed) == metrics_without_clock(reference)
    assert [p.name for p in complete_checkpoints(resumed)] == ["step_000030", "step_000040"]  # keep_checkpoints=2
    # the comparison can fail: ten updates earlier, the student's weights were different
    earlier = load_file(str(reference / "checkpoints" / "step_000030" / "model.safetensors"))
    final = weights(reference, "student")
    assert earlier.keys() == final.keys() and any(not torch.equal(earlier[k], final[k]) for k in final)


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path_factory, capsys):
    reference, resumed, _, _ = reference_and_resumed("one_stage", tmp_path_factory)
    newest = resumed / "checkpoints" / "step_000040" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    (resumed / "student.safetensors").unlink()
    run(TINY + SCHEMES["one_stage"], resumed.parent)
    out = capsys.readouterr().out
    assert "checkpoint step_000040 cannot be loaded (DamagedCheckpoint: model.safetensors is 1000 bytes" in out
    assert "falling back to the previous one, step_000030" in out
    assert f"resuming from {resumed / 'checkpoints' / 'step_000030'}" in out
    # and the 10 updates done again land on the same bits
    assert_bitwise_equal(weights(resumed, "student"), weights(reference, "student"))


def test_resume_refuses_a_run_dir_with_another_config(tmp_path_factory):
    reference, _, _, _ = reference_and_resumed("one_stage", tmp_path_factory)
    args = TINY + SCHEMES["one_stage"] + ["student.lr=0.05", "seed=3", "eval_every=5", f"out_dir={reference.parent}"]
    with pytest.raises(DfkdError, match=r"different config \(student.lr: \S+ -> 0.05; seed: 0 -> 3\)"):
        distill(load_config(args))


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    one_stage, calls = schemes.SCHEMES["one_stage"], []

    def poisoned(parts, k):  # from the 26th update on, the student's weights are NaN
        calls.append(1)
        if len(calls) > 25:
            with torch.no_grad():
                next(parts.student.parameters()).fill_(float("nan"))
        return one_stage(parts, k)

    monkeypatch.setitem(schemes.SCHEMES, "one_stage", poisoned)
    run_dir, args = tmp_path / "r", TINY + SCHEMES["one_stage"] + ["student_updates=30", "eval_every=30"]
    with pytest.raises(DfkdError) as err:
        run(args, tmp_path)
    good = run_dir / "checkpoints" / "step_000020"
    assert str(err.value).startswith("non-finite loss_s, loss_g at student update 26 (cycle 26); stopped without "
                                     f"saving; last good checkpoint: {good}")
    assert complete_checkpoints(run_dir) == [run_dir / "checkpoints" / "step_000010", good]
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not (run_dir / "student.safetensors").exists()
    for name in ("model.safetensors", "model_1.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(good / name)).values())
    # intact: it resumes (without the injected NaN) and finishes
    monkeypatch.setitem(schemes.SCHEMES, "one_stage", one_stage)
    assert run(args, tmp_path) == run_dir
    assert (run_dir / "student.safetensors").exists()


def test_finished_run_run_again_keeps_its_summary_and_wall_clock_adds_up_over_a_resume(tmp_path_factory):
    out = tmp_path_factory.mktemp("again")
    args = TINY + SCHEMES["one_stage"]
    crashed = Crash(args, out).wait()
    state = torch.load(complete_checkpoints(crashed)[-1] / "dfkd_state_0.pt", weights_only=True)
    assert state["wall_s"] > 0  # the wall clock of the killed process is in its checkpoint
    run_dir = run(args, out)
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["wall_seconds"] >= state["wall_s"] + first["train_seconds"] - state["train_s"]
    assert run(args, out) == run_dir  # run again: nothing to do
    assert json.loads((run_dir / "summary.json").read_text()) == first


def test_checkpoint_that_fails_to_load_falls_back_to_previous(tmp_path, capsys):
    """Right size but corrupt (the loader fails, not the size check): everything comes from the previous one."""
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(Config())))
    z_rng, saved, z_states = torch.Generator().manual_seed(0), {}, {}
    for updates in (10, 20):
        with torch.no_grad():
            model.weight.fill_(updates)
        z_states[updates] = z_rng.get_state()
        saved[updates] = save_checkpoint(accelerator, tmp_path, {"updates": updates, "z_rng": z_rng.get_state()},
                                         keep=2)
        torch.randn(5, generator=z_rng)
    optimizer_file = saved[20] / "optimizer.bin"
    optimizer_file.write_bytes(b"\0" * optimizer_file.stat().st_size)

    def load_extras(state):  # as Parts.load_extras does for the latent codes' RNG
        z_rng.set_state(state["z_rng"])

    path, state = restore(accelerator, complete_checkpoints(tmp_path)[::-1], load_extras, explicit=False)
    assert (path, state["updates"]) == (saved[10], 10)
    assert torch.all(model.weight == 10) and torch.equal(z_rng.get_state(), z_states[10])
    out = capsys.readouterr().out
    assert "checkpoint step_000020 cannot be loaded (" in out and "falling back to the previous one, step_000010" in out
    with pytest.raises(DfkdError, match="step_000020 cannot be loaded .*; pass resume=none to start over"):
        restore(accelerator, [saved[20]], load_extras, explicit=True)  # named by resume=PATH: no silent fallback
