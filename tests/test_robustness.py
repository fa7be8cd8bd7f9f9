"""benchmarks/robustness.py without training: its teachers, its job order, and how it judges the targets."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def robustness():
    return load_script("benchmarks/robustness.py")


def test_six_teacher_families_build_at_one_channel_32x32(robustness, one_thread):
    assert len(robustness.TEACHERS) == 6 and len(robustness.PAIRS) == 12
    for name, (_, kwargs) in robustness.TEACHERS.items():
        model = robustness.create_model(name, 10, in_chans=1, **kwargs).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10), name
    assert robustness.params("lenet5_wide", {}) >= 1_000_000, "the wide teacher has at least 1M parameters"


def run(kind: str, seed: int, final: float, best: float, teacher: float = 90.0, coverage=(9.5,)) -> dict:
    return {"kind": kind, "seed": seed, "gen_classes": list(coverage), "summary": {
        "teacher_acc": teacher, "student_final_acc": final, "student_best_acc": best, "train_seconds": 1.0}}


def test_targets_name_every_miss_with_its_margin(robustness, one_thread):
    runs = [run("data_free", 0, 86.0, 86.2), run("data_free", 1, 70.0, 71.0, coverage=(8.0,)),
            run("real_data", 0, 88.0, 88.0), run("real_data", 1, 88.0, 88.0)]
    row = robustness.summarise("lenet", runs)
    assert row["real_kd_mean"] == 88.0 and row["gap_to_real"] == pytest.approx(10.0)
    assert row["failures"] == 1, "70 % of a 90 % teacher is below 80 % of it"
    assert row["far_from_best"] == 1, "final 70.0 against best 71.0: more than 0.5 points"
    verdict = robustness.targets(row)
    assert "10.00 points under real-data KD" in verdict and "1 run(s) < 80% of teacher" in verdict
    assert "gen_classes 8.75 < 9" in verdict


def test_a_pair_that_meets_every_target_says_so(robustness, one_thread):
    runs = [run("data_free", s, 87.0, 87.1) for s in range(3)] + [run("real_data", 0, 88.0, 88.0)]
    assert robustness.targets(robustness.summarise("resnet", runs)) == "all met"


def test_a_pair_whose_runs_all_failed_is_reported_not_dropped(robustness, one_thread):
    row = robustness.summarise("vit", [{"kind": "data_free", "seed": 0, "error": "exit code 2", "gen_classes": []}])
    assert robustness.targets(row) == "did not finish" and row["errors"] == ["data_free s0: exit code 2"]


def test_a_finished_run_is_read_not_rerun(robustness, tmp_path, monkeypatch, one_thread):
    """Running the benchmark again trains only the runs without a summary.json: a stopped benchmark goes on."""
    import json

    summary = {"teacher_acc": 88.0, "student_final_acc": 70.0, "student_best_acc": 70.0, "train_seconds": 1.0}
    done = tmp_path / "runs" / "robustness-again" / "lenet-data_free-s0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps(summary))
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    Path(robustness.teacher_file(str(teachers), "lenet5", "fashion_mnist")).touch()  # present: nothing trained
    trained = []

    def run_variant(name, base, overrides, out, threads):
        trained.append(name)
        return {"label": name, "overrides": overrides, "evaluations": [], "summary": dict(summary)}

    monkeypatch.setattr(robustness, "REPO", tmp_path)
    monkeypatch.setattr(robustness, "run_variant", run_variant)
    robustness.main(["--name", "again", "--pairs", "lenet", "--seeds", "0", "1", "--real-seeds",
                     "--teachers", str(teachers), "--results", str(tmp_path / "results")])
    assert trained == ["lenet-data_free-s1"], "seed 0 had finished; only seed 1 is trained"
    assert (tmp_path / "results" / "robustness_again.md").is_file()
