"""The deployable formats: each written from the raw-image student, and loaded back as a user would.

``student.safetensors`` is the bare timm model (normalise with the card's mean/std yourself);
``student.torchscript.pt`` and ``student.onnx`` take RAW images — float32, NCHW, values in 0-1,
already resized to the card's ``input_size`` — because normalization is inside them (``RawImageModel``).
dfkd/artifacts.py exports and checks them; dfkd/quantize.py makes the int8 ONNX file from the fp32 one.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Dict, Optional

import timm
import torch
from torch import nn

from dfkd.accuracy import Predict
from dfkd.errors import DfkdError
from dfkd.models.normalize import Normalize
from dfkd.teacher import model_from
from dfkd.weights import load_weights, save_weights

FILES = {"safetensors": "student.safetensors", "torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
OPSET = 17  # every onnxruntime since 1.14 runs it; a CNN classifier needs no newer operator
SUFFIXES = {Path(file).suffix: fmt for fmt, file in FILES.items()}


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
        # a branch on the input's size is traced for the card's input_size, the size the files are documented
        # (and parity-checked) for: not a defect of the exported file
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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



def student_module(card: Dict, given: Optional[nn.Module] = None) -> nn.Module:
    """The student's architecture from its card (weights aside); ``given``: the module, for a student that was a
    module given to dfkd.distill."""
    return model_from(card["architecture"], card["num_classes"], card["input_size"][0], card.get("student_kwargs", {}),
                      "student", given)
