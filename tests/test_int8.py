"""``dfkd export --format onnx_int8`` and ``dfkd evaluate`` on the int8 file, on a short real run (MNIST, LeNet-5 ->
LeNet-5-half, 20 student updates): onnxruntime's static int8, calibrated on the run's own generated images (or its
pool, real training images, noise), kept only above its agreement floor; bad input is one line, exit 2, no files.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dfkd import quantize
from dfkd.accuracy import real_batches
from dfkd.artifacts import read_run
from dfkd.cli import main as cli
from dfkd.data import tensor_dataset
from dfkd.errors import DfkdError
from dfkd.formats import reload

onnx = pytest.importorskip("onnx", reason="int8 export needs onnx and onnxruntime's quantization tools")
pytest.importorskip("onnxruntime.quantization", reason="int8 export needs onnxruntime's quantization tools")

SUBSET = 2000  # test images dfkd evaluate counts here


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A short real run (20 student updates, one_stage with the default recipe's replay pool)."""
    from dfkd.commands import distill_command as distill

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread is faster and steadier for these tiny nets
    out = tmp_path_factory.mktemp("runs")
    assert distill(["scheme=one_stage", "student_updates=20", "eval_every=10", "batch_size=16", "generator.ngf=8",
                    "logger=none", f"out_dir={out}", "run_name=short"]) == 0
    yield out / "short"
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "int8"
    assert cli(["export", str(run_dir), "--format", "onnx,onnx_int8", "--out", str(out)]) == 0
    return out


def card_of(folder: Path) -> dict:
    return json.loads((folder / "student.json").read_text())


def assert_one_line_error(capsys, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dfkd: error: "), err
    for word in words:
        assert word in err, err


def test_int8_export_is_a_qdq_int8_file_that_agrees_with_fp32_as_its_card_says(run_dir, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["student.int8.onnx", "student.json", "student.onnx"]
    card = card_of(exported)
    q = card["int8"]
    assert card["files"] == {"onnx": "student.onnx", "onnx_int8": "student.int8.onnx"}
    assert q["calibration"] == {"source": "generator", "images": 512, "method": "MinMax", "seed": 0}
    model = onnx.load(str(exported / "student.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 5  # 3 convolutions and 2 linear layers, per-channel scales below
    scales = {t.name: t for t in model.graph.initializer}
    assert any(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[1] in scales)
    assert q["size_mb"] == round((exported / "student.int8.onnx").stat().st_size / 1e6, 4) < q["fp32_size_mb"] / 2
    # the recorded agreement is the one on held-out generated images (seed 1), recomputed here
    cfg, _ = read_run(run_dir)
    held_out = quantize.generated_images(cfg, run_dir, quantize.HELD_OUT, quantize.HELD_OUT_SEED)
    fp32, int8 = (reload("onnx", exported / name, card) for name in ("student.onnx", "student.int8.onnx"))
    logits = fp32(held_out)
    same = logits.argmax(1) == int8(held_out).argmax(1)
    probs = logits.softmax(1).sort(1, descending=True).values
    decided = probs[:, 0] - probs[:, 1] >= 0.5
    counted = same[decided] if decided.sum() >= 100 else same  # a barely trained student decides few
    assert q["agreement"]["top1_agreement"] == pytest.approx(100 * counted.float().mean().item(), abs=1e-3)
    assert q["agreement"]["top1_agreement_all"] == pytest.approx(100 * same.float().mean().item(), abs=1e-3)
    assert (q["agreement"]["decided_images"], q["agreement"]["counted_images"]) == (int(decided.sum()), len(counted))
    assert q["agreement"]["floor"] == 97.0 and q["agreement"]["images"] == 1024
    # the fp32 file's test accuracy is the trainer's, on the full split
    assert q["test_acc"]["fp32"] == pytest.approx(card["student_best_acc"], abs=1e-3)
    assert 0 <= q["test_acc"]["int8"] <= 100


def test_held_out_images_are_other_draws_than_the_calibration_images(run_dir):
    cfg, _ = read_run(run_dir)
    calibration = quantize.calibration_images(cfg, run_dir, "generator", 64)
    again = quantize.generated_images(cfg, run_dir, 64, quantize.CALIBRATION_SEED)
    held_out = quantize.generated_images(cfg, run_dir, 64, quantize.HELD_OUT_SEED)
    assert torch.equal(calibration, again)  # deterministic
    assert not torch.isclose(calibration, held_out).all(dim=(1, 2, 3)).any()  # no image shared
    assert calibration.min() >= 0 and calibration.max() <= 1  # generator.output=pixels: raw 0-1 pixels


@pytest.mark.parametrize("source", quantize.SOURCES)
def test_each_calibration_source_gives_raw_images_of_its_kind(run_dir, source):
    cfg, _ = read_run(run_dir)
    images = quantize.calibration_images(cfg, run_dir, source, 24)
    assert images.shape == (24, 1, 32, 32) and images.dtype == torch.float32
    if source == "pool":  # the checkpoint's pool images, un-normalised
        saved = sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "dfkd_state_0.pt"
        pool = torch.load(saved, weights_only=True)["pool"]["images"] * 0.3081 + 0.1307
        assert len(pool) == 32  # 2 cycles of 16: the request for 24 is served from it
        assert all(torch.isclose(pool, x).all(dim=(1, 2, 3)).any() for x in images)
    elif source == "real":  # training split images, not test images
        train = tensor_dataset(cfg.data, train=True, normalize=False).tensors[0]
        assert all(torch.equal(train[i], x) for i, x in zip(torch.cdist(images.flatten(1), train.flatten(1))
                                                           .argmin(1), images))
    elif source == "noise":
        assert images.min() >= 0 and images.max() <= 1 and abs(images.mean().item() - 0.5) < 0.01
    else:
        assert torch.equal(images, quantize.generated_images(cfg, run_dir, 24, quantize.CALIBRATION_SEED))


@pytest.mark.parametrize("source, method", [("pool", "MinMax"), ("real", "Entropy"), ("noise", "Percentile")])
def test_export_calibrates_as_asked_and_says_so(run_dir, tmp_path, capsys, source, method):
    out = tmp_path / "out"
    assert cli(["export", str(run_dir), "--format", "onnx_int8", "--out", str(out), "--calibration", source,
                "--calibration-images", "64", "--calibration-method", method, "--agreement-floor", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["student.int8.onnx", "student.json"]  # no fp32 file asked
    q = card_of(out)["int8"]
    assert q["calibration"] == {"source": source, "images": 32 if source == "pool" else 64, "method": method,
                                "seed": 0}
    assert f"calibrated on {q['calibration']['images']} {source} images, {method}" in capsys.readouterr().out


def test_default_export_includes_int8_where_onnxruntime_can_quantize(run_dir, tmp_path, monkeypatch):
    assert cli(["export", str(run_dir), "--out", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "student.int8.onnx", "student.json", "student.onnx", "student.safetensors", "student.torchscript.pt"]
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # an onnxruntime without the tools
    assert cli(["export", str(run_dir), "--out", str(tmp_path / "fp32")]) == 0
    assert "student.int8.onnx" not in {p.name for p in (tmp_path / "fp32").iterdir()}


def test_int8_below_the_agreement_floor_is_refused_and_leaves_no_files(run_dir, tmp_path, capsys, monkeypatch):
    measured = {"top1_agreement": 96.5, "counted_images": 400, "decided_images": 400, "top1_agreement_all": 90.0}
    monkeypatch.setattr(quantize, "agreement", lambda fp32, int8, images: measured)
    assert cli(["export", str(run_dir), "--format", "onnx,onnx_int8", "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "the int8 student agrees with the fp32 one on 96.50% of the 400 held-out generated "
                          "images counted", "below the floor of 97%", "nothing was written", "--calibration-method")
    assert list(tmp_path.iterdir()) == []
    assert cli(["export", str(run_dir), "--format", "onnx_int8", "--out", str(tmp_path / "out"),
                "--agreement-floor", "96"]) == 0  # a lower floor, stated, lets the same file through
    assert card_of(tmp_path / "out")["int8"]["agreement"] == {**measured, "floor": 96.0, "images": 1024,
                                                              "decided_margin": 0.5, "on": "generated images, seed 1"}


def test_agreement_is_counted_on_the_images_the_fp32_model_decides():
    images = torch.arange(200.0)
    decisive = torch.where(images < 150, 10.0, 0.01)  # the first 150: a wide margin; the rest near-ties
    fp32 = torch.stack([decisive, torch.zeros(200)], 1)  # class 0 everywhere
    flipped = torch.isin(images, torch.tensor([0.0, 1.0, 2.0, *range(150, 170)]))  # 3 decided, 20 near-ties
    int8 = torch.stack([decisive, torch.where(flipped, 20.0, 0.0)], 1)
    by_index = {"fp32": fp32, "int8": int8}

    def model(name):
        return lambda x: by_index[name][x.long()]

    assert quantize.agreement(model("fp32"), model("int8"), images) == {
        "top1_agreement": 100 * 147 / 150, "counted_images": 150, "decided_images": 150,
        "top1_agreement_all": 100 * 177 / 200}
    few = images[140:]  # 10 decided images, fewer than MIN_DECIDED: all 60 are counted
    assert quantize.agreement(model("fp32"), model("int8"), few) == {
        "top1_agreement": round(100 * 40 / 60, 3), "counted_images": 60, "decided_images": 10,
        "top1_agreement_all": round(100 * 40 / 60, 3)}


def copy_run(run_dir: Path, to: Path, generator: bool = True) -> Path:
    """The run's files without its checkpoints (so without its pool), and without its generator if asked."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("checkpoints", "export",
                                                               *([] if generator else ["generator.safetensors"])))
    return to


@pytest.mark.parametrize("args, words", [
    (["--calibration", "images"], ["unknown calibration 'images'; choose from generator, pool, real, noise"]),
    (["--calibration-method", "Histogram"], ["unknown calibration method 'Histogram'; choose from MinMax, Entropy"]),
    (["--calibration-images", "0"], ["--calibration-images must be >= 1, got 0"]),
    (["--calibration-images", "-3"], ["--calibration-images must be >= 1, got -3"]),
    (["--agreement-floor", "101"], ["--agreement-floor must be a percentage in [0, 100], got 101.0"]),
    (["NO_GENERATOR"], ["has no generator.safetensors (the run did not finish)", "leave onnx_int8 out of --format"]),
    (["NO_POOL", "--calibration", "pool"], ["has no replay pool to calibrate on (it has no checkpoint)"]),
    (["NO_QUANTIZATION"], ["onnxruntime has no quantization support here", "leave onnx_int8 out of --format"]),
])
def test_bad_int8_input_is_one_line_and_leaves_no_files(run_dir, tmp_path, capsys, monkeypatch, args, words):
    run = run_dir
    if "NO_GENERATOR" in args or "NO_POOL" in args:
        run = copy_run(run_dir, tmp_path / "run", generator="NO_GENERATOR" not in args)
    if "NO_QUANTIZATION" in args:
        monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    before = sorted(tmp_path.rglob("*"))
    argv = [a for a in args if not a.startswith("NO_")]
    assert cli(["export", str(run), "--format", "onnx,onnx_int8", "--out", str(tmp_path / "out"), *argv]) == 2
    assert_one_line_error(capsys, *words)
    assert sorted(tmp_path.rglob("*")) == before


def test_real_calibration_on_a_dataset_without_a_training_split_is_refused(run_dir):
    cfg, _ = read_run(run_dir)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="imagefolder"))
    with pytest.raises(DfkdError, match="data.dataset=imagefolder has no real training split dfkd can load"):
        quantize.calibration_images(cfg, run_dir, "real", 8)


def rows_of(printed: str) -> dict:
    return {cells[1]: cells for cells in ([c.strip() for c in line.split("|")] for line in printed.splitlines()
                                          if line.startswith("| teacher") or line.startswith("| student"))}


def test_evaluate_the_int8_file_shows_teacher_and_student_in_fp32_and_int8(run_dir, exported, tmp_path, capsys):
    plot, table = tmp_path / "frontier.png", tmp_path / "table.md"
    assert cli(["evaluate", str(exported / "student.int8.onnx"), "--limit", str(SUBSET), "--seconds", "0.05",
                "--out", str(table), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    rows = rows_of(printed)
    assert list(rows) == ["teacher", "teacher int8", "student", "student int8"] and table.read_text() == printed
    assert [rows[r][2] for r in rows] == ["lenet5", "lenet5", "lenet5_half", "lenet5_half"]
    size = (exported / "student.int8.onnx").stat().st_size / 1e6
    assert float(rows["student int8"][4]) == pytest.approx(size, abs=5e-4)
    assert float(rows["teacher int8"][4]) < float(rows["teacher"][4]) / 2
    card = card_of(exported)
    x, y = (torch.cat(t) for t in zip(*[(x, y) for x, y in real_batches(card, SUBSET)]))
    int8 = reload("onnx", exported / "student.int8.onnx", card)
    assert float(rows["student int8"][7]) == pytest.approx(100 * (int8(x).argmax(1) == y).float().mean().item(),
                                                           abs=0.005)
    assert float(rows["teacher int8"][7]) > 95  # the teacher quantized as the student was keeps its accuracy
    assert all(float(rows[r][c]) > 0 for r in rows for c in (5, 6))  # ms at batch 1 and 64
    assert "Int8 vs fp32, student:" in printed and "Int8 vs fp32, teacher:" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_the_int8_file_without_the_run_is_one_line(run_dir, exported, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run", generator=False)
    card = {**card_of(exported), "run_dir": str(run)}
    shutil.copy(exported / "student.int8.onnx", tmp_path / "student.int8.onnx")
    (tmp_path / "student.json").write_text(json.dumps(card))
    assert cli(["evaluate", str(tmp_path / "student.int8.onnx"), "--limit", "64", "--seconds", "0.05"]) == 2
    assert_one_line_error(capsys, "the teacher's int8 row is calibrated as the student was", "generator.safetensors")


def test_quantize_onnx_alternatives_run(exported, tmp_path):
    """The QOperator format and uint8 activations that benchmarks/int8.py measures against the default."""
    images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for fmt, act in (("QOperator", "QUInt8"), ("QDQ", "QUInt8")):
        out = tmp_path / f"{fmt}_{act}.onnx"
        quantize.quantize_onnx(exported / "student.onnx", out, images, quant_format=fmt, activations=act)
        ops = {node.op_type for node in onnx.load(str(out)).graph.node}
        assert ("QLinearConv" in ops) == (fmt == "QOperator") and "QuantizeLinear" in ops
        assert np.isfinite(reload("onnx", out, card_of(exported))(images).numpy()).all()
