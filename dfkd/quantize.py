"""Int8 ONNX models calibrated without data: onnxruntime's static quantization, fed the run's own images.

Static int8 needs calibration images to fix each activation's range; a data-free user has none, and a dfkd run
has its trained generator (``generator.safetensors``) and its replay pool. ``calibration_images`` draws them,
as raw 0-1 pixels (the ONNX files carry their normalization), from one of ``SOURCES``:

- ``generator``: N images of the run's generator (train-mode BatchNorm, batches of the run's ``batch_size``, as
  in training), from latent codes of seed ``CALIBRATION_SEED``;
- ``pool``: N images of the replay pool kept in the run's newest checkpoint;
- ``real``: N images of the real training split (a dataset of ``dfkd.data.LOADERS``): what a user with data
  would use;
- ``noise``: N uniform 0-1 images, for contrast.

``quantize_onnx`` is onnxruntime's ``quant_pre_process`` then ``quantize_static``: QDQ format, int8 activations
and per-channel int8 weights (``benchmarks/int8.py`` measures the alternatives). The int8 model is then checked
against the fp32 one on ``HELD_OUT`` other generated images (seed ``HELD_OUT_SEED``): top-1 agreement below
the floor refuses the file. It is counted on the images the fp32 model decides (softmax top-1 minus top-2 at
least ``DECIDED``): the generator is trained to find the student's disagreements with its teacher, so many of its
images are near-ties, which any rounding may flip (docs/export.md: 88 % agreement on all of them for an int8
student with 99.6 % on real test images, 100 % on the decided ones); agreement on all is recorded too.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict

import torch

from dfkd.accuracy import accuracy, real_batches
from dfkd.build import make_generator
from dfkd.checkpoint import complete_checkpoints
from dfkd.data import LOADERS, tensor_dataset
from dfkd.errors import DfkdError
from dfkd.fidelity import data_mode
from dfkd.formats import FILES, RawImageModel, reload, write
from dfkd.models.generator import draw
from dfkd.models.normalize import Normalize
from dfkd.schema import Config
from dfkd.weights import load_weights

INT8, INT8_FILE = "onnx_int8", "student.int8.onnx"  # the export format and its file
SOURCES = ("generator", "pool", "real", "noise")
METHODS = ("MinMax", "Entropy", "Percentile")  # onnxruntime.quantization.CalibrationMethod's for int8
CALIBRATION_SEED, HELD_OUT_SEED = 0, 1  # latent codes (or draws) of the calibration and the check: never the same
HELD_OUT = 1024  # generated images the int8 model must agree with the fp32 one on
DECIDED = 0.5  # fp32 softmax top-1 minus top-2 from which an image counts for the floor (below: a near-tie)
MIN_DECIDED = 100  # fewer decided images than this (a barely trained model): the floor counts all


@dataclass
class Calibration:
    """How an int8 model is calibrated and when it is refused."""

    source: str = "generator"  # one of SOURCES
    images: int = 512  # calibration images
    method: str = "MinMax"  # one of METHODS
    floor: float = 97.0  # % top-1 agreement with the fp32 model on HELD_OUT generated images, below which: refused

    def check(self) -> "Calibration":
        """Itself, or a one-line error naming the bad value."""
        if self.source not in SOURCES:
            raise DfkdError(f"unknown calibration '{self.source}'; choose from {', '.join(SOURCES)}")
        if self.method not in METHODS:
            raise DfkdError(f"unknown calibration method '{self.method}'; choose from {', '.join(METHODS)}")
        if self.images < 1:
            raise DfkdError(f"--calibration-images must be >= 1, got {self.images}")
        if not 0 <= self.floor <= 100:
            raise DfkdError(f"--agreement-floor must be a percentage in [0, 100], got {self.floor}")
        return self


def quantization_tools():
    """onnxruntime.quantization, or a one-line error: an onnxruntime built without it cannot write int8 files."""
    try:
        import onnxruntime.quantization as tools
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: F401  (the first step)
    except ImportError as err:
        raise DfkdError(f"onnxruntime has no quantization support here ({err}); pip install 'onnxruntime>=1.16' "
                        f"onnx, or leave onnx_int8 out of --format") from err
    return tools


def has_quantization() -> bool:
    """Whether int8 files can be written here (``onnx_int8`` joins the default export set)."""
    try:
        quantization_tools()
    except DfkdError:
        return False
    return True


def to_pixels(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Teacher inputs (normalised with the contract's mean/std) back to the raw pixels exported files take."""
    return Normalize(cfg.data.mean, cfg.data.std).invert(x)


@torch.no_grad()
def generated_images(cfg: Config, run_dir: Path, n: int, seed: int) -> torch.Tensor:
    """``n`` images of the run's trained generator, as raw pixels."""
    path = run_dir / "generator.safetensors"
    if not path.is_file():
        raise DfkdError(f"run directory '{run_dir}' has no generator.safetensors (the run did not finish): int8 "
                        f"export calibrates and checks on the generator's images; finish the run, or leave "
                        f"onnx_int8 out of --format")
    generator = make_generator(cfg)
    load_weights(generator, str(path), what="generator")
    return to_pixels(draw(generator, cfg.generator.nz, n, seed, cfg.batch_size), cfg)


def pool_images(cfg: Config, run_dir: Path, n: int, seed: int) -> torch.Tensor:
    """``n`` images (at most what it holds) of the replay pool in the run's newest checkpoint, as raw pixels."""
    saved = [c / "dfkd_state_0.pt" for c in complete_checkpoints(run_dir) if (c / "dfkd_state_0.pt").is_file()]
    state = torch.load(saved[-1], map_location="cpu", weights_only=True, mmap=True) if saved else {}  # mmap: a
    if not state.get("pool") or not len(state["pool"]["images"]):  # pool of 200k images reads only the picked ones
        why = "it has no checkpoint" if not saved else f"pool.size={cfg.pool.size} kept none"
        raise DfkdError(f"run '{run_dir}' has no replay pool to calibrate on ({why}); use --calibration generator")
    images = state["pool"]["images"]
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return to_pixels(images[pick.sort().values].float(), cfg)


def real_images(cfg: Config, n: int, seed: int) -> torch.Tensor:
    """``n`` images of the real training split, resized as the teacher takes them, as raw pixels."""
    if cfg.data.dataset not in LOADERS:
        raise DfkdError(f"data.dataset={cfg.data.dataset} has no real training split dfkd can load (only "
                        f"{', '.join(sorted(LOADERS))}); use --calibration generator")
    images = tensor_dataset(cfg.data, train=True, normalize=False).tensors[0]
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def calibration_images(cfg: Config, run_dir: Path, source: str, n: int, seed: int = CALIBRATION_SEED) -> torch.Tensor:
    """``n`` calibration images from ``source`` (one of SOURCES), raw 0-1 pixels of the teacher's input shape."""
    if source == "generator":
        return generated_images(cfg, run_dir, n, seed)
    if source == "pool":
        return pool_images(cfg, run_dir, n, seed)
    if source == "real":
        return real_images(cfg, n, seed)
    d = cfg.data
    return torch.rand(n, d.channels, d.image_size, d.image_size, generator=torch.Generator().manual_seed(seed))


def quantize_onnx(fp32: Path, out: Path, images: torch.Tensor, method: str = "MinMax", quant_format: str = "QDQ",
                  activations: str = "QInt8") -> None:
    """``out``: the fp32 ONNX model ``fp32`` in int8, calibrated on ``images`` (batches of 64) with ``method``;
    per-channel int8 weights, activations of ``activations`` (QInt8 or QUInt8), ``quant_format`` QDQ or QOperator."""
    tools = quantization_tools()
    batches = [{"images": chunk.numpy()} for chunk in images.float().split(64)]

    class Reader(tools.CalibrationDataReader):
        def get_next(self):
            return batches.pop(0) if batches else None

    with tempfile.TemporaryDirectory(prefix="dfkd-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"  # shapes inferred and graph fused first, as onnxruntime advises
        tools.shape_inference.quant_pre_process(str(fp32), str(prepared))
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            tools.quantize_static(str(prepared), str(out), Reader(), quant_format=tools.QuantFormat[quant_format],
                                  per_channel=True, activation_type=tools.QuantType[activations],
                                  weight_type=tools.QuantType.QInt8, calibrate_method=tools.CalibrationMethod[method])


def agreement(fp32: Callable, int8: Callable, images: torch.Tensor) -> Dict:
    """Top-1 agreement in % of two models on ``images`` (batches of 256): on the images the fp32 model decides
    (the floor's measure; all of them when fewer than MIN_DECIDED are), and on all."""
    same, margins = [], []
    for x in images.split(256):
        logits = fp32(x)
        top2 = logits.softmax(1).topk(2, dim=1).values
        same.append(logits.argmax(1) == int8(x).argmax(1))
        margins.append(top2[:, 0] - top2[:, 1])
    same, decided = torch.cat(same), torch.cat(margins) >= DECIDED
    counted = same[decided] if int(decided.sum()) >= MIN_DECIDED else same
    return {"top1_agreement": round(100 * counted.float().mean().item(), 3), "counted_images": len(counted),
            "decided_images": int(decided.sum()), "top1_agreement_all": round(100 * same.float().mean().item(), 3)}


def quantize_checked(fp32: Path, out: Path, cfg: Config, run_dir: Path, calibration: Calibration,
                     load: Callable[[Path], Callable], what: str = "student") -> Dict:
    """``out``: ``fp32`` in int8, calibrated as ``calibration`` says; refused (nothing kept) below its agreement
    floor on held-out generated images. ``load``: a file -> its predict function. Returns the card's record."""
    held_out = generated_images(cfg, run_dir, HELD_OUT, HELD_OUT_SEED)  # first: a run without one stops here
    images = calibration_images(cfg, run_dir, calibration.source, calibration.images)
    quantize_onnx(fp32, out, images, calibration.method)
    agree = agreement(load(fp32), load(out), held_out)
    if agree["top1_agreement"] < calibration.floor:
        out.unlink()
        raise DfkdError(f"the int8 {what} agrees with the fp32 one on {agree['top1_agreement']:.2f}% of the "
                        f"{agree['counted_images']} held-out generated images counted (those the fp32 {what} decides: "
                        f"softmax margin >= {DECIDED:g}), below the floor of {calibration.floor:g}% (--agreement-floor); "
                        f"nothing was written; try --calibration-method Entropy or Percentile, or more "
                        f"--calibration-images")
    return {"file": out.name, "format": "QDQ", "activations": "int8 (per tensor)", "weights": "int8 (per channel)",
            "calibration": {"source": calibration.source, "images": len(images), "method": calibration.method,
                            "seed": CALIBRATION_SEED},
            "agreement": {**agree, "floor": calibration.floor, "images": HELD_OUT, "decided_margin": DECIDED,
                          "on": f"generated images, seed {HELD_OUT_SEED}"},
            "size_mb": round(out.stat().st_size / 1e6, 4), "fp32_size_mb": round(fp32.stat().st_size / 1e6, 4)}


def export_int8(tmp: Path, reference: RawImageModel, example: torch.Tensor, card: Dict, cfg: Config,
                calibration: Calibration) -> Dict:
    """``tmp/student.int8.onnx`` from the fp32 ONNX student (written and dropped here unless ``onnx`` was exported
    too), agreement-checked; its card record, with both files' test accuracy when the run has real test data."""
    fp32, int8 = tmp / FILES["onnx"], tmp / INT8_FILE
    asked = fp32.is_file()
    if not asked:
        write("onnx", reference, example, fp32)
    record = quantize_checked(fp32, int8, cfg, Path(card["run_dir"]), calibration,
                              lambda path: reload("onnx", path, card))
    dataset = card["data"]["dataset"]  # labelled test images that can be read again here (not a given Dataset)
    if dataset != "given" and data_mode(dataset) == "labelled":
        record["test_acc"] = {name: round(accuracy(reload("onnx", path, card), real_batches(card))[0], 3)
                              for name, path in (("fp32", fp32), ("int8", int8))}
    if not asked:
        fp32.unlink()
    return record
