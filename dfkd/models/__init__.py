"""Networks dfkd registers in timm (importing this package registers them) and the generator."""
from dfkd.models import cifar_resnet, lenet, mobilenetv2, vgg, wrn  # noqa: F401  (register the zoo in timm)
from dfkd.models.generator import Generator

__all__ = ["Generator"]
