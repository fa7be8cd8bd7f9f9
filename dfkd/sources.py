"""Where a teacher or a student comes from, when it is not a timm name: a model in the user's code, or one file.

- ``pkg.module:attr`` (``teacher.name`` / ``student.name``): a class or a callable in an importable module that
  returns an ``nn.Module``, called with ``teacher.kwargs`` / ``student.kwargs``; weights from ``teacher.checkpoint``.
- a self-contained file as ``teacher.checkpoint``, no architecture needed: a ``torch.export`` program (``.pt2``,
  ``torch.export.save``) or TorchScript (``torch.jit.save``). Neither is unpickled: both formats store their
  code as a graph, not as Python objects. An exported program is unflattened, so its layers keep their module
  boundaries and the BatchNorm prior can hook them; a TorchScript module cannot be hooked.
- an ``nn.Module`` object, through the Python API (``dfkd.distill(teacher=model)``): recorded as ``<module Class>``.
"""
from __future__ import annotations

import importlib
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from dfkd.errors import DfkdError

GIVEN = "<module "  # the name recorded for a module object given to the Python API: "<module ClassName>"


def given_name(model: nn.Module) -> str:
    """The name a module object given to the Python API is recorded under (config.yaml, summary.json)."""
    return f"{GIVEN}{type(model).__name__}>"


def is_given(name: Optional[str]) -> bool:
    return bool(name) and name.startswith(GIVEN)


def is_import_path(name: Optional[str]) -> bool:
    """``pkg.module:attr``: a model in the user's code (timm names never hold a colon)."""
    return bool(name) and ":" in name and not is_given(name)


def from_import_path(spec: str, kwargs: Dict[str, Any], role: str) -> nn.Module:
    """Import ``pkg.module:attr`` and call it with ``kwargs``: the module it returns (or the instance it is)."""
    module_name, _, attr = spec.partition(":")
    key = f"{role}.name={spec}"
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the user's module failing while it loads
        raise DfkdError(f"{key}: cannot import {module_name} ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                        f"is it installed or on PYTHONPATH? (the form is package.module:callable)") from err
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise DfkdError(f"{key}: {module_name} has no attribute '{attr}'")
    model = target
    if not isinstance(target, nn.Module):
        if not callable(target):
            raise DfkdError(f"{key}: {attr} is a {type(target).__name__}, not a class or a function returning a model")
        try:
            model = target(**kwargs)
        except TypeError as err:
            raise DfkdError(f"{key}: cannot call {attr} with {role}.kwargs {kwargs}: {str(err).splitlines()[0][:160]}"
                            ) from err
    if not isinstance(model, nn.Module):
        raise DfkdError(f"{key}: {attr}(...) returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def program_format(path: Path) -> Optional[str]:
    """``export`` for a torch.export archive, ``torchscript`` for a TorchScript one, None for anything else
    (e.g. a weights file): told apart by the files inside the zip archive, nothing is loaded."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("archive_format") or "/models/" in n and n.endswith(".json") for n in names):
        return "export"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return None


def load_program(path: Path, role: str = "teacher") -> Tuple[nn.Module, Optional[Tuple[int, ...]]]:
    """A self-contained model file as a module, and the input shape it was exported with (C, H, W) if it says.

    An exported program must take any batch size (exported with a dynamic batch dimension): dfkd feeds it
    batches of its own size."""
    fmt = program_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                return torch.jit.load(str(path), map_location="cpu").eval(), None
            program = torch.export.load(str(path))
    except Exception as err:
        kind = "TorchScript" if fmt == "torchscript" else "torch.export"
        raise DfkdError(f"{role}.checkpoint '{path}' cannot be loaded as a {kind} "
                        f"program ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from err
    shape = program_input_shape(program)
    if shape is not None and isinstance(shape[0], int):
        raise DfkdError(f"{role}.checkpoint '{path}' was exported for batches of exactly {shape[0]}: re-export it with "
                        f"a dynamic batch, torch.export.export(model, (x,), dynamic_shapes=({{0: torch.export.Dim("
                        f"'batch')}},)), then torch.export.save")
    module = torch.export.unflatten(program)  # module boundaries kept: hooks (BatchNorm prior) can find layers
    return module, tuple(shape[1:]) if shape is not None and all(isinstance(s, int) for s in shape[1:]) else None


def program_input_shape(program) -> Optional[Tuple]:
    """The shape of an exported program's one image input, with ints where static and None where dynamic."""
    signature = program.graph_signature
    state = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
             **getattr(signature, "inputs_to_lifted_tensor_constants", {})}
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name not in state]
    values = [n.meta.get("val") for n in inputs]
    images = [v for v in values if isinstance(v, torch.Tensor) and v.ndim == 4]
    if len(images) != 1:
        return None
    return tuple(int(s) if isinstance(s, int) or str(s).isdigit() else None for s in images[0].shape)


def is_program_file(checkpoint: Optional[str]) -> bool:
    """True when ``checkpoint`` names an existing self-contained model file (torch.export or TorchScript)."""
    if not checkpoint:
        return False
    path = Path(checkpoint).expanduser()
    return path.is_file() and program_format(path) is not None
