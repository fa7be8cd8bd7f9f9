"""Runs without labelled data: fidelity on held-out generated images, agreement on an unlabelled folder, and the
checkpoint kept by fidelity. Evaluation only observes: with or without labels the student is the same, bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PLAIN
from PIL import Image

from dfkd import fidelity
from dfkd.config import load_config
from dfkd.contract import resolve
from dfkd.fidelity import better, make_probe, probe_pixels
from dfkd.teacher import build_teacher
from dfkd.trainer import distill
from dfkd.weights import create_model, load_weights

pytestmark = pytest.mark.usefixtures("mnist_teacher", "one_thread")
TINY = ["student_updates=20", "eval_every=5", "batch_size=32", "checkpoint_every=0", "logger=none"]


def run(tmp_path: Path, name: str, *keys: str) -> dict:
    return distill(load_config([*PLAIN, *TINY, f"out_dir={tmp_path}", f"run_name={name}", *keys]))


def evaluations(run_dir: str) -> list:
    with open(Path(run_dir) / "metrics.jsonl") as lines:
        return [r for r in map(json.loads, lines) if "fidelity_agree" in r]


def test_no_data_run_reports_fidelity_and_no_accuracy(tmp_path):
    summary = run(tmp_path, "none", "data.dataset=none")
    assert summary["data"] == "none"
    assert 0 <= summary["student_final_fidelity"] <= summary["student_best_fidelity"] <= 100
    assert summary["student_final_fidelity_kl"] >= 0 and summary["fidelity_images"] == 2000  # data.fidelity_images
    assert not [k for k in summary if k.endswith("_acc") and k != "teacher_card_acc"], summary  # none pretended
    records = evaluations(summary["run_dir"])
    assert [r["update"] for r in records] == [5, 10, 15, 20] and not any("test_acc" in r for r in records)
    assert (Path(summary["run_dir"]) / "student_best.safetensors").is_file()


def test_labelled_and_unlabelled_runs_train_the_same_student_bit_for_bit(tmp_path):
    labelled, none = run(tmp_path, "labelled"), run(tmp_path, "none", "data.dataset=none")
    assert "student_final_acc" in labelled and "student_final_acc" not in none
    for file in ("student.safetensors", "student_best.safetensors", "generator.safetensors"):
        assert (Path(labelled["run_dir"]) / file).read_bytes() == (Path(none["run_dir"]) / file).read_bytes(), file
    assert labelled["student_final_fidelity"] == none["student_final_fidelity"]


def test_the_kept_student_is_the_evaluation_that_agrees_most(tmp_path):
    summary = run(tmp_path, "best", "data.dataset=none", "student_updates=40")
    records = evaluations(summary["run_dir"])
    best = records[0]
    for r in records[1:]:
        best = r if better(r["fidelity_agree"], r["fidelity_kl"], best["fidelity_agree"], best["fidelity_kl"]) else best
    assert summary["best_at_update"] == best["update"]
    assert summary["student_best_fidelity"] == best["fidelity_agree"]
    cfg = load_config([*PLAIN, "data.dataset=none"])  # the kept weights, measured again on the same images
    resolve(cfg)
    teacher = build_teacher(cfg)
    probe = make_probe(cfg, *probe_pixels(cfg, teacher, "cpu"), teacher, "cpu")
    student = create_model(cfg.student.name, cfg.data.num_classes)
    load_weights(student, str(Path(summary["run_dir"]) / "student_best.safetensors"), what="student")
    agree, kl = fidelity.fidelity(student, probe, "cpu")
    assert agree == best["fidelity_agree"] and kl == pytest.approx(best["fidelity_kl"], rel=1e-5)


def test_checkpoint_rule_prefers_agreement_then_lower_kl():
    assert better(50.0, 0.9, 40.0, 0.1)  # more agreement wins whatever the KL
    assert not better(40.0, 0.01, 50.0, 0.9)
    assert better(50.0, 0.1, 50.0, 0.2) and not better(50.0, 0.2, 50.0, 0.1)  # a tie goes to the lower KL
    assert not better(50.0, 0.2, 50.0, 0.2)  # an equal evaluation keeps the earlier one


def test_fidelity_images_are_made_once_and_reused(tmp_path, monkeypatch):
    cfg = load_config([*PLAIN, "data.fidelity_steps=3"])
    resolve(cfg)
    teacher = build_teacher(cfg)
    monkeypatch.setattr(fidelity, "CACHE_DIR", tmp_path)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first, key = probe_pixels(cfg, teacher, "cpu", print_fn=lambda _: None)
    assert torch.equal(torch.get_rng_state(), before)  # the run's random stream is untouched
    assert list(tmp_path.glob("*.pt")) == [tmp_path / f"{key}.pt"]
    monkeypatch.setattr(fidelity, "train_probe_generator", lambda *a: pytest.fail("made again, not read"))
    again, _ = probe_pixels(cfg, teacher, "cpu")
    assert torch.equal(first, again) and first.dtype == torch.uint8 and first.shape[1:] == (1, 32, 32)


def write_pngs(folder: Path, labels=None, count: int = 40) -> Path:
    """The first ``count`` real MNIST test images (of ``labels`` only, if given) as PNGs in one flat folder."""
    from torchvision.datasets import MNIST

    test = MNIST(str(Path("~/.cache/dfkd/data").expanduser()), train=False)
    keep = [i for i in range(len(test.targets)) if labels is None or int(test.targets[i]) in labels][:count]
    folder.mkdir()
    for i in keep:
        Image.fromarray(test.data[i].numpy()).save(folder / f"{i:05d}.png")
    return folder


def test_unlabelled_folder_reports_agreement_with_the_teacher(tmp_path):
    folder = write_pngs(tmp_path / "images")
    summary = distill(load_config([*PLAIN, *TINY, f"data.root={folder}", f"out_dir={tmp_path}", "run_name=u"]))
    assert summary["data"] == "unlabelled" and summary["teacher_warning"] is None
    assert 0 <= summary["student_final_real_agree"] <= 100 and "student_final_fidelity" in summary
    assert "teacher_acc" not in summary and "student_final_acc" not in summary
    assert all("real_agree" in r for r in evaluations(summary["run_dir"]))


def test_int8_export_of_an_unlabelled_run_claims_no_test_accuracy(tmp_path):
    """Its folder's labels are the teacher's own predictions-to-be (-1 on disk): no accuracy can be counted on them."""
    pytest.importorskip("onnxruntime.quantization", reason="int8 export needs onnxruntime's quantization tools")
    from dfkd.artifacts import export

    folder = write_pngs(tmp_path / "images")
    summary = distill(load_config([*PLAIN, *TINY, f"data.root={folder}", f"out_dir={tmp_path}", "run_name=u"]))
    out = export(summary["run_dir"], ["onnx_int8"], tmp_path / "export")
    card = json.loads((out / "student.json").read_text())
    assert card["files"]["onnx_int8"] == "student.int8.onnx" and "agreement" in card["int8"]
    assert "test_acc" not in card["int8"], card["int8"].get("test_acc")


def test_unlabelled_folder_of_one_class_warns_that_the_pipeline_may_be_wrong(tmp_path, capsys):
    folder = write_pngs(tmp_path / "ones", labels={1}, count=20)
    summary = distill(load_config([*PLAIN, *TINY, "student_updates=5", f"data.root={folder}", f"out_dir={tmp_path}"]))
    assert "collapse onto one or two classes" in summary["teacher_warning"]
    assert "collapse onto one or two classes" in capsys.readouterr().out
