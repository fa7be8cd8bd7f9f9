"""A run's student as files people deploy: safetensors, TorchScript, ONNX, int8 ONNX, with its card ``student.json``.

``student.safetensors`` is the bare timm model (normalise with the card's mean/std yourself);
``student.torchscript.pt``, ``student.onnx`` and ``student.int8.onnx`` take RAW images — float32, NCHW, values in
0-1, already resized to the card's ``input_size`` — because normalization is inside them (dfkd/formats.py).
Every file is reloaded and checked against the in-memory student on real test images in a
temporary directory; only when all checks pass are the files moved into DIR. ``student.int8.onnx`` (format
``onnx_int8``, dfkd/quantize.py) is checked on its top-1 agreement with the fp32 ONNX student instead.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from dfkd.accuracy import real_batches
from dfkd.checkpoint import complete_checkpoints, config_differences
from dfkd.contract import resolve
from dfkd.errors import DfkdError
from dfkd.formats import FILES, OPSET, RawImageModel, reload, student_module, write  # FILES, reload: imported from here too
from dfkd.quantize import INT8, INT8_FILE, Calibration, export_int8, has_quantization, quantization_tools
from dfkd.schema import Config
from dfkd.weights import create_model, load_weights

ATOL, RTOL = 1e-4, 1e-4  # logits parity, as torch.allclose: |exported - eager| <= ATOL + RTOL * |eager|
PARITY_IMAGES = 256  # real test images each exported file is checked on
MEASURES = ("student_final_acc", "student_best_acc", "student_final_real_agree", "student_best_real_agree",
            "student_final_fidelity", "student_best_fidelity")  # of summary.json, what the card repeats
RUN_FILES = ("config.yaml", "summary.json", "checkpoints")  # what a dfkd run directory holds: never exported into
CARD_KEYS = ("architecture", "num_classes", "input_size", "mean", "std", "params", "data.dataset", "teacher.name",
             "teacher.checkpoint", "teacher.pretrained", "teacher.params")  # of student.json, what dfkd evaluate reads


def read_run(run_dir: Path) -> Tuple[Config, Dict]:
    """The config the run trained with, and its summary (empty if the run has not finished). That config is the
    newest checkpoint's copy (dfkd/checkpoint.py) when there is one: RUN_DIR/config.yaml may have been edited
    since, and a warning line then names the keys that differ. Without a checkpoint, RUN_DIR/config.yaml."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise DfkdError(f"'{run_dir}' is not a dfkd run directory (no config.yaml); pass OUT_DIR/RUN_NAME of a "
                        f"dfkd distill run")
    cfg = load_run_config(cfg_file)
    saved = [c / "config.yaml" for c in complete_checkpoints(run_dir) if (c / "config.yaml").is_file()]
    if saved:
        trained = load_run_config(saved[-1])
        edits = config_differences(saved[-1], cfg)
        if edits:
            print(f"[dfkd] warning: {cfg_file} differs from the config the student was trained with "
                  f"({'; '.join(edits)}); using the trained one, {saved[-1]}")
        cfg = trained
    d = cfg.data
    if None in (d.channels, d.image_size, d.num_classes, d.mean, d.std, d.interpolation, d.crop_pct):
        resolve(cfg)  # runs written before the contract was recorded: derive it as they did
    summary = run_dir / "summary.json"
    return cfg, json.loads(summary.read_text()) if summary.is_file() else {}


def load_run_config(cfg_file: Path) -> Config:
    """A run's config.yaml (or a checkpoint's copy of it) over the schema."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(cfg_file)))
    except Exception as err:
        raise DfkdError(f"{cfg_file} does not fit this dfkd's config schema: {str(err).splitlines()[0]}") from err


def make_card(run_dir: Path, which: str = "best", weights: Optional[Path] = None,
              run: Optional[Tuple[Config, Dict]] = None) -> Dict:
    """student.json: what the student is, how to feed it, and how it compares with its teacher. ``run``: what
    ``read_run(run_dir)`` returns, when the caller has read it already."""
    cfg, summary = run or read_run(run_dir)
    weights = weights or run_dir / ("student_best.safetensors" if which == "best" else "student.safetensors")
    if not weights.is_file():
        other = "final" if which == "best" else "best"
        raise DfkdError(f"run directory '{run_dir}' has no {weights.name} (the run did not reach an evaluation "
                        f"or did not finish); finish it with dfkd distill, or try --which {other}")
    d, n = cfg.data, cfg.data.num_classes
    t_params, s_params = summary.get("teacher_params"), summary.get("student_params")
    if t_params is None or s_params is None:  # runs written before summaries counted them: timm architectures
        t_params, s_params = (sum(p.numel() for p in create_model(name, n, in_chans=d.channels, **kwargs).parameters())
                              for name, kwargs in ((cfg.teacher.name, cfg.teacher.kwargs), (cfg.student.name, {})))
    resize = "" if d.crop_pct == 1 else f" after a resize of the short side to {int(d.image_size / d.crop_pct)} and "
    return {
        "architecture": cfg.student.name, "num_classes": n,
        "input_size": [d.channels, d.image_size, d.image_size],
        "mean": list(d.mean), "std": list(d.std), "interpolation": d.interpolation, "crop_pct": d.crop_pct,
        "input": "student.safetensors is the bare timm model: feed (x - mean) / std. student.torchscript.pt and "
                 "student.onnx include that normalization: feed float32 NCHW images with values in 0-1, "
                 f"{d.channels} channel(s), resized ({d.interpolation}) to input_size"
                 + (f"{resize}a centre crop" if resize else "") + "; any batch size.",
        "timm_load": "import dfkd.models, timm; timm.create_model(\"%s\", num_classes=%d, in_chans=%d, "
                     "pretrained=True, pretrained_cfg_overlay=dict(file=\"student.safetensors\", num_classes=%d))"
                     % (cfg.student.name, n, d.channels, n) if timm.is_model(cfg.student.name) else None,
        "student_kwargs": dict(cfg.student.kwargs),
        "teacher": {"name": cfg.teacher.name, "checkpoint": cfg.teacher.checkpoint, "kwargs": dict(cfg.teacher.kwargs),
                    "pretrained": cfg.teacher.pretrained, "params": t_params,
                    **({"test_acc": summary["teacher_acc"]} if "teacher_acc" in summary else {})},
        **{k: summary[k] for k in MEASURES if k in summary},  # a run without labelled data has no accuracy
        "exported": which, "scheme": cfg.scheme, "k": cfg.k, "loss": cfg.loss, "recipe": cfg.recipe,
        "student_updates": summary.get("student_updates"),
        "data": OmegaConf.to_container(OmegaConf.structured(cfg.data)),
        "params": s_params, "size_mb": round(weights.stat().st_size / 1e6, 4),
        "compression_ratio": round(t_params / s_params, 2),
        "dfkd_version": version("dfkd"), "torch": torch.__version__, "run_dir": str(run_dir), "weights": str(weights),
    }


def check_parity(fmt: str, expected: torch.Tensor, got: torch.Tensor) -> Dict:
    """Top-1 identical and logits within ATOL/RTOL; a top-1 change counts only where the eager
    top-2 margin exceeds twice the tolerance (a genuine tie can flip legitimately)."""
    if got.shape != expected.shape:
        raise DfkdError(f"{fmt} parity check failed: logits {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = (got - expected).abs()
    top2 = expected.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) <= 2 * (ATOL + RTOL * top2[:, 0].abs())
    changed = int(((got.argmax(1) != expected.argmax(1)) & ~tie).sum())
    if changed or not bool((diff <= ATOL + RTOL * expected.abs()).all()):
        raise DfkdError(f"{fmt} parity check failed on {len(got)} real test images: max |logit diff| "
                        f"{diff.max():.2e} (tolerance {ATOL:g} + {RTOL:g}*|logit|), {changed} top-1 changes; "
                        "nothing was written")
    return {"images": len(got), "max_abs_logit_diff": float(diff.max()), "atol": ATOL, "rtol": RTOL,
            "top1_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean())}


def parity_images(card: Dict) -> torch.Tensor:
    """Real test images to check exported files on, or, when the run had none that can be reloaded here (a Dataset
    given to the Python API, or no real data), uniform 0-1 images of the input shape from a fixed seed: logits must
    match all the same."""
    if card["data"]["dataset"] in ("given", "none"):
        return torch.rand(PARITY_IMAGES, *card["input_size"], generator=torch.Generator().manual_seed(0))
    return torch.cat([x for x, _ in real_batches(card, PARITY_IMAGES)])


def default_formats() -> List[str]:
    """What ``dfkd export RUN_DIR`` and ``export=true`` write: every fp32 format, and int8 where onnxruntime has
    its quantization tools."""
    return [*FILES, *[INT8] * has_quantization()]


def export(run_dir, formats: List[str], out=None, which: str = "best", student: Optional[nn.Module] = None,
           calibration: Optional[Calibration] = None) -> Path:
    """Write the student in ``formats`` plus student.json into ``out`` (default RUN_DIR/export), all or nothing.
    ``student``: the architecture, when the run's student was a module given to dfkd.distill; ``calibration``:
    how ``onnx_int8`` is calibrated and when it is refused (default: ``Calibration()``)."""
    bad = [f for f in formats if f not in FILES and f != INT8] or ([] if formats else ["(none)"])
    if bad:
        raise DfkdError(f"cannot export format '{bad[0]}'; choose from {', '.join([*FILES, INT8])} (comma-separated)")
    if INT8 in formats:  # before any work: a bad option or a missing tool is one line, and nothing written
        calibration = (calibration or Calibration()).check()
        quantization_tools()
    run_dir = Path(run_dir).expanduser()
    run = read_run(run_dir)
    card = make_card(run_dir, which, run=run)
    out = Path(out).expanduser() if out else run_dir / "export"
    with partial_folder(out) as tmp:
        model = student_module(card, copy.deepcopy(student) if student is not None else None)
        load_weights(model, card["weights"], what="student")
        reference = RawImageModel(model.eval(), card["mean"], card["std"]).eval()
        images = parity_images(card)
        with torch.no_grad():
            expected = reference(images)
        card["opset"], card["parity"], card["files"] = OPSET, {}, {}
        for fmt in [f for f in formats if f in FILES]:
            path = Path(tmp) / FILES[fmt]
            try:
                write(fmt, reference, images[:2], path)
                got = reload(fmt, path, card, student)(images)
            except Exception as err:
                raise DfkdError(f"cannot export {card['architecture']} to {fmt}: {type(err).__name__}: "
                                f"{(str(err).splitlines() or [''])[0][:200]}") from err
            card["parity"][fmt] = check_parity(fmt, expected, got)
            card["files"][fmt] = FILES[fmt]
        if INT8 in formats:
            card["int8"] = export_int8(Path(tmp), reference, images[:2], card, run[0], calibration)
            card["files"][INT8] = INT8_FILE
        (Path(tmp) / "student.json").write_text(json.dumps(card, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for file in Path(tmp).iterdir():  # everything passed: move into place
            os.replace(file, out / file.name)
    return out


def partial_folder(out: Path) -> tempfile.TemporaryDirectory:
    """The temporary folder the export is written and checked in, beside ``out`` (same filesystem: os.replace
    moves it into place). Refuses an ``out`` that holds a dfkd run, whose own files (student.safetensors, ...)
    the export would overwrite; a previous export folder is overwritten as asked."""
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise DfkdError(f"cannot export into '{out}': it holds a dfkd run ({', '.join(held)}) whose files the export "
                        f"would overwrite; pass --out NEW_DIR (default RUN_DIR/export)")
    blocked = next((p for p in [out.absolute(), *out.absolute().parents] if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise DfkdError(f"cannot write the export to '{out}': {blocked} is a file; pass --out WRITABLE_DIR")
    base = next((p for p in out.absolute().parents if p.is_dir()), out.absolute())  # out=/ has no parent
    try:  # trying is the only honest test: os.access says yes to root, even on /proc
        return tempfile.TemporaryDirectory(dir=base, prefix=f".{out.name}.partial-")
    except OSError as err:
        raise DfkdError(f"cannot write the export to '{out}': {base} is not writable ({err.strerror}); "
                        f"pass --out WRITABLE_DIR") from err


def load_card(path: Path) -> Dict:
    """An exported student's card (student.json), checked for every key ``dfkd evaluate`` reads."""
    fix = "re-export the student with dfkd export RUN_DIR"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DfkdError(f"student card '{path}' is unreadable ({str(err).splitlines()[0][:120]}); {fix}") from err
    for key in CARD_KEYS:
        node = card
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise DfkdError(f"student card '{path}' is incomplete: it has no '{key}'; {fix}")
            node = node[part]
    return card
