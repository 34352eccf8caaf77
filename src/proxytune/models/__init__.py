"""Reference proxy models: each module has ``build(width=..., depth=..., **options)``."""

from . import gpt, mlp

__all__ = ["gpt", "mlp"]
