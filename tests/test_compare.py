"""``dfkd compare``: the results files of a tiny real comparison, time-to-accuracy, scheme names, variants
(an entry with its own overrides) and budgets.

The end-to-end test needs no network and no cache: a 40-image fake MNIST (IDX files) and a random-init
LeNet-5 teacher written into tmp_path stand in for the real data and teacher. Only file formats,
bookkeeping and the time budget are checked here, not accuracy.
"""
from __future__ import annotations

import csv
import json
import re
import struct

import pytest
import torch
from conftest import PLAIN
from omegaconf import OmegaConf

from dfkd.build import run_dir_for
from dfkd.compare import (
    FRACTIONS,
    budget_overrides,
    compare,
    main,
    parse_args,
    parse_scheme,
    run_config,
    run_folder,
    run_order,
    scheme_label,
    time_to_accuracy,
)
from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.schemes import SCHEMES as SCHEME_FUNCTIONS

VARIANT = "two_stage_k5+generator.lr=0.002"  # two_stage k=5 with its own generator learning rate
SCHEMES = ["two_stage_k5", "one_stage", VARIANT]
FOLDERS = {"two_stage_k5": "two_stage_k5", "one_stage": "one_stage", VARIANT: "two_stage_k5_generator.lr_0.002"}
CSV_COLUMNS = (["scheme", "seeds", "teacher_acc", "student_final_acc_mean", "student_final_acc_std",
                "student_best_acc_mean", "student_best_acc_std", "train_seconds_mean", "eval_seconds_mean",
                "wall_seconds_mean", "student_updates_mean", "generator_updates_mean", "seconds_per_student_update"]
               + [f"tta{p}_{c}" for p in (90, 95, 97, 99) for c in ("seconds_mean", "seconds_std", "reached")])
MD_COLUMNS = ["scheme", "teacher acc %", "student final acc %", "student best acc %", "train s", "eval s", "wall s",
              "ms / student update", "student updates", "generator updates", "s to 90% of teacher",
              "s to 95% of teacher", "s to 97% of teacher", "s to 99% of teacher"]
MEAN_STD = re.compile(r"^(\d+\.\d\d) ± (\d+\.\d\d)$")
TTA_CELL = re.compile(r"^(not reached|\d+\.\d ± \d+\.\d( \(\d+/\d+ seeds\))?)$")


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> list[str]:
    """Recipe overrides for a fake 40-image MNIST and a random LeNet-5 teacher, all under a tmp dir."""
    from safetensors.torch import save_file

    from dfkd.weights import create_model

    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "t10k"):
        images = torch.randint(0, 256, (40, 28, 28), generator=gen, dtype=torch.uint8)
        labels = torch.arange(40, dtype=torch.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 40, 28, 28) + images.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 40) + labels.numpy().tobytes())
    torch.manual_seed(0)
    teacher = root / "teacher.safetensors"
    save_file(create_model("lenet5", 10).state_dict(), str(teacher))
    return [*PLAIN, f"data.root={root}", "data.download=false", f"teacher.checkpoint={teacher}",
            "teacher.train_if_missing=false", "teacher.allow_near_chance=true", "batch_size=8", "generator.ngf=4",
            "generator.nz=16", "logger=none"]  # a random teacher scores near chance by design


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, two spinning OpenMP threads make tiny steps ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    assert set("".join(rows[1])) <= set("-"), "second table line must be the |---| separator"
    return rows[0], rows[2:]


def test_compare_writes_table_csv_and_plot_with_one_line_per_scheme(tiny_recipe, tmp_path, one_thread):
    import matplotlib.image

    out = tmp_path / "cmp"
    argv = [f"schemes=[{','.join(SCHEMES)}]", "seeds=1", "budget=updates:10", "eval_every=5", "warmup=5",
            f"out={out}", *tiny_recipe]
    assert main(argv) == 0
    for name in ("results.md", "results.csv", "accuracy_vs_time.png", "accuracy_vs_time.json"):
        assert (out / name).is_file(), name
    summaries = {s: json.loads((out / "runs" / f"{FOLDERS[s]}-s0" / "summary.json").read_text()) for s in SCHEMES}
    generator_lrs = {s: OmegaConf.load(out / "runs" / f"{FOLDERS[s]}-s0" / "config.yaml").generator.lr
                     for s in SCHEMES}
    recipe_lr = load_config(tiny_recipe).generator.lr
    assert recipe_lr != 0.002 and generator_lrs == {"two_stage_k5": recipe_lr, "one_stage": recipe_lr, VARIANT: 0.002}

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["scheme"] for r in rows] == SCHEMES
    for row in rows:
        s = summaries[row["scheme"]]
        assert float(row["teacher_acc"]) == s["teacher_acc"]
        assert float(row["student_final_acc_mean"]) == round(s["student_final_acc"], 3)
        assert float(row["student_final_acc_std"]) == 0.0  # one seed
        assert float(row["student_updates_mean"]) == 10
        assert float(row["train_seconds_mean"]) + float(row["eval_seconds_mean"]) <= float(row["wall_seconds_mean"]) + 0.02
        for p in (90, 95, 97):
            reached = row[f"tta{p}_reached"]
            assert reached in ("0/1", "1/1")
            assert (row[f"tta{p}_seconds_mean"] == "not reached") == (reached == "0/1")
    assert [float(r["generator_updates_mean"]) for r in rows] == [2, 10, 2]  # k=5: 10/5 cycles; one-stage: one each

    text = (out / "results.md").read_text()
    head, body = read_markdown_table(text)
    assert head == MD_COLUMNS
    assert [r[0] for r in body] == SCHEMES
    for cells, row in zip(body, rows):
        assert len(cells) == len(MD_COLUMNS)
        assert MEAN_STD.match(cells[2]).group(1) == f"{float(row['student_final_acc_mean']):.2f}"
        assert MEAN_STD.match(cells[3])
        assert all(TTA_CELL.match(c) for c in cells[-4:]), cells[-4:]
    assert "Warm-up excluded" in text and f"Run order: two_stage_k5 s0, one_stage s0, {VARIANT} s0" in text

    assert (out / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = json.loads((out / "accuracy_vs_time.json").read_text())["lines"]
    teacher_acc = summaries["one_stage"]["teacher_acc"]
    assert [ln["label"] for ln in lines] == SCHEMES + [f"teacher ({teacher_acc:.2f}%)"]
    for ln in lines[:3]:  # one point per evaluation: test accuracy against training seconds
        evals = [json.loads(r) for r in (out / "runs" / f"{FOLDERS[ln['label']]}-s0" / "metrics.jsonl").read_text()
                 .splitlines()]
        evals = [e for e in evals if "test_acc" in e]
        assert ln["x"] == [e["train_s"] for e in evals] and ln["y"] == [e["test_acc"] for e in evals]
        assert len(evals) == 2
    assert lines[3]["y"] == [teacher_acc, teacher_acc]
    # The PNG itself: decodes, and each scheme's line colour is drawn (line, markers, legend handle).
    image = matplotlib.image.imread(out / "accuracy_vs_time.png")[..., :3]
    assert image.shape == (540, 1560, 3)  # two panels: against seconds, against updates
    for ln in lines[:3]:
        rgb = torch.tensor([int(ln["color"][i:i + 2], 16) / 255 for i in (1, 3, 5)])
        close = (torch.from_numpy(image) - rgb).abs().amax(-1) < 0.02
        assert close.sum() >= 10, f"{ln['label']} ({ln['color']}) not visible in the PNG"


def test_time_budget_stops_at_first_cycle_past_it_and_still_evaluates(tiny_recipe, tmp_path, one_thread):
    from dfkd.trainer import distill

    cfg = load_config([*tiny_recipe, *budget_overrides("time:0.000001"), "scheme=two_stage", "k=5",
                       "student_updates=1000", "eval_every=500", f"out_dir={tmp_path}", "run_name=t"])
    summary = distill(cfg)
    assert summary["student_updates"] == 5 and summary["generator_updates"] == 1  # one whole cycle
    evals = [json.loads(r) for r in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [e["update"] for e in evals if "test_acc" in e] == [5]


def test_time_to_accuracy_is_training_seconds_at_first_evaluation_reaching_target():
    evals = [{"train_s": 1.0, "test_acc": 50.0}, {"train_s": 2.0, "test_acc": 90.0},
             {"train_s": 3.0, "test_acc": 80.0}, {"train_s": 4.0, "test_acc": 95.0}]
    assert time_to_accuracy(evals, 90.0) == 2.0  # equal counts as reached
    assert time_to_accuracy(evals, 85.0) == 2.0  # the first, not a later one
    assert time_to_accuracy(evals, 94.0) == 4.0
    assert time_to_accuracy(evals, 95.5) is None
    assert time_to_accuracy([], 10.0) is None
    assert FRACTIONS == (0.90, 0.95, 0.97, 0.99)


def test_parse_scheme_names():
    assert parse_scheme("one_stage") == ("one_stage", 1)
    assert parse_scheme("two_stage_k5") == ("two_stage", 5)
    assert parse_scheme("two_stage_k1") == ("two_stage", 1)
    assert parse_scheme("hybrid_k12") == ("hybrid", 12)


def test_every_scheme_has_a_name_and_its_name_parses_back():
    for scheme in SCHEME_FUNCTIONS:
        k = 1 if scheme == "one_stage" else 7  # one_stage ignores k (its function gives k a default)
        assert parse_scheme(scheme_label(scheme, k)) == (scheme, k)
    assert [scheme_label(s, 5) for s in SCHEME_FUNCTIONS] == ["two_stage_k5", "one_stage", "hybrid_k5"]


def test_distill_and_compare_name_run_directories_the_same_way(tmp_path):
    for entry in ("hybrid_k5", "two_stage_k1", "one_stage"):
        compared = run_config([], entry, 3, tmp_path)
        assert compared.run_name == f"{entry}-s3"
        default = load_config([f"scheme={compared.scheme}", f"k={compared.k}", "seed=3", f"out_dir={tmp_path}"])
        assert run_dir_for(default) == tmp_path / f"default-{entry}-s3"


def test_an_entry_with_overrides_is_a_variant_of_its_scheme(tmp_path):
    cfg = run_config(["generator.lr=0.01"], VARIANT, 0, tmp_path)
    assert (cfg.scheme, cfg.k, cfg.generator.lr) == ("two_stage", 5, 0.002)  # the entry's own override wins
    assert cfg.run_name == "two_stage_k5_generator.lr_0.002-s0" == f"{run_folder(VARIANT)}-s0"
    entry = "hybrid_k5+data.root=/tmp/x+batch_size=64"
    assert run_folder(entry) == "hybrid_k5_data.root__tmp_x_batch_size_64"  # no path separator in a folder name
    assert parse_args([f"schemes=[{VARIANT},two_stage_k5]"])[0].schemes == [VARIANT, "two_stage_k5"]


@pytest.mark.parametrize("entry, message", [
    ("two_stage_k5+generator.lrr=0.002", "unknown key 'generator.lrr' in the command line; did you mean 'generator.lr'?"),
    ("two_stage_k5+generator.lr=abc", "bad value for 'generator.lr'"),
    ("two_stage_k5+generator.lr", "'generator.lr' in schemes entry 'two_stage_k5+generator.lr' is not key=value"),
    ("two_stage_k5+seed=3", "'seed' in schemes entry 'two_stage_k5+seed=3' is set by compare"),
    ("two_stage_k5+k=3", "'k' in schemes entry 'two_stage_k5+k=3' is set by compare"),
    ("two_stage+generator.lr=0.002", "scheme 'two_stage' is not one of"),
])
def test_bad_override_in_an_entry_is_a_clear_error(entry, message, tmp_path):
    with pytest.raises(DfkdError, match=re.escape(message)):
        parse_args([f"schemes=[{entry}]"])
        run_config([], entry, 0, tmp_path)


def test_entries_that_would_share_a_run_folder_are_refused():
    with pytest.raises(DfkdError, match=re.escape("would share run folders")):
        parse_args(["schemes=[one_stage+data.root=/a,one_stage+data.root=_a]"])


@pytest.mark.parametrize("name", ["two_stage", "two_stage_k0", "hybrid_k", "one_stage_k5", "dfad", "Two_stage_k5",
                                  "two_stage_k05"])
def test_bad_scheme_name_is_a_clear_error(name):
    expected = f"scheme '{name}' is not one of two_stage_kN, one_stage, hybrid_kN (e.g. two_stage_k5)"
    with pytest.raises(DfkdError, match=re.escape(expected)):
        parse_scheme(name)
    with pytest.raises(DfkdError, match="is not one of"):
        parse_args([f"schemes=[one_stage,{name}]"])


def test_budgets_become_recipe_overrides():
    assert budget_overrides(None) == []
    assert budget_overrides("updates:2000") == ["student_updates=2000"]
    assert budget_overrides("time:600") == ["max_train_seconds=600.0"]
    assert budget_overrides("time:2.5") == ["max_train_seconds=2.5"]
    assert load_config(budget_overrides("time:2.5")).max_train_seconds == 2.5
    assert load_config([]).max_train_seconds is None


@pytest.mark.parametrize("budget", ["updates:0", "updates:-5", "updates:1.5", "updates:", "time:0", "time:-1",
                                    "time:abc", "time:1e3", "600", "steps:10"])
def test_bad_budget_is_a_clear_error(budget, capsys):
    with pytest.raises(DfkdError, match=re.escape(f"budget '{budget}' is not updates:N or time:SECONDS")):
        budget_overrides(budget)
    assert main([f"budget={budget}"]) == 2  # the command line: one line on stderr, no traceback
    err = capsys.readouterr().err
    assert err.startswith("dfkd: error: ") and "budget" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["schemes=[one_stage,one_stage]"], "without repeats"),
    (["schemes=one_stage"], "bad compare argument 'schemes'"),
    (["scheme=one_stage"], "'scheme' is set by compare"),
    (["seeds=0"], "seeds >= 1"),
    (["budget=updates:100", "student_updates=50"], "give the budget once"),
    (["budget=time:60", "max_train_seconds=30"], "give the budget once"),
    (["max_train_seconds=-1"], "max_train_seconds must be > 0"),
])
def test_bad_arguments_are_clear_errors(argv, message):
    with pytest.raises(DfkdError, match=re.escape(message)):
        cfg, recipe = parse_args(argv)
        load_config(recipe)


def test_time_budget_may_keep_an_update_cap():
    cfg, recipe = parse_args(["budget=time:60", "student_updates=50"])
    assert recipe == ["student_updates=50", "max_train_seconds=60.0"]


def test_runs_are_seed_major_with_schemes_rotated():
    assert run_order(["a", "b", "c"], [0, 1, 2, 3]) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]


def test_budget_not_a_multiple_of_k_is_refused_before_any_run(tmp_path):
    with pytest.raises(DfkdError, match=re.escape("must be multiples of the 5 student updates of a two_stage_k5 cycle")):
        compare([*PLAIN, "schemes=[one_stage,two_stage_k5]", "budget=updates:12", "eval_every=5", f"out={tmp_path}"])
    # a pooled variant's cycle is k plus its pool steps: 5 + 2
    with pytest.raises(DfkdError, match=re.escape("of the 7 student updates of a hybrid_k5+pool.size=500+pool.steps=2")):
        compare(["schemes=[hybrid_k5+pool.size=500+pool.steps=2]", "budget=updates:10", "eval_every=5",
                 f"out={tmp_path}"])
    assert not (tmp_path / "runs").exists()


def test_existing_results_directory_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()  # a second compare there would resume its runs instead of timing them
    with pytest.raises(DfkdError, match="already holds a comparison; pass a new out=DIR"):
        compare(["schemes=[one_stage]", "budget=updates:10", f"out={tmp_path}"])
