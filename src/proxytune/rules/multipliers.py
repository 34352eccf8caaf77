"""Named multipliers: constants tuned once at the base shape, carried to every shape by the recipe.

A recipe says how each tensor's init, LR and forward scale change with width
and depth, *relative to the base*. It says nothing about the base values
themselves, and at small scale those matter as much as the exponents:
Everett et al. 2024 ("Scaling Exponents Across Parameterizations and
Optimizers") tune one LR constant per layer at the base width, and the muP
GPT-3 run of Tensor Programs V used an input-embedding multiplier of 10 and a
tuned output multiplier. These are the *named multipliers*:

- ``lr[role]``: per-role LR constants (Everett's gamma); the tensor's LR is
  ``base_lr x lr[role] x`` the recipe's LR rule. 0 freezes the role.
- ``init[role]``: per-role init multipliers on top of the recipe's init
  (``init["readout"] = 0`` is a zero-initialized readout).
- ``output``: forward multiplier on the readout weight (the logits, for a
  readout without bias).
- ``embedding``: forward multiplier on every embedding-role tensor (the input
  embeddings, token and position).
- ``attention``: multiplier on the attention logits (``softmax(attention x
  q.k x scale)``).

Each is width-independent: the recipe's rules supply all the width and depth
dependence, so a constant tuned at the base means the same at the target. The
forward multipliers are applied like the recipe's own (explicit mode: in the
forward pass; folded mode: absorbed into init, LR, eps and weight decay by
the abc symmetry), which is why, for Adam-family optimizers without gradient
clipping, ``output = a`` trains exactly like ``init["readout"] x a`` with
``lr["readout"] x a``: the forward multipliers add no new freedom to the init
and LR constants, they move both along the direction that keeps the
function's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

ROLES: tuple[str, ...] = ("embedding", "hidden", "readout", "vector", "scalar")
FORWARD: tuple[str, ...] = ("output", "embedding", "attention")


@dataclass(frozen=True)
class Multipliers:
    """The named multipliers of one plan (all 1 by default: the recipe alone).

    ``lr`` and ``init`` map roles to constants (missing roles are 1);
    ``output``, ``embedding`` and ``attention`` are forward multipliers.
    """

    lr: Mapping[str, float] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    output: float = 1.0
    embedding: float = 1.0
    attention: float = 1.0

    def __post_init__(self) -> None:
        for kind, table in (("lr", self.lr), ("init", self.init)):
            for role, value in table.items():
                if role not in ROLES:
                    raise ValueError(f"{kind} multiplier for unknown role {role!r}; valid: {', '.join(ROLES)}")
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{kind} multiplier for role {role!r} must be a finite number >= 0, "
                                     f"got {value!r}")
        for name in FORWARD:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} multiplier must be a finite number > 0, got {value!r}")
        # frozen dataclass: store plain dicts so the object is a value (copies compare equal)
        object.__setattr__(self, "lr", {r: float(v) for r, v in self.lr.items()})
        object.__setattr__(self, "init", {r: float(v) for r, v in self.init.items()})

    # ------------------------------------------------------------------ per tensor
    def forward_for(self, role: str, *, query: bool = False) -> float:
        """The named forward multiplier of a tensor of ``role`` (``query``: a query projection tensor that
        carries the attention multiplier)."""
        f = 1.0
        if role == "readout":
            f *= self.output
        elif role == "embedding":
            f *= self.embedding
        if query:
            f *= self.attention
        return f

    def lr_for(self, role: str) -> float:
        return float(self.lr.get(role, 1.0))

    def init_for(self, role: str) -> float:
        return float(self.init.get(role, 1.0))

    # ------------------------------------------------------------------ data
    @property
    def is_default(self) -> bool:
        """True when every multiplier is 1 (the plan is the recipe alone)."""
        return (all(v == 1.0 for v in self.lr.values()) and all(v == 1.0 for v in self.init.values())
                and all(getattr(self, n) == 1.0 for n in FORWARD))

    def to_dict(self) -> dict[str, Any]:
        return {"lr": dict(self.lr), "init": dict(self.init), "output": self.output,
                "embedding": self.embedding, "attention": self.attention}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Multipliers:
        d = dict(d or {})
        unknown = set(d) - {"lr", "init", *FORWARD}
        if unknown:
            raise ValueError(f"unknown multiplier key(s) {', '.join(sorted(unknown))}; valid: lr, init, "
                             f"{', '.join(FORWARD)}")
        return cls(**d)

    @classmethod
    def from_items(cls, items: list[str]) -> Multipliers:
        """From ``key=value`` strings: ``lr.<role>``, ``init.<role>``, ``output``, ``embedding``, ``attention``
        (the sweep names ``role_lr.<role>``, ``role_init.<role>``, ``output_mult``, ``embedding_mult`` and
        ``attn_mult`` work too)."""
        aliases = {"output_mult": "output", "embedding_mult": "embedding", "attn_mult": "attention"}
        d: dict[str, Any] = {"lr": {}, "init": {}}
        for item in items:
            key, sep, text = item.partition("=")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"multiplier {item!r}: expected key=number") from None
            if not sep:
                raise ValueError(f"multiplier {item!r}: expected key=number")
            key = aliases.get(key.strip(), key.strip())
            kind, dot, role = key.partition(".")
            kind = {"role_lr": "lr", "role_init": "init"}.get(kind, kind)
            if dot and kind in ("lr", "init"):
                d[kind][role] = value
            elif not dot and kind in FORWARD:
                d[kind] = value
            else:
                raise ValueError(f"unknown multiplier {key!r}; valid: lr.<role>, init.<role>, "
                                 f"{', '.join(FORWARD)}")
        return cls(**d)

    def describe(self) -> str:
        """One line: the multipliers that differ from 1 (``none`` when all are 1)."""
        parts = [f"lr[{r}] x{v:g}" for r, v in self.lr.items() if v != 1.0]
        parts += [f"init[{r}] x{v:g}" for r, v in self.init.items() if v != 1.0]
        parts += [f"{n} x{getattr(self, n):g}" for n in FORWARD if getattr(self, n) != 1.0]
        return ", ".join(parts) or "none (all 1)"
