"""The tree is clean under the project's ruff configuration (pyproject.toml, [tool.ruff])."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_tree_is_clean_under_ruff():
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_modules_stay_short_and_functions_fit_a_screen():
    """STYLE.md: modules under ~300 lines, functions that fit a screen (60 lines)."""
    import ast

    long_modules, long_functions = [], []
    for path in sorted((REPO / "dfkd").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > 300:
            long_modules.append(f"{path.relative_to(REPO)} ({len(source.splitlines())} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long_modules and not long_functions, f"split: {long_modules + long_functions}"
