"""dfkd: data-free knowledge distillation, one stage or two.

    import dfkd
    result = dfkd.distill(teacher=model, student="lenet5_half", input_size=(1, 32, 32), mean=(0.13,), std=(0.31,))

``distill``, ``export``, ``compare`` and ``Result`` load on first use (dfkd/api.py), so ``import dfkd`` and the
commands' ``--help`` stay light; ``DfkdError`` is every user mistake, with its one-line message.
"""
from dfkd.errors import DfkdError

__all__ = ["DfkdError", "Result", "compare", "distill", "export"]


def __getattr__(name: str):
    if name in ("Result", "compare", "distill", "export"):
        from dfkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'dfkd' has no attribute '{name}'")
