"""Networks dfkd registers in timm (importing this package registers them) and the generator."""
from contextlib import contextmanager
from typing import Iterator

from torch import nn

from dfkd.models import cifar_resnet, lenet, mobilenetv2, vgg, wrn  # noqa: F401  (register the zoo in timm)
from dfkd.models.generator import Generator

__all__ = ["Generator", "evaluating"]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, then back in the mode it had (also after an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
