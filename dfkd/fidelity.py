"""Fidelity: how closely the student follows its teacher, measured without any labelled image.

Every run measures it on one fixed held-out set of generated images per teacher and input contract, made once
and cached: a probe generator of its own (dfkd's Generator, seeded with ``PROBE_SEED``) trained for
``data.fidelity_steps`` steps on teacher-side priors only (class balance, confident predictions, and BatchNorm
statistics where the teacher has BatchNorm), then ``data.fidelity_images`` images drawn from fixed latent codes. The
run's seed, scheme and generator never touch it, so every run of a teacher is measured on the same images.
Reported: top-1 agreement (%) and mean KL(teacher || student); the student kept as student_best.safetensors
is the one that agrees most.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models import Generator, evaluating
from dfkd.models.normalize import Normalize
from dfkd.priors import Priors
from dfkd.schema import PriorsConfig

CACHE_DIR = Path("~/.cache/dfkd/fidelity").expanduser()
PROBE_SEED = 1234  # the probe generator's own seed: not the run's
PROBE_BATCH = 64
PROBE_BYTES = 64_000_000  # fewer images for large inputs: at most this many bytes of 8-bit pixels
PROBE_NZ, PROBE_NGF, PROBE_LR = 128, 8, 3e-3
PROBE_PRIORS = {"bn": None, "oh": 1.0, "ie": 1.0}  # the other PRIORS at their defaults (off); bn null: on with BatchNorm
BATCH = 500  # images per forward when measuring


@dataclass
class Probe:
    """The held-out set: 8-bit pixels (N, C, H, W) on the CPU, the teacher's log-probabilities on them, and the
    contract's normalisation that turns pixels into teacher inputs."""

    pixels: torch.Tensor
    teacher_logp: torch.Tensor
    normalize: nn.Module
    key: str

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        return self.normalize(self.pixels[start:stop].float() / 255)


def probe_key(cfg, teacher: nn.Module) -> str:
    """A hash of the teacher (its checkpoint file's bytes, else its state_dict) and of its input contract."""
    digest = hashlib.sha256()
    ckpt = cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).expanduser()
    if ckpt and ckpt.is_file():
        digest.update(ckpt.read_bytes())
    else:
        for name, value in teacher.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    d = cfg.data
    contract = [cfg.teacher.name, d.channels, d.image_size, list(d.mean), list(d.std), d.num_classes,
                PROBE_SEED, d.fidelity_steps, d.fidelity_images, PROBE_NZ, PROBE_NGF, PROBE_PRIORS]
    digest.update(json.dumps(contract).encode())
    return digest.hexdigest()[:24]


def probe_count(d) -> int:
    return int(min(d.fidelity_images, max(256, PROBE_BYTES // (d.channels * d.image_size ** 2))))


def train_probe_generator(cfg, teacher: nn.Module, device) -> Generator:
    """The probe generator, trained on the teacher's priors alone (``PROBE_PRIORS``: class balance, confident
    predictions, BatchNorm statistics where the teacher has BatchNorm); the hooks the priors put on the teacher
    are removed after. Without the confidence term the teacher's top class on these images holds ~23% of its
    probability (LeNet-5 on MNIST), and agreement on them measures little; with it, ~77%."""
    d = cfg.data
    teacher = teacher.to(device).eval()  # moved in place: the run puts it on this device too
    generator = Generator(PROBE_NZ, PROBE_NGF, d.image_size, d.channels, d.mean, d.std).to(device).train()
    opt = torch.optim.Adam(generator.parameters(), lr=PROBE_LR)
    codes = torch.Generator(device=device).manual_seed(PROBE_SEED)
    with hooks_removed_after(teacher):
        priors = Priors(PriorsConfig(**PROBE_PRIORS), teacher)
        for _ in range(cfg.data.fidelity_steps):
            z = torch.randn(PROBE_BATCH, PROBE_NZ, generator=codes, device=device)
            _, loss, _ = priors.teacher_forward(teacher, generator(z))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return generator


@contextmanager
def hooks_removed_after(model: nn.Module) -> Iterator[None]:
    """The forward hooks added to ``model``'s layers inside the block are removed at its end."""
    before = {id(m): set(getattr(m, "_forward_hooks", {})) for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            for handle in set(getattr(m, "_forward_hooks", {})) - before.get(id(m), set()):
                del m._forward_hooks[handle]


@torch.no_grad()
def draw_pixels(generator: Generator, d, count: int, device) -> torch.Tensor:
    """``count`` 8-bit images from fixed codes, drawn in train mode as in training (batches of a fixed size)."""
    codes = torch.Generator(device=device).manual_seed(PROBE_SEED + 1)
    pixels, out = Normalize(d.mean, d.std), []
    for start in range(0, count, 250):
        z = torch.randn(min(250, count - start), PROBE_NZ, generator=codes, device=device)
        out.append(pixels.invert(generator(z)).clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
    return torch.cat(out)


def probe_pixels(cfg, teacher: nn.Module, device, print_fn=print) -> Tuple[torch.Tensor, str]:
    """The held-out pixels of this teacher and contract: from the cache, or made now (and cached). Made inside
    ``fork_rng``, with generators of their own: the run's random streams are left as they were."""
    key = probe_key(cfg, teacher)
    path = CACHE_DIR / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["pixels"], key
    cuda = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(PROBE_SEED)
        generator = train_probe_generator(cfg, teacher, device)
        pixels = draw_pixels(generator, cfg.data, probe_count(cfg.data), device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"pixels": pixels}, tmp)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache: measure all the same, make it again next time
        print_fn(f"[dfkd] warning: cannot cache the fidelity images in {CACHE_DIR} ({err.strerror})")
    print_fn(f"[dfkd] fidelity: {len(pixels)} held-out generated images made for this teacher, cached as {path}")
    return pixels, key


def make_probe(cfg, pixels: torch.Tensor, key: str, teacher: nn.Module, device) -> Probe:
    """The held-out set with the teacher's outputs on it (computed once per run: the teacher is frozen)."""
    probe = Probe(pixels, torch.empty(0), Normalize(cfg.data.mean, cfg.data.std), key)
    probe.teacher_logp = log_probs(teacher, probe, device)
    return probe


@torch.no_grad()
def log_probs(model: nn.Module, probe: Probe, device) -> torch.Tensor:
    """``model``'s log-probabilities on the held-out set (eval mode, then as it was), on the CPU."""
    with evaluating(model):
        return torch.cat([model(probe.inputs(i, i + BATCH).to(device)).float().log_softmax(1).cpu()
                          for i in range(0, len(probe.pixels), BATCH)])


def fidelity(student: nn.Module, probe: Probe, device) -> Tuple[float, float]:
    """Top-1 agreement (%) of ``student`` with the teacher on the held-out set, and mean KL(teacher || student)."""
    s, t = log_probs(student, probe, device), probe.teacher_logp
    agree = 100.0 * (s.argmax(1) == t.argmax(1)).double().mean().item()
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean").item()
    return agree, kl


def better(agree: float, kl: float, best_agree: float, best_kl: float) -> bool:
    """The checkpoint rule without a test set: higher agreement wins; at equal agreement, lower KL."""
    return agree > best_agree or (agree == best_agree and kl < best_kl)


def summary_measures(mode: str, state, teacher_acc: Optional[float]) -> Dict:
    """What summary.json reports of the evaluations: fidelity always; test accuracy (labelled data) or agreement
    on real images (an unlabelled folder) where there are real images; no accuracy key without them."""
    out: Dict = {}
    if mode == "labelled":
        out = {"teacher_acc": teacher_acc, "student_final_acc": state.final_acc, "student_best_acc": state.best_acc,
               "student_best_test_acc": state.best_test_acc, "best_test_update": state.best_test_update}
    elif mode == "unlabelled":
        out = {"student_final_real_agree": state.final_acc, "student_best_real_agree": state.best_acc}
    return {**out, "student_final_fidelity": state.final_agree, "student_final_fidelity_kl": state.final_kl,
            "student_best_fidelity": state.best_agree, "student_best_fidelity_kl": state.best_kl,
            "best_at_update": state.best_update}


def data_mode(dataset: str) -> str:
    """labelled, unlabelled (a flat folder of images) or none."""
    return {"none": "none", "unlabelled": "unlabelled"}.get(str(dataset), "labelled")
