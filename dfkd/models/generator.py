"""The generator of DFAD ("GeneratorA"): z -> linear -> 2x(upsample, conv, BN, LeakyReLU) -> conv -> tanh -> BN.

The last BatchNorm has no affine parameters; it keeps the synthetic images roughly
standardised, i.e. in the same normalised space the teacher's inputs live in.
"""
from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """Maps ``z ~ N(0, I)`` of size ``nz`` to ``channels x image_size x image_size`` images.

    ``ngf`` is the width: DFAD uses 64; 16 is a light generator for CPU runs.
    """

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3):
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
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z)
        return self.net(x.view(z.shape[0], -1, self.init_size, self.init_size))
