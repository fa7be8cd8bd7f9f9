"""A replay pool of generated images with their teacher outputs: pay for the generator once.

The teacher is frozen and in eval mode, so its logits for an image never change: a generated batch
and its teacher logits, kept on the training device, can train the student again later at the cost of
one student forward and backward (no generator, no teacher). The generating steps of every scheme
(the generator step of two_stage, the joint step of one_stage and hybrid) add their batch; the
scheme's student-only steps then draw from the pool (``pool.fresh`` of each batch generated anew).
A fixed-size ring buffer: the oldest images leave first. Each process keeps its own pool.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from dfkd.errors import DfkdError


class SamplePool:
    """``capacity`` images (``image_shape``) and their teacher logits, sampled uniformly with its own RNG."""

    def __init__(self, capacity: int, image_shape: Tuple[int, ...], num_classes: int, device: torch.device,
                 seed: int = 0, dtype: torch.dtype = torch.float32, feature_dim: int = 0):
        self.images = torch.empty((capacity, *image_shape), device=device, dtype=dtype)
        self.logits = torch.empty((capacity, num_classes), device=device, dtype=dtype)
        # the teacher's pre-logits too, when a method contrasts new images with past ones (priors.cmi)
        self.features = torch.empty((capacity, feature_dim), device=device, dtype=dtype) if feature_dim else None
        self.count = 0  # images held
        self.next = 0  # where the next image goes
        self.rng = torch.Generator(device).manual_seed(seed)

    @property
    def capacity(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.logits.nbytes + (0 if self.features is None else self.features.nbytes)

    @torch.no_grad()
    def add(self, images: torch.Tensor, logits: torch.Tensor, features: Optional[torch.Tensor] = None) -> None:
        """Keep a batch (detached); past capacity it replaces the oldest images."""
        n = min(len(images), self.capacity)
        slots = (self.next + torch.arange(n, device=self.images.device)) % self.capacity
        self.images[slots] = images[-n:].detach().to(self.images.dtype)
        self.logits[slots] = logits[-n:].detach().to(self.logits.dtype)
        if self.features is not None:
            self.features[slots] = features[-n:].detach().to(self.features.dtype)
        self.next = int((self.next + n) % self.capacity)
        self.count = min(self.count + n, self.capacity)

    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` images and their teacher logits, drawn uniformly (with replacement) from what is held."""
        idx = torch.randint(self.count, (n,), generator=self.rng, device=self.images.device)
        return self.images[idx], self.logits[idx]

    def memory(self, n: int) -> torch.Tensor:
        """Pre-logits of ``n`` past images (at most what is held), drawn uniformly without replacement."""
        idx = torch.randperm(self.count, generator=self.rng, device=self.images.device)[:n]
        return self.features[idx]

    def state_dict(self) -> Dict:
        # copies, not views: torch.save writes a view's whole storage, i.e. the full capacity
        state = {"images": self.images[:self.count].to("cpu", copy=True),
                 "logits": self.logits[:self.count].to("cpu", copy=True),
                 "next": self.next, "rng": self.rng.get_state()}
        if self.features is not None:
            state["features"] = self.features[:self.count].to("cpu", copy=True)
        return state

    def load_state_dict(self, state: Dict) -> None:
        n = len(state["images"])
        if n > self.capacity or state["images"].shape[1:] != self.images.shape[1:]:
            raise ValueError(f"pool of {tuple(state['images'].shape)} does not fit one of capacity {self.capacity} "
                             f"and images {tuple(self.images.shape[1:])}")
        self.images[:n] = state["images"].to(self.images.device)
        self.logits[:n] = state["logits"].to(self.logits.device)
        if self.features is not None:
            self.features[:n] = state["features"].to(self.features.device)
        self.count, self.next = n, int(state["next"])
        self.rng.set_state(state["rng"])


def make_pool(cfg, device: torch.device, process_index: int = 0, feature_dim: int = 0):
    """The run's pool, or None when ``pool.size`` is 0; refuses one that does not fit in memory before training.
    ``feature_dim`` > 0 keeps the teacher's pre-logits of that size too."""
    p, d = cfg.pool, cfg.data
    if p.size == 0:
        return None
    per_image = 4 * (d.channels * d.image_size ** 2 + d.num_classes + feature_dim)  # float32 image, logits, features
    capacity = p.size if p.mb is None else min(p.size, int(p.mb * 1e6 // per_image))
    if capacity < cfg.batch_size:
        raise DfkdError(f"the replay pool holds {capacity} images (pool.size={p.size}, pool.mb={p.mb}), less than "
                        f"one batch ({cfg.batch_size}); raise pool.size / pool.mb")
    need = capacity * per_image
    free = _free_bytes(device)
    if need > 0.8 * free:
        raise DfkdError(f"the replay pool needs {need / 1e6:.0f} MB ({capacity} images of {per_image} bytes) and "
                        f"{device} has {free / 1e6:.0f} MB free; lower pool.size or set pool.mb")
    shape = (d.channels, d.image_size, d.image_size)
    return SamplePool(capacity, shape, d.num_classes, device, seed=cfg.seed * 1000 + process_index + 7,
                      feature_dim=feature_dim)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available
