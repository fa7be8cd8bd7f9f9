"""``dfkd export`` / ``dfkd evaluate`` on a short real distillation run (MNIST, LeNet-5 -> LeNet-5-half).

Every exported format is reloaded the way a user would and must give the in-memory student's
predictions on real MNIST test images. SUBSET: the first 2,000 of the 10,000 test images, to keep
the suite fast on two cores; the in-memory student is also checked against the trainer's own
accuracy on the full split. Failures must be one line, exit 2, and leave no files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from dfkd import accuracy as dfkd_evaluate
from dfkd import artifacts as ex
from dfkd.cli import main as cli
from dfkd.weights import create_model, load_weights

SUBSET = 2000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A short real run (4 student updates) that exports itself at the end (export=true)."""
    from dfkd.commands import distill_command as distill

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread is faster and steadier for these tiny nets
    out = tmp_path_factory.mktemp("runs")
    assert distill(["scheme=one_stage", "student_updates=4", "eval_every=2", "batch_size=16", "generator.ngf=8", "logger=none",
                    f"out_dir={out}", "run_name=short", "export=true"]) == 0
    yield out / "short"
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(run_dir):
    """The in-memory student and teacher, fed by dfkd's own (normalizing) test pipeline, plus raw images."""
    cfg, summary = ex.read_run(run_dir)
    student = create_model("lenet5_half", 10)
    load_weights(student, str(run_dir / "student_best.safetensors"), what="student")
    teacher = create_model("lenet5", 10)
    load_weights(teacher, cfg.teacher.checkpoint)
    normalized = dfkd_evaluate.evaluation_loader(cfg.data).dataset.tensors
    raw = dfkd_evaluate.evaluation_loader(cfg.data, normalize=False).dataset.tensors[0][:SUBSET]
    with torch.no_grad():
        full_acc = 100.0 * (student.eval()(normalized[0]).argmax(1) == normalized[1]).float().mean().item()
        logits = student(normalized[0][:SUBSET])
        teacher_preds = teacher.eval()(normalized[0][:SUBSET]).argmax(1)
    return dict(summary=summary, student=student, normalized=normalized[0][:SUBSET], labels=normalized[1][:SUBSET],
                raw=raw, logits=logits, full_acc=full_acc, teacher_preds=teacher_preds)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (preds == labels).float().mean().item()


def test_in_memory_student_is_the_one_the_trainer_measured(run_dir, reference):
    assert reference["full_acc"] == pytest.approx(reference["summary"]["student_best_acc"], abs=1e-6)


def test_export_true_writes_every_format_and_a_card(run_dir, reference):
    out = run_dir / "export"
    from dfkd.quantize import has_quantization

    int8 = ["student.int8.onnx"] if has_quantization() else []  # as dfkd export RUN_DIR: int8 where it can be made
    assert sorted(p.name for p in out.iterdir()) == sorted(["student.json", "student.onnx", "student.safetensors",
                                                            "student.torchscript.pt", *int8])
    assert not [p for p in run_dir.iterdir() if ".partial" in p.name]
    card = json.loads((out / "student.json").read_text())
    params = sum(p.numel() for p in reference["student"].parameters())
    assert (card["architecture"], card["num_classes"], card["input_size"]) == ("lenet5_half", 10, [1, 32, 32])
    assert (card["mean"], card["std"]) == ([0.1307], [0.3081])
    assert card["teacher"]["name"] == "lenet5" and card["teacher"]["test_acc"] == reference["summary"]["teacher_acc"]
    assert card["student_best_acc"] == reference["summary"]["student_best_acc"]
    assert (card["params"], card["compression_ratio"]) == (params, round(card["teacher"]["params"] / params, 2))
    assert card["scheme"] == "one_stage" and card["recipe"] == "default" and card["opset"] == ex.OPSET
    assert card["size_mb"] == round((run_dir / "student_best.safetensors").stat().st_size / 1e6, 4)
    for fmt in ex.FILES:
        assert card["parity"][fmt]["top1_agreement"] == 1.0
        assert card["parity"][fmt]["max_abs_logit_diff"] <= ex.ATOL


@pytest.mark.parametrize("fmt", list(ex.FILES))
def test_every_format_reloads_with_the_in_memory_students_accuracy(run_dir, reference, fmt):
    card = json.loads((run_dir / "export" / "student.json").read_text())
    predict = ex.reload(fmt, run_dir / "export" / ex.FILES[fmt], card)
    logits = predict(reference["raw"])  # raw 0-1 images: normalization must be inside (or, for safetensors, ours)
    assert torch.equal(logits.argmax(1), reference["logits"].argmax(1))
    assert accuracy(logits.argmax(1), reference["labels"]) == accuracy(reference["logits"].argmax(1),
                                                                        reference["labels"])
    torch.testing.assert_close(logits, reference["logits"], atol=ex.ATOL, rtol=ex.RTOL)
    for batch in (1, 64):  # the batch axis is dynamic
        torch.testing.assert_close(predict(reference["raw"][:batch]), logits[:batch], atol=ex.ATOL, rtol=ex.RTOL)


def test_safetensors_loads_with_the_documented_timm_call_and_identical_logits(run_dir, reference):
    import dfkd.models  # noqa: F401  (registers lenet5_half in timm)

    path = run_dir / "export" / "student.safetensors"
    card = json.loads((run_dir / "export" / "student.json").read_text())
    assert 'timm.create_model("lenet5_half", num_classes=10, in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(' \
           'file="student.safetensors", num_classes=10))' in card["timm_load"]
    model = timm.create_model("lenet5_half", num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    with torch.no_grad():
        assert torch.equal(model(reference["normalized"]), reference["logits"])


def test_cli_export_final_into_out_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "final"
    assert cli(["export", str(run_dir), "--which", "final", "--format", "onnx", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["student.json", "student.onnx"]
    card = json.loads((out / "student.json").read_text())
    assert card["exported"] == "final" and card["weights"].endswith("/student.safetensors")
    assert "parity ok" in capsys.readouterr().out


def assert_one_line_error(capsys, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dfkd: error: "), err
    for word in words:
        assert word in err, err


def test_run_dir_without_checkpoint_is_one_line_and_leaves_no_files(run_dir, tmp_path, capsys):
    empty = tmp_path / "unfinished"
    empty.mkdir()
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    assert cli(["export", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "student_best.safetensors", "--which final")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "unfinished"]


def test_unsupported_format_is_one_line_and_leaves_no_files(run_dir, tmp_path, capsys):
    assert cli(["export", str(run_dir), "--format", "torchscript,tflite", "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "'tflite'", "safetensors, torchscript, onnx")
    assert list(tmp_path.iterdir()) == []


def test_architecture_that_cannot_export_is_one_line_and_leaves_no_files(run_dir, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy_op' to ONNX opset version 17 is not supported.")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert cli(["export", str(run_dir), "--format", "torchscript,onnx", "--out", str(tmp_path / "new" / "out")]) == 2
    assert_one_line_error(capsys, "cannot export lenet5_half to onnx", "aten::fancy_op")
    assert list(tmp_path.iterdir()) == []  # the torchscript file, written first, went with the temp dir


def test_failed_parity_check_is_an_error_and_leaves_no_files(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ex, "ATOL", -1.0)  # no logits can be that close: the check must fail
    assert cli(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "safetensors parity check failed", "nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_compares_teacher_and_student_on_the_real_test_split(run_dir, reference, tmp_path, capsys):
    table_file = tmp_path / "table.md"
    assert cli(["evaluate", str(run_dir / "export" / "student.onnx"), "--limit", str(SUBSET), "--seconds", "0.1",
                "--out", str(table_file)]) == 0
    printed = capsys.readouterr().out
    assert table_file.read_text() == printed and f"({SUBSET:,} images, a subset), onnx format" in printed
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")] for line in printed.splitlines()
                                          if line.startswith("| teacher") or line.startswith("| student"))}
    assert rows["teacher"][2:4] == ["lenet5", "61,706"] and rows["student"][2:4] == ["lenet5_half", "15,738"]
    assert float(rows["student"][7]) == pytest.approx(accuracy(reference["logits"].argmax(1), reference["labels"]))
    assert float(rows["teacher"][7]) == pytest.approx(accuracy(reference["teacher_preds"], reference["labels"]))
    assert all(float(rows[r][c]) > 0 for r in rows for c in (4, 5, 6))  # MB, ms at batch 1 and 64


def test_evaluate_an_unknown_artifact_is_one_line(tmp_path, capsys):
    (tmp_path / "model.h5").write_text("x")
    assert cli(["evaluate", str(tmp_path / "model.h5")]) == 2
    assert_one_line_error(capsys, "model.h5", "not a dfkd artifact")


def test_export_to_an_unwritable_place_is_one_line_and_leaves_no_files(run_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a directory\n")
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "a_file" / "out")]) == 2
    assert_one_line_error(capsys, "cannot write the export to", "a file", "--out WRITABLE_DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("fmt, damage", [("onnx", "garbage"), ("torchscript", "garbage"), ("safetensors", "truncate")])
def test_evaluate_a_damaged_artifact_is_one_line(run_dir, tmp_path, capsys, fmt, damage):
    shutil.copy(run_dir / "export" / "student.json", tmp_path / "student.json")
    data = (run_dir / "export" / FILES_BY_FORMAT[fmt]).read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncate" else bytes(reversed(data))
    (tmp_path / FILES_BY_FORMAT[fmt]).write_bytes(damaged)
    assert cli(["evaluate", str(tmp_path / FILES_BY_FORMAT[fmt]), "--limit", "64", "--seconds", "0.1"]) == 2
    assert_one_line_error(capsys, f"cannot load '{tmp_path / FILES_BY_FORMAT[fmt]}' as {fmt}", "re-export it")


FILES_BY_FORMAT = ex.FILES


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc and /sys")
@pytest.mark.parametrize("out", ["/proc/x", "/sys/x"])
def test_export_where_even_root_cannot_write_is_one_line(run_dir, capsys, out):
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", out]) == 2
    assert_one_line_error(capsys, f"cannot write the export to '{out}'", "is not writable", "--out WRITABLE_DIR")
    assert not Path(out).exists() and not list(Path(out).parent.glob(".x.partial-*"))


def copy_run(run_dir: Path, to: Path, checkpoint: bool = True) -> Path:
    """The files of the run that export reads; a checkpoint's config.yaml and marker, without its weights."""
    to.mkdir()
    for name in ("config.yaml", "summary.json", "student_best.safetensors"):
        shutil.copy(run_dir / name, to / name)
    if checkpoint:
        saved = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
        (to / "checkpoints" / saved.name).mkdir(parents=True)
        for name in ("config.yaml", "complete"):
            shutil.copy(saved / name, to / "checkpoints" / saved.name / name)
    return to


@pytest.mark.parametrize("out", ["{RUN}", "{RUN}/checkpoints/{STEP}", "{OTHER}"])
def test_export_into_a_run_directory_is_refused_and_overwrites_nothing(run_dir, tmp_path, capsys, out):
    run = copy_run(run_dir, tmp_path / "run")
    other = copy_run(run_dir, tmp_path / "other", checkpoint=False)
    step = next((run / "checkpoints").iterdir()).name
    out = out.format(RUN=run, STEP=step, OTHER=other)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli(["export", str(run), "--format", "safetensors", "--out", out]) == 2
    assert_one_line_error(capsys, f"cannot export into '{out}': it holds a dfkd run", "--out NEW_DIR")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_export_into_a_previous_export_folder_overwrites_it(run_dir, tmp_path, capsys):
    previous = tmp_path / "previous"
    shutil.copytree(run_dir / "export", previous)
    (previous / "student.json").write_text("{}")
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(previous)]) == 0
    assert json.loads((previous / "student.json").read_text())["files"] == {"onnx": "student.onnx"}


def test_export_uses_the_config_the_student_was_trained_with_and_says_so(run_dir, tmp_path, capsys):
    edited = copy_run(run_dir, tmp_path / "run")
    config = (edited / "config.yaml").read_text()
    assert "- 0.1307\n" in config and "- 0.3081\n" in config
    (edited / "config.yaml").write_text(config.replace("- 0.1307\n", "- 0.5\n").replace("- 0.3081\n", "- 0.25\n"))
    assert cli(["export", str(edited), "--format", "onnx", "--out", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "data.mean: [0.1307] -> [0.5]; data.std: [0.3081] -> [0.25]" in warnings[0]
    card = json.loads((tmp_path / "out" / "student.json").read_text())
    assert (card["mean"], card["std"], card["data"]["mean"]) == ([0.1307], [0.3081], [0.1307])
    # without a checkpoint's copy, config.yaml is all there is: used as it is, without a warning
    shutil.rmtree(edited / "checkpoints")
    assert cli(["export", str(edited), "--format", "onnx", "--out", str(tmp_path / "out2")]) == 0
    assert "warning" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out2" / "student.json").read_text())["mean"] == [0.5]


@pytest.mark.parametrize("card, words", [
    ("{not json", ["is unreadable (Expecting property name"]),
    ("{}", ["is incomplete: it has no 'architecture'"]),
    ("[]", ["is incomplete: it has no 'architecture'"]),
    ("no teacher name", ["is incomplete: it has no 'teacher.name'"]),
])
def test_evaluate_with_a_damaged_card_is_one_line(run_dir, tmp_path, capsys, card, words):
    if card == "no teacher name":
        full = json.loads((run_dir / "export" / "student.json").read_text())
        del full["teacher"]["name"]
        card = json.dumps(full)
    (tmp_path / "student.json").write_text(card)
    shutil.copy(run_dir / "export" / "student.onnx", tmp_path / "student.onnx")
    assert cli(["evaluate", str(tmp_path / "student.onnx"), "--limit", "64", "--seconds", "0.1"]) == 2
    assert_one_line_error(capsys, f"student card '{tmp_path / 'student.json'}'", *words,
                          "re-export the student with dfkd export RUN_DIR")


@pytest.mark.parametrize("option, value", [("--limit", "0"), ("--limit", "-5"), ("--threads", "0"),
                                           ("--threads", "-1")])
def test_evaluate_refuses_a_count_below_one(run_dir, capsys, option, value):
    threads = torch.get_num_threads()
    assert cli(["evaluate", str(run_dir / "export" / "student.onnx"), option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"dfkd: error: {option} must be >= 1, got {value}; leave it out for " + (
        "the whole test split\n" if option == "--limit" else "torch's default\n")
    assert torch.get_num_threads() == threads
