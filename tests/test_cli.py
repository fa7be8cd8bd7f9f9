"""The ``dfkd`` command: one line per subcommand in ``dfkd --help``, usage and exit 2 without one,
``dfkd distill --help`` listing every recipe and every key of the schema, and one error convention
(``dfkd: error: MESSAGE`` on stderr, exit 2) for every subcommand; anything unexpected is one line too, exit 1."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfkd.cli import COMMANDS, main
from dfkd.config import available_recipes
from dfkd.errors import DfkdError, one_line_errors
from dfkd.schema import Config, schema_fields

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """argparse wraps help at the terminal's width: a fixed width keeps each subcommand on one line."""
    monkeypatch.setenv("COLUMNS", "100")


def test_help_lists_each_subcommand_on_one_line_of_stdout(capsys):
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert set(COMMANDS) == {"distill", "compare", "export", "evaluate"}
    for name, (_, what) in COMMANDS.items():
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(lines) == 1 and lines[0].endswith(what), (name, out)


def test_no_subcommand_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: dfkd ") and "COMMAND" in err


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert main(["distil"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'distil'" in err and "'distill'" in err


def test_distill_help_lists_every_recipe_and_every_key_with_its_default_and_meaning(capsys):
    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(recipe in out for recipe in available_recipes())
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for name, field in schema_fields(Config):
        assert name in rows, f"{name} missing from dfkd distill --help"
        assert rows[name].endswith(field.metadata["doc"] + ("; a resumed run may change it"
                                                            if field.metadata["logging"] else ""))
    # the value a bare run uses: the default recipe's where it changes the schema's default, and says so
    assert rows["student.lr"].split()[:2] == ["student.lr", "0.05"]
    assert "(recipes/default.yaml; schema: 0.1)" in rows["student.lr"]
    assert rows["scheme"].split()[:2] == ["scheme", "hybrid"] and "schema: one_stage" in rows["scheme"]
    assert rows["teacher.card"].split()[:2] == ["teacher.card", "null"] and "schema:" not in rows["teacher.card"]
    assert rows["lr_milestones"].split()[1:3] == ["[0.2,", "0.4]"]


def test_distill_help_of_a_recipe_shows_that_recipes_values(capsys):
    assert main(["distill", "recipe=resnet34_to_resnet18", "--help"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["teacher.name"].split()[1] == "resnet34_cifar"
    assert "(recipes/resnet34_to_resnet18.yaml; schema: null)" in rows["teacher.name"]


def test_distill_help_of_an_unknown_recipe_is_one_line(capsys):
    assert main(["distill", "recipe=nope", "--help"]) == 2
    assert capsys.readouterr().err.startswith("dfkd: error: unknown recipe 'nope'")


def test_distill_script_and_subcommand_print_the_same_help(capsys):
    assert main(["distill", "-h"]) == 0
    listing = capsys.readouterr().out
    script = subprocess.run([sys.executable, str(REPO / "dfkd" / "distill.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert script.returncode == 0 and script.stdout == listing


def exit_code(argv) -> int:
    """``dfkd ARGV``'s exit code: returned, or raised by argparse (a subcommand's --help or usage error)."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


@pytest.mark.parametrize("command", ["compare", "export", "evaluate"])
def test_every_subcommand_has_help(command, capsys):
    assert exit_code([command, "--help"]) == 0
    assert f"dfkd {command}" in capsys.readouterr().out


def test_the_error_wrapper_turns_a_user_mistake_into_one_line_and_exit_2(capsys):
    def mistake():
        raise DfkdError("k must be >= 1, got 0")

    assert one_line_errors(mistake) == 2
    assert capsys.readouterr().err == "dfkd: error: k must be >= 1, got 0\n"
    assert one_line_errors(mistake, prog="teachers/train.py") == 2
    assert capsys.readouterr().err == "teachers/train.py: error: k must be >= 1, got 0\n"
    assert one_line_errors(lambda: None) == 0


def test_anything_unexpected_is_one_line_with_the_command_and_exit_1(tmp_path, capsys, monkeypatch):
    import dfkd.commands

    def bug(*args, **kwargs):
        raise RuntimeError("shapes do not match\nsecond line of the message")

    monkeypatch.setattr(dfkd.commands, "export", bug)
    monkeypatch.delenv("DFKD_DEBUG", raising=False)
    assert main(["export", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("dfkd export: unexpected RuntimeError: shapes do not match "
                                 "(rerun with DFKD_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("DFKD_DEBUG", "1")  # the traceback, for whoever fixes it
    with pytest.raises(RuntimeError, match="shapes do not match"):
        main(["export", str(tmp_path)])


def test_an_interrupt_is_never_swallowed(monkeypatch):
    import dfkd.commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dfkd.commands, "export", interrupted)
    monkeypatch.delenv("DFKD_DEBUG", raising=False)
    with pytest.raises(KeyboardInterrupt):
        main(["export", "runs/x"])


@pytest.mark.parametrize("argv, fragment", [
    (["distill", "student.lrr=0.01"], "unknown key 'student.lrr' in the command line; did you mean 'student.lr'?"),
    (["compare", "budget=steps:10"], "budget 'steps:10' is not updates:N or time:SECONDS"),
    (["compare", "schemes=[hybrid_k5"], "argument 'schemes=[hybrid_k5' does not parse: brackets and quotes must "
                                        "balance"),
    (["distill", "data.mean=[0.1"], "argument 'data.mean=[0.1' does not parse: brackets and quotes must balance"),
    (["export", "{TMP}"], "is not a dfkd run directory (no config.yaml)"),
    (["evaluate", "{TMP}/model.h5"], "model.h5' not found; pass a run directory"),
])
def test_every_subcommand_reports_a_user_mistake_the_same_way(argv, fragment, tmp_path, capsys):
    assert main([a.format(TMP=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("dfkd: error: ") and fragment in err, err
