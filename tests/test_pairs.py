"""benchmarks/pairs.py without training: its pair table, the runs it would start, what it reads back."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs():
    return load_script("benchmarks/pairs.py")


def test_help_lists_the_pair_selection():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pairs.py"), "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "--pairs" in done.stdout and "--dataset" in done.stdout


def test_every_pair_builds_one_channel_32x32_models_with_10_classes(pairs, one_thread):
    assert {p for d in pairs.DATASETS.values() for p in d["pairs"]} <= set(pairs.PAIRS)
    for name in {m for teacher, student, _ in pairs.PAIRS.values() for m in (teacher, student)}:
        model = pairs.create_model(name, 10, in_chans=1).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10), name


def test_pairs_differ_only_in_teacher_checkpoint_student_and_seed(pairs):
    jobs = pairs.distillations(["resnet", "lenet"], [0, 1], "~/t", "digits")

    assert [(label, seed) for label, seed, _ in jobs] == [("resnet", 0), ("resnet", 1), ("lenet", 0), ("lenet", 1)]
    assert jobs[0][2] == ["teacher.name=test_resnet", "teacher.checkpoint=~/t/test_resnet_digits32.safetensors",
                          "teacher.train_if_missing=false", "student.name=lenet5_half", "seed=0"]
    with pytest.raises(ValueError, match="unknown pair 'nope'"):
        pairs.select(["nope"], "mnist")


def test_gen_classes_are_read_from_the_training_records_after_the_first_evaluation(pairs, tmp_path):
    records = [{"update": 25, "gen_classes": 3.0}, {"update": 25, "test_acc": 10.0},
               {"update": 50, "gen_classes": 7.0}, {"update": 50, "test_acc": 20.0}, {"update": 75, "gen_classes": 9.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    assert pairs.gen_classes(tmp_path) == [7.0, 9.0]
    assert pairs.gen_classes(tmp_path / "absent") == []


def results_file(path, dataset, command, runs, base=("recipe=default",)):
    path.write_text(json.dumps({"dataset": dataset, "command": command, "machine": {"date": command}, "base": list(base),
                                "runs": [{"pair": pair, "seed": seed, "summary": {"teacher_acc": teacher}}
                                         for pair, seed, teacher in runs]}))
    return path


def test_merge_reads_each_pair_and_seed_once(pairs, tmp_path):
    a = results_file(tmp_path / "a.json", "mnist", "run a", [("resnet", 0, 99.31), ("lenet", 0, 98.82)])
    b = results_file(tmp_path / "b.json", "mnist", "run b", [("resnet", 2, 99.31)])

    runs, sources, first = pairs.merged_runs([b, a], "mnist")
    assert [(r["pair"], r["seed"]) for r in runs] == [("lenet", 0), ("resnet", 0), ("resnet", 2)]
    assert sources == [{"command": "run b", "machine": {"date": "run b"}},
                       {"command": "run a", "machine": {"date": "run a"}}]
    assert first["command"] == "run b"

    with pytest.raises(ValueError, match="resnet seed 0 is in .*a.json and in .*again.json"):
        pairs.merged_runs([a, results_file(tmp_path / "again.json", "mnist", "c", [("resnet", 0, 99.31)])], "mnist")
    with pytest.raises(ValueError, match="ran with 'recipe=default student_updates=50'.*merge only runs of one base"):
        pairs.merged_runs([a, results_file(tmp_path / "short.json", "mnist", "c", [("resnet", 1, 99.31)],
                                           base=("recipe=default", "student_updates=50"))], "mnist")
    with pytest.raises(ValueError, match="holds digits runs, not mnist"):
        pairs.merged_runs([results_file(tmp_path / "d.json", "digits", "c", [])], "mnist")


def test_a_merged_file_keeps_the_command_and_machine_of_every_file_it_merged(pairs, tmp_path, one_thread):
    def invocation(name, command, seed, load):
        summary = {"teacher_acc": 99.0, "student_final_acc": 96.0, "student_best_acc": 96.1, "train_seconds": 9.0}
        machine = {"cpu": "c", "cores": "2", "torch": "t", "load": load, "date": command}
        path = tmp_path / f"pairs_{name}.json"
        path.write_text(json.dumps({"dataset": "mnist", "command": command, "machine": machine, "teacher_epochs": 2,
                                    "base": ["recipe=default"], "runs": [{"pair": "resnet", "seed": seed,
                                                                          "gen_classes": [9.0], "summary": summary}]}))
        return path, machine

    (a, machine_a), (b, machine_b) = invocation("x_s0", "run a", 0, "0.5"), invocation("x_s1", "run b", 1, "1.5")
    assert pairs.main(["--name", "x", "--merge", str(a), str(b), "--results", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "pairs_x.json").read_text())
    assert (merged["commands"], merged["machines"]) == (["run a", "run b"], [machine_a, machine_b])
    assert [(r["pair"], r["seed"]) for r in merged["runs"]] == [("resnet", 0), ("resnet", 1)]
    a.unlink()
    b.unlink()  # the merged file alone: merged again, it gives the same runs, commands and machines
    assert pairs.main(["--name", "y", "--merge", str(tmp_path / "pairs_x.json"), "--results", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "pairs_y.json").read_text())
    assert [again[k] for k in ("runs", "commands", "machines")] == [merged[k] for k in ("runs", "commands", "machines")]


def test_each_run_is_compared_with_its_own_teacher(pairs, one_thread):
    runs = [{"seed": seed, "gen_classes": [9.0], "summary": {"teacher_acc": t, "student_final_acc": f,
                                                             "student_best_acc": b, "train_seconds": 1.0}}
            for seed, t, f, b in [(0, 99.0, 94.0, 94.1), (1, 98.0, 93.5, 94.0)]]

    row = pairs.summarise("resnet", runs)
    assert row["teacher_acc"] == [99.0, 98.0]
    assert row["final_of_teacher"] == pytest.approx((94.0 / 99.0 + 93.5 / 98.0) / 2)
    assert (row["of_teacher_met"], row["near_best_met"]) == (1, 1)  # 94.0 < 0.95 * 99; 93.5 is 0.5 under its best
