"""The generator of DFAD ("GeneratorA"): z -> linear -> 2x(upsample, conv, BN, LeakyReLU) -> conv -> output.

Two outputs (``generator.output``):

- ``standardized`` (DFAD's): tanh, then a BatchNorm without affine parameters: every batch has mean 0 and
  std 1 per channel. In pixels that is the teacher's normalisation mean and std, which are the data's own
  statistics only when the teacher was normalised with them (DFAD's MNIST LeNet: 0.1307 / 0.3081). A teacher
  normalised with generic values (timm's 0.5 / 0.5, ImageNet's) gets images of that brightness instead.
- ``pixels``: a sigmoid gives pixels in [0, 1], as every real image has, normalised with the teacher's mean
  and std: the generator chooses the images' brightness and contrast itself, inside the range real ones span.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from dfkd.models.normalize import Normalize


class Generator(nn.Module):
    """Maps ``z ~ N(0, I)`` of size ``nz`` to ``channels x image_size x image_size`` teacher inputs.

    ``ngf`` is the width: DFAD uses 64; 16 is a light generator for CPU runs. With ``mean`` and ``std`` (the
    teacher's, per channel, on 0-1 pixels) the output is ``pixels``, without them DFAD's ``standardized``.
    """

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"generator image_size must be a multiple of 4, got {image_size}")
        self.nz, self.init_size = nz, image_size // 4
        self.project = nn.Linear(nz, 2 * ngf * self.init_size**2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            *((nn.Tanh(), nn.BatchNorm2d(channels, affine=False)) if mean is None else
              (nn.Sigmoid(), Normalize(mean, std))),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z)
        return self.net(x.view(z.shape[0], -1, self.init_size, self.init_size))


@torch.no_grad()
def draw(generator: nn.Module, nz: int, n: int, seed: int, batch: int) -> torch.Tensor:
    """``n`` images (teacher inputs, on the CPU) from the latent codes of ``seed``, ``batch`` at a time, drawn as
    in training: in train mode, BatchNorm on batch statistics, by a copy, so the generator's own running
    statistics and mode are left untouched."""
    g = copy.deepcopy(generator).float().train()
    device = next(g.parameters()).device
    z = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))
    return torch.cat([g(chunk.to(device)).cpu() for chunk in z.split(batch)])
