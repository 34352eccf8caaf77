"""Reference proxy models: each module has ``build(width=..., depth=..., **options)``."""

from . import gpt, mlp, moe

__all__ = ["gpt", "mlp", "moe"]
