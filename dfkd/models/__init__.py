"""Networks dfkd registers in timm (importing this package registers them) and the generator."""
from dfkd.models import lenet  # noqa: F401  (registers lenet5, lenet5_half)
from dfkd.models.generator import Generator

__all__ = ["Generator"]
