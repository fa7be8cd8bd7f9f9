"""``dfkd compare``: the results files of a tiny real comparison, time-to-accuracy, scheme names, variants
(an entry with its own overrides), labels, run folder names, budgets, and the committed comparisons.

The end-to-end test needs no network and no cache: a 40-image fake MNIST (IDX files) and a random-init
LeNet-5 teacher written into tmp_path stand in for the real data and teacher. Only file formats,
bookkeeping and the time budget are checked here, not accuracy.
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import struct
from pathlib import Path

import pytest
import torch
from conftest import PLAIN
from omegaconf import OmegaConf

from dfkd.build import run_dir_for
from dfkd.comparison import (
    NAME_MAX,
    budget_overrides,
    compare,
    entry_name,
    main,
    parse_args,
    run_config,
    run_folder,
    run_order,
)
from dfkd.config import load_config
from dfkd.errors import DfkdError
from dfkd.results import FRACTIONS, measured, read_runs, summarise, time_to_accuracy, write_runs
from dfkd.schemes import SCHEMES as SCHEME_FUNCTIONS
from dfkd.schemes import parse_scheme, scheme_label

REPO = Path(__file__).resolve().parents[1]
VARIANT = "two_stage_k5+generator.lr=0.002"  # two_stage k=5 with its own generator learning rate
LABELLED = f"slow_gen={VARIANT}"  # the same, named: tables, plot and folders say slow_gen
SCHEMES = ["two_stage_k5", "one_stage", LABELLED]
NAMES = ["two_stage_k5", "one_stage", "slow_gen"]  # unlabelled entries keep their names
FOLDERS = {"two_stage_k5": "two_stage_k5", "one_stage": "one_stage", "slow_gen": "slow_gen"}
LONG = ("two_stage_k5+pool.size=0+student.ema=0+priors.ie=0+student.lr=0.01+lr_schedule=constant"
        "+student_updates=4000+loss=l1+generator.output=standardized")  # DFAD as docs/students.md compares it
CSV_COLUMNS = (["scheme", "seeds", "teacher_acc", "student_final_acc_mean", "student_final_acc_std",
                "student_best_acc_mean", "student_best_acc_std", "student_final_fidelity_mean",
                "student_final_fidelity_std", "student_best_fidelity_mean", "student_best_fidelity_std",
                "train_seconds_mean", "eval_seconds_mean", "wall_seconds_mean", "student_updates_mean",
                "generator_updates_mean", "seconds_per_student_update"]
               + [f"{t}{p}_{c}" for t in ("tta", "ttf") for p in (90, 95, 97, 99)
                  for c in ("seconds_mean", "seconds_std", "reached")])
MD_COLUMNS = ["scheme", "teacher acc %", "student final acc %", "student best acc %", "student final fidelity %",
              "train s", "eval s", "wall s", "ms / student update", "student updates", "generator updates",
              "s to 90% of teacher", "s to 95% of teacher", "s to 97% of teacher", "s to 99% of teacher",
              "s to 95% agreement"]
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


def test_compare_writes_table_csv_plot_and_runs_file_with_one_line_per_scheme(tiny_recipe, tmp_path, one_thread):
    import matplotlib.image

    out = tmp_path / "cmp"
    argv = [f"schemes=[{','.join(SCHEMES)}]", "seeds=1", "budget=updates:10", "eval_every=5", "warmup=5",
            f"out={out}", *tiny_recipe]
    assert main(argv) == 0
    for name in ("results.md", "results.csv", "accuracy_vs_time.png", "accuracy_vs_time.json", "runs.jsonl.gz"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{f}-s0" for f in FOLDERS.values())
    summaries = {s: json.loads((out / "runs" / f"{FOLDERS[s]}-s0" / "summary.json").read_text()) for s in NAMES}
    generator_lrs = {s: OmegaConf.load(out / "runs" / f"{FOLDERS[s]}-s0" / "config.yaml").generator.lr
                     for s in NAMES}
    recipe_lr = load_config(tiny_recipe).generator.lr
    assert recipe_lr != 0.002 and generator_lrs == {"two_stage_k5": recipe_lr, "one_stage": recipe_lr, "slow_gen": 0.002}

    # runs.jsonl.gz: every run's files in one place, in run order, and the table re-derives from it
    records = read_runs(out / "runs.jsonl.gz")
    assert [(r["entry"], r["seed"], r["run"]) for r in records] == [(e, 0, f"{FOLDERS[n]}-s0") for e, n in
                                                                    zip(SCHEMES, NAMES)]
    for r in records:
        run_dir = out / "runs" / r["run"]
        assert r["summary"] == json.loads((run_dir / "summary.json").read_text())
        assert r["metrics"] == [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert r["config"] == OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    write_runs(tmp_path / "again.jsonl.gz", records)  # no timestamp inside: the same runs give the same bytes
    assert (tmp_path / "again.jsonl.gz").read_bytes() == (out / "runs.jsonl.gz").read_bytes()

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["scheme"] for r in rows] == NAMES
    assert [str(v) for v in summarise("slow_gen", [measured(records[2])]).values()] == list(rows[2].values())
    for row in rows:
        s = summaries[row["scheme"]]
        assert float(row["teacher_acc"]) == s["teacher_acc"]
        assert float(row["student_final_acc_mean"]) == round(s["student_final_acc"], 3)
        assert float(row["student_final_acc_std"]) == 0.0  # one seed
        assert float(row["student_updates_mean"]) == 10
        assert float(row["train_seconds_mean"]) + float(row["eval_seconds_mean"]) <= float(row["wall_seconds_mean"]) + 0.02
        for tag in ("tta90", "tta95", "tta97", "ttf90", "ttf95"):
            reached = row[f"{tag}_reached"]
            assert reached in ("0/1", "1/1")
            assert (row[f"{tag}_seconds_mean"] == "not reached") == (reached == "0/1")
    assert [float(r["generator_updates_mean"]) for r in rows] == [2, 10, 2]  # k=5: 10/5 cycles; one-stage: one each

    text = (out / "results.md").read_text()
    head, body = read_markdown_table(text)
    assert head == MD_COLUMNS
    assert [r[0] for r in body] == NAMES
    for cells, row in zip(body, rows):
        assert len(cells) == len(MD_COLUMNS)
        assert MEAN_STD.match(cells[2]).group(1) == f"{float(row['student_final_acc_mean']):.2f}"
        assert MEAN_STD.match(cells[3])
        assert MEAN_STD.match(cells[4]).group(1) == f"{float(row['student_final_fidelity_mean']):.2f}"
        assert all(TTA_CELL.match(c) for c in cells[-5:]), cells[-5:]
    assert "Warm-up excluded" in text and "Run order: two_stage_k5 s0, one_stage s0, slow_gen s0" in text
    assert f"Entries: `slow_gen` = `{VARIANT}`." in text  # what a label ran, beside the table

    assert (out / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = json.loads((out / "accuracy_vs_time.json").read_text())["lines"]
    teacher_acc = summaries["one_stage"]["teacher_acc"]
    assert [ln["label"] for ln in lines] == NAMES + [f"teacher ({teacher_acc:.2f}%)"]
    for ln in lines[:3]:  # one point per evaluation: test accuracy against training seconds
        evals = [json.loads(r) for r in (out / "runs" / f"{FOLDERS[ln['label']]}-s0" / "metrics.jsonl").read_text()
                 .splitlines()]
        evals = [e for e in evals if "test_acc" in e]
        assert ln["x"] == [e["train_s"] for e in evals] and ln["y"] == [e["test_acc"] for e in evals]
        assert len(evals) == 2
    assert lines[3]["y"] == [teacher_acc, teacher_acc]
    # The PNG itself: decodes, and each scheme's line colour is drawn (line, markers, legend handle).
    image = matplotlib.image.imread(out / "accuracy_vs_time.png")[..., :3]
    assert image.shape == (540, 2280, 3)  # three panels: accuracy against seconds and updates, fidelity
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
    agreement = [{"train_s": 1.0, "fidelity_agree": 60.0}, {"train_s": 2.0, "fidelity_agree": 96.0}]
    assert time_to_accuracy(agreement, 95.0, "fidelity_agree") == 2.0  # time-to-fidelity: the same rule
    assert time_to_accuracy(agreement, 95.0) is None  # no test accuracy is no time-to-accuracy


def test_parse_scheme_names():
    assert parse_scheme("one_stage") == ("one_stage", 1)
    assert parse_scheme("two_stage_k5") == ("two_stage", 5)
    assert parse_scheme("two_stage_k1") == ("two_stage", 1)
    assert parse_scheme("hybrid_k12") == ("hybrid", 12)


def test_every_scheme_has_a_name_and_its_name_parses_back():
    for scheme in SCHEME_FUNCTIONS:
        k = 1 if scheme in ("one_stage", "real_data") else 7  # these ignore k (their functions give k a default)
        assert parse_scheme(scheme_label(scheme, k)) == (scheme, k)
    assert [scheme_label(s, 5) for s in SCHEME_FUNCTIONS] == ["two_stage_k5", "one_stage", "hybrid_k5", "real_data"]


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


def test_a_comparison_without_labelled_data_is_refused(tmp_path):
    from dfkd.comparison import compare

    with pytest.raises(DfkdError, match=re.escape("dfkd compare measures test accuracy and data.dataset=none")):
        compare(["data.dataset=none", f"out={tmp_path}"])
    assert not list(tmp_path.iterdir())  # refused before any run


def test_entries_that_would_share_a_run_folder_are_refused():
    with pytest.raises(DfkdError, match=re.escape("would share run folders")):
        parse_args(["schemes=[one_stage+data.root=/a,one_stage+data.root=_a]"])


def test_labels_survive_the_command_line_with_their_equals_signs():
    # the whole argument is one OmegaConf dotlist item: the '=' inside its list items must reach compare as written
    cfg, recipe = parse_args(["schemes=[DFAD=two_stage_k5+pool.size=0+student.ema=0,default=hybrid_k5]"])
    assert cfg.schemes == ["DFAD=two_stage_k5+pool.size=0+student.ema=0", "default=hybrid_k5"] and recipe == []
    assert [entry_name(e) for e in cfg.schemes] == ["DFAD", "default"]
    assert [run_folder(e) for e in cfg.schemes] == ["DFAD", "default"]
    assert [entry_name(e) for e in ("two_stage_k5", VARIANT)] == ["two_stage_k5", VARIANT]  # unlabelled: as written


def test_a_label_names_the_runs_and_changes_nothing_else(tmp_path):
    import dataclasses

    labelled, plain = (run_config(["generator.lr=0.01"], e, 2, tmp_path) for e in (LABELLED, VARIANT))
    assert (labelled.run_name, plain.run_name) == ("slow_gen-s2", "two_stage_k5_generator.lr_0.002-s2")
    assert dataclasses.replace(labelled, run_name="x") == dataclasses.replace(plain, run_name="x")


def test_a_long_unlabelled_entry_gets_a_short_folder_ending_in_a_hash_of_its_overrides():
    folder = run_folder(LONG)
    assert len(LONG) > NAME_MAX and len(folder) == NAME_MAX
    assert re.fullmatch(r"two_stage_k5_pool\.size_0_student\.ema_0_[A-Za-z0-9._-]*-[0-9a-f]{8}", folder), folder
    assert run_folder(LONG) == folder  # the same entry, the same folder, on every machine
    assert run_folder(LONG.replace("loss=l1", "loss=kl")) != folder  # the tail differs, so does the hash
    assert run_folder("hybrid_k5+pool.size=50000+pool.fresh=0.5") == "hybrid_k5_pool.size_50000_pool.fresh_0.5"
    assert len(run_config([], LONG, 12, Path("runs")).run_name) <= NAME_MAX + len("-s12")


def test_methods_under_labelled_schemes_are_all_named_method_dash_scheme():
    cfg, _ = parse_args(["methods=[CMI=cmi+pool.size=200000,dfad]", "schemes=[two_stage_k5,one=hybrid_k5]"])
    assert cfg.schemes == ["CMI-two_stage_k5=two_stage_k5+method=cmi+pool.size=200000",
                           "CMI-one=hybrid_k5+method=cmi+pool.size=200000",
                           "dfad-two_stage_k5=two_stage_k5+method=dfad", "dfad-one=hybrid_k5+method=dfad"]
    assert [entry_name(e) for e in cfg.schemes] == ["CMI-two_stage_k5", "CMI-one", "dfad-two_stage_k5", "dfad-one"]
    unlabelled, _ = parse_args(["methods=[dfad]", "schemes=[two_stage_k5,hybrid_k5]"])
    assert unlabelled.schemes == ["two_stage_k5+method=dfad", "hybrid_k5+method=dfad"]  # named as before


@pytest.mark.parametrize("argv, message", [
    (["schemes=[a b=hybrid_k5]"], "label 'a b' of entry 'a b=hybrid_k5' must be 1-50 letters, digits, '.', '_' or '-'"),
    (["schemes=[x/y=hybrid_k5]"], "label 'x/y' of entry"),
    (["schemes=[.hidden=hybrid_k5]"], "starting with a letter or digit"),
    (["schemes=[=hybrid_k5]"], "label '' of entry"),
    ([f"schemes=[{'a' * 51}=hybrid_k5]"], "must be 1-50 letters"),
    (["schemes=[A=hybrid_k5,A=one_stage]"], "each entry named once (by its label, else as written), got ['A', 'A']"),
    (["schemes=[one_stage=hybrid_k5,one_stage]"], "each entry named once"),
    (["schemes=[dfad=one_stage,DFAD=hybrid_k5]"], "would share run folders ['dfad', 'DFAD'] (letter case aside"),
    (["methods=[X=dfad]", "schemes=[two_stage_k5+pool.size=0,two_stage_k5+pool.size=1]"], "got ['X-two_stage_k5', "
                                                                                          "'X-two_stage_k5']"),
    (["schemes=[L=two_stage_k5+k=3]"], "'k' in schemes entry 'L=two_stage_k5+k=3' is set by compare"),
])
def test_bad_or_repeated_label_is_a_one_line_error(argv, message, capsys):
    with pytest.raises(DfkdError, match=re.escape(message)):
        parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfkd: error: ") and err.count("\n") == 1 and "Traceback" not in err


COMMITTED = sorted((REPO / "benchmarks" / "results").glob("compare_*"))


@pytest.mark.parametrize("results", COMMITTED, ids=lambda p: p.name)
def test_committed_comparison_re_derives_from_its_runs_file(results):
    """What is kept of a comparison: its table, its plot and runs.jsonl.gz, from which both follow exactly."""
    with open(results / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    runs = [measured(r) for r in read_runs(results / "runs.jsonl.gz")]
    assert sorted({entry_name(r["entry"]) for r in runs}) == sorted(row["scheme"] for row in rows)
    by_name = {row["scheme"]: [r for r in runs if entry_name(r["entry"]) == row["scheme"]] for row in rows}
    for row in rows:  # tables written before a column existed (the 99 % one) have fewer columns
        derived = summarise(row["scheme"], by_name[row["scheme"]])
        assert {key: str(derived[key]) for key in row} == row
    for line in json.loads((results / "accuracy_vs_time.json").read_text())["lines"]:
        if line["label"].startswith("teacher ("):
            continue
        group = by_name[line["label"]]
        n = min(len(r["evaluations"]) for r in group)
        for axis, key in (("x", "train_s"), ("y", "test_acc")):
            assert line[axis] == [statistics.mean(r["evaluations"][i][key] for r in group) for i in range(n)]


@pytest.mark.parametrize("name", ["two_stage", "two_stage_k0", "hybrid_k", "one_stage_k5", "dfad", "Two_stage_k5",
                                  "two_stage_k05"])
def test_bad_scheme_name_is_a_clear_error(name):
    expected = f"scheme '{name}' is not one of two_stage_kN, one_stage, hybrid_kN, real_data (e.g. two_stage_k5)"
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
    (["schemes=one_stage"], "bad value for 'schemes' in the command line"),
    (["seeds=x"], "bad value for 'seeds' in the command line"),
    (["seedz=3"], "unknown key 'seedz'"),
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
