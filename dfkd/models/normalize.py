"""Per-channel normalisation as a module: one for the generator's pixel output, exported models and real images;
``invert`` takes teacher inputs back to pixels (sample grids, held-out images, int8 calibration)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: 0-1 pixels to the teacher's input (generator, exported models, real images).
    Constants, not state: nothing saved, computed in the input's dtype."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher inputs back to pixels, ``x * std + mean``, on ``x``'s device and in its dtype."""
        return x * self.std.to(x) + self.mean.to(x)
