"""A run's student as files people deploy: safetensors, TorchScript, ONNX, with its card ``student.json``.

``student.safetensors`` is the bare timm model (normalise with the card's mean/std yourself);
``student.torchscript.pt`` and ``student.onnx`` take RAW images — float32, NCHW, values in 0-1,
already resized to the card's ``input_size`` — because normalization is inside them.
Every file is reloaded and checked against the in-memory student on real test images in a
temporary directory; only when all checks pass are the files moved into DIR.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from dfkd.accuracy import Predict, real_batches
from dfkd.checkpoint import complete_checkpoints, config_differences
from dfkd.contract import resolve
from dfkd.errors import DfkdError
from dfkd.models.normalize import Normalize
from dfkd.schema import Config
from dfkd.teacher import model_from
from dfkd.weights import create_model, load_weights, save_weights

FILES = {"safetensors": "student.safetensors", "torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
OPSET = 17  # every onnxruntime since 1.14 runs it; a CNN classifier needs no newer operator
ATOL, RTOL = 1e-4, 1e-4  # logits parity, as torch.allclose: |exported - eager| <= ATOL + RTOL * |eager|
PARITY_IMAGES = 256  # real test images each exported file is checked on
SUFFIXES = {Path(file).suffix: fmt for fmt, file in FILES.items()}
MEASURES = ("student_final_acc", "student_best_acc", "student_final_real_agree", "student_best_real_agree",
            "student_final_fidelity", "student_best_fidelity")  # of summary.json, what the card repeats
RUN_FILES = ("config.yaml", "summary.json", "checkpoints")  # what a dfkd run directory holds: never exported into
CARD_KEYS = ("architecture", "num_classes", "input_size", "mean", "std", "params", "data.dataset", "teacher.name",
             "teacher.checkpoint", "teacher.pretrained", "teacher.params")  # of student.json, what dfkd evaluate reads


class RawImageModel(nn.Module):
    """Raw 0-1 images in, logits out: the deployable artifact carries its own normalization."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


def load_timm(arch: Dict, file: Path) -> nn.Module:
    """The card's documented call. ``num_classes`` in the overlay too: else timm drops a classifier whose
    size differs from the architecture's default pretrained_cfg (e.g. 100 CIFAR-100 classes vs 10)."""
    n, chans = arch["num_classes"], arch["input_size"][0]
    return timm.create_model(arch["architecture"], num_classes=n, in_chans=chans, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(file), num_classes=n)).eval()


def write(fmt: str, model: RawImageModel, example: torch.Tensor, path: Path) -> None:
    """Save ``model`` as ``fmt``: the bare timm weights, or the raw-image module traced / exported."""
    if fmt == "safetensors":
        save_weights(model.model, path)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream, yet what C++/mobile loaders read;
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))  # dynamo ONNX needs onnxscript
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(path))
        if fmt == "onnx":
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def reload(fmt: str, path: Path, arch: Dict, model: Optional[nn.Module] = None) -> Predict:
    """An exported file loaded back as a user would: through timm, torch.jit.load, or onnxruntime."""
    try:
        return _reload(fmt, path, arch, model)
    except Exception as err:  # truncated or corrupt file, or not this format
        raise DfkdError(f"cannot load '{path}' as {fmt} ({type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0][:160]}); re-export it with dfkd export RUN_DIR") from err


def _reload(fmt: str, path: Path, arch: Dict, given: Optional[nn.Module] = None) -> Predict:
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch formats
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu").eval()
    elif arch["architecture"] and timm.is_model(arch["architecture"]):
        model = RawImageModel(load_timm(arch, path), arch["mean"], arch["std"]).eval()
    else:  # a model of the user's code: its class, then the weights
        bare = student_module(arch, copy.deepcopy(given) if given is not None else None)
        load_weights(bare, str(path), what="student")
        model = RawImageModel(bare.eval(), arch["mean"], arch["std"]).eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    return predict


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


def make_card(run_dir: Path, which: str = "best", weights: Optional[Path] = None) -> Dict:
    """student.json: what the student is, how to feed it, and how it compares with its teacher."""
    cfg, summary = read_run(run_dir)
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


def student_module(card: Dict, given: Optional[nn.Module] = None) -> nn.Module:
    """The student's architecture from its card (weights aside); ``given``: the module, for a student that was a
    module given to dfkd.distill."""
    return model_from(card["architecture"], card["num_classes"], card["input_size"][0], card.get("student_kwargs", {}),
                      "student", given)


def parity_images(card: Dict) -> torch.Tensor:
    """Real test images to check exported files on, or, when the run had none that can be reloaded here (a Dataset
    given to the Python API, or no real data), uniform 0-1 images of the input shape from a fixed seed: logits must
    match all the same."""
    if card["data"]["dataset"] in ("given", "none"):
        return torch.rand(PARITY_IMAGES, *card["input_size"], generator=torch.Generator().manual_seed(0))
    return torch.cat([x for x, _ in real_batches(card, PARITY_IMAGES)])


def export(run_dir, formats: List[str], out=None, which: str = "best", student: Optional[nn.Module] = None) -> Path:
    """Write the student in ``formats`` plus student.json into ``out`` (default RUN_DIR/export), all or nothing.
    ``student``: the architecture, when the run's student was a module given to dfkd.distill."""
    bad = [f for f in formats if f not in FILES] or ([] if formats else ["(none)"])
    if bad:
        raise DfkdError(f"cannot export format '{bad[0]}'; choose from {', '.join(FILES)} (comma-separated)")
    run_dir = Path(run_dir).expanduser()
    card = make_card(run_dir, which)
    out = Path(out).expanduser() if out else run_dir / "export"
    with partial_folder(out) as tmp:
        model = student_module(card, copy.deepcopy(student) if student is not None else None)
        load_weights(model, card["weights"], what="student")
        reference = RawImageModel(model.eval(), card["mean"], card["std"]).eval()
        images = parity_images(card)
        with torch.no_grad():
            expected = reference(images)
        card["opset"], card["parity"], card["files"] = OPSET, {}, {}
        for fmt in formats:
            path = Path(tmp) / FILES[fmt]
            try:
                write(fmt, reference, images[:2], path)
                got = reload(fmt, path, card, student)(images)
            except Exception as err:
                raise DfkdError(f"cannot export {card['architecture']} to {fmt}: {type(err).__name__}: "
                                f"{(str(err).splitlines() or [''])[0][:200]}") from err
            card["parity"][fmt] = check_parity(fmt, expected, got)
            card["files"][fmt] = FILES[fmt]
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
