"""The CPU threads a run uses: fewer than torch's default when other jobs already occupy cores, never
against a count the user chose."""
from __future__ import annotations

import os

import pytest
import torch

from dfkd.machine import THREAD_VARS, pick_threads, threads_to_use


@pytest.mark.parametrize("cores, cpus, load, torch_threads, want", [
    (2, 2, 1.0, 2, 1),  # one other single-thread job on a 2-core machine: one thread, not two
    (2, 2, 3.7, 2, 1),  # more jobs than cores: still one thread
    (8, 8, 3.0, 8, 5),  # the idle cores only
    (2, 2, 0.4, 2, None),  # a load that rounds to no busy core: keep torch's count
    (2, 2, 0.6, 2, 1),
    (8, 8, 3.0, 4, None),  # enough idle cores for torch's count (one per physical core)
    (2, 64, 30.0, 2, None),  # a process on 2 of 64 CPUs: the load is over all 64, 34 of them idle
])
def test_threads_are_the_idle_cores_when_other_jobs_occupy_some(cores, cpus, load, torch_threads, want):
    assert threads_to_use(cores, cpus, load, torch_threads, {}) == want


@pytest.mark.parametrize("var", THREAD_VARS)
def test_a_thread_count_set_in_the_environment_is_kept(var):
    assert threads_to_use(2, 2, 1.0, 2, {var: "2"}) is None


@pytest.fixture
def busy_two_core_machine(monkeypatch):
    """A 2-CPU machine with one other job running; torch's thread count restored afterwards."""
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.02, 0.8, 0.5))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_pick_threads_lowers_torchs_default_and_says_how_to_choose(busy_two_core_machine):
    torch.set_num_threads(2)  # torch's default on 2 CPUs
    lines = []
    assert pick_threads(lines.append) == 1 and torch.get_num_threads() == 1
    assert len(lines) == 1 and "1 CPU thread" in lines[0] and "OMP_NUM_THREADS=N" in lines[0]
    assert pick_threads(lines.append) == 1 and len(lines) == 1  # once lowered, left alone


def test_pick_threads_keeps_a_count_set_with_torch_set_num_threads(busy_two_core_machine):
    torch.set_num_threads(3)  # not one per CPU nor per core: the user's choice
    lines = []
    assert pick_threads(lines.append) == 3 and torch.get_num_threads() == 3 and not lines


def test_pick_threads_keeps_a_count_set_in_the_environment(busy_two_core_machine, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    lines = []
    assert pick_threads(lines.append) == 2 and torch.get_num_threads() == 2 and not lines


def test_a_benchmarks_command_line_carries_its_thread_setting(monkeypatch):
    from dfkd.machine import command_line

    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert command_line("benchmarks/x.py", ["--seeds", "0", "a b"]) == \
        "OMP_NUM_THREADS=1 python benchmarks/x.py --seeds 0 'a b'"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert command_line("benchmarks/x.py", []) == "python benchmarks/x.py"
