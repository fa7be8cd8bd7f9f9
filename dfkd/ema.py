"""A weight-averaged (EMA) copy of a network: the student's is evaluated, kept and exported in place of
the trained one (``student.ema``); the generator's makes part of the student's images (MAD, ``generator.ema``).

The generator keeps moving, so the trained student's accuracy swings from one evaluation to the next;
an exponential moving average of its weights (Polyak averaging, as in Mean Teacher or timm's ModelEma)
follows the trend and smooths the swings. The average is taken once per scheme cycle, with the decay
raised to the cycle's number of updates, so ``decay`` is per update whatever the scheme; early on it
is capped at ``(1 + n) / (10 + n)`` after ``n`` updates, so the average does not drag the random
initial weights along.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, train_mode: bool = False):
        self.model, self.decay = model, decay  # the bare (unwrapped) module
        # the generator's average runs in train mode: its BatchNorm normalises each batch, as the generator's does
        self.module = copy.deepcopy(model).train(train_mode).requires_grad_(False)

    @torch.no_grad()
    def update(self, updates: int, made: int) -> None:
        """Average in the model after a cycle that made ``made`` updates, ``updates`` in all."""
        before = updates - made
        decay = min(self.decay, (1 + before) / (10 + before)) ** made
        for avg, now in zip(self.module.state_dict().values(), self.model.state_dict().values()):
            if avg.is_floating_point():
                avg.lerp_(now.to(avg.dtype), 1 - decay)
            else:  # e.g. BatchNorm's num_batches_tracked
                avg.copy_(now)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state) -> None:
        self.module.load_state_dict(state)
