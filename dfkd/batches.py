"""Where a step's images come from besides the generator, each drawn by an RNG of its own that checkpoints carry
(``Parts.extras``): the latent codes, ``scheme=real_data``'s real images, and ``student.augment``'s jitter."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from dfkd.losses import TeacherOutput
from dfkd.models.normalize import Normalize


class Seeded:
    """A random source whose state is its RNG's: a checkpoint keeps it, a resume draws on from it (anything cached
    besides, like the teacher's logits of real images, is recomputed on demand)."""

    def __init__(self, device: torch.device, seed: int):
        self.rng = torch.Generator(device).manual_seed(seed)

    def state_dict(self) -> torch.Tensor:
        return self.rng.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.rng.set_state(state)


class LatentCodes(Seeded):
    """Fresh latent codes for every step, drawn from a generator of their own (a checkpoint keeps its state)."""

    def __init__(self, batch: int, nz: int, device: torch.device, seed: int):
        self.batch, self.nz, self.device = batch, nz, device
        super().__init__(device, seed)

    def __call__(self) -> torch.Tensor:
        return torch.randn(self.batch, self.nz, generator=self.rng, device=self.device)


class RealImages(Seeded):
    """Batches of a real training split (teacher inputs, on the device), drawn uniformly with their own RNG, and
    the teacher's logits of each image once computed: the teacher is frozen, so they never change."""

    def __init__(self, images: torch.Tensor, batch: int, device: torch.device, seed: int):
        self.images, self.batch = images.to(device), batch
        self.logits: Optional[torch.Tensor] = None  # (images, classes) once the first batch is seen
        self.known = torch.zeros(len(images), dtype=torch.bool, device=device)
        super().__init__(device, seed)

    def __call__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.images), (self.batch,), generator=self.rng, device=self.images.device)
        return self.images[idx], idx

    @torch.no_grad()
    def teacher_logits(self, teacher: Callable[[torch.Tensor], TeacherOutput], x: torch.Tensor,
                       idx: torch.Tensor) -> TeacherOutput:
        """The teacher's logits for images ``idx`` (``x``): computed only for those not seen before."""
        new = ~self.known[idx]
        if new.any():
            logits = teacher(x[new]).logits.float()
            if self.logits is None:
                self.logits = torch.empty(len(self.images), logits.shape[1], device=logits.device)
            self.logits[idx[new]] = logits
            self.known[idx[new]] = True
        return TeacherOutput(self.logits[idx])


class IntensityJitter(Seeded):
    """``student.augment=intensity``: each image's pixels ``p -> a * p + b``, ``a ~ U(LOW, 1)``, ``b ~ U(0, 1 - a)``
    (a random contrast and brightness that keeps pixels in [0, 1]), on teacher inputs (the contract's mean/std undone
    and redone).

    A teacher that normalises each image (GroupNorm after its first convolution) answers the same whatever an
    image's brightness, so the generator's images keep the grey level they start with; a student without that
    invariance, trained on them alone, fails on real images. Jittered and labelled anew by the teacher, the
    images teach the student the teacher's answer over the range of brightness and contrast."""

    LOW = 0.25

    def __init__(self, mean, std, device: torch.device, seed: int):
        self.normalize = Normalize(mean, std).to(device)
        super().__init__(device, seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = (len(x),) + (1,) * (x.dim() - 1)
        a = torch.rand(shape, generator=self.rng, device=x.device).mul_(1 - self.LOW).add_(self.LOW)
        b = torch.rand(shape, generator=self.rng, device=x.device).mul_(1 - a)
        return self.normalize(self.normalize.invert(x.float()) * a + b).to(x.dtype)
