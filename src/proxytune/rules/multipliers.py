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
- ``residual`` and ``residual_attn_ratio``: forward multipliers on the
  residual branches' outputs, ``alpha_attn`` on attention branches and
  ``alpha_mlp`` on the others, with ``alpha_mlp = residual x sqrt(2 / (1 +
  ratio^2))`` and ``alpha_attn = ratio x alpha_mlp`` (u-muP's rule: the ratio
  moves weight between the two kinds, ``residual`` scales both).
- ``activation``: forward multiplier on the MLP's pre-activation (its input
  projection: the gate of a gated MLP), ``act(activation x h)``.

u-muP's named HPs are these: ``attn_mult`` = ``attention``,
``loss_softmax_mult`` = ``output``, ``residual_mult`` = ``residual``,
``residual_attn_ratio``, ``act_mult`` = ``activation``.

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
from .umup import branch_alphas

ROLES: tuple[str, ...] = ("embedding", "hidden", "readout", "vector", "scalar")
FORWARD: tuple[str, ...] = ("output", "embedding", "attention", "residual", "residual_attn_ratio", "activation")


@dataclass(frozen=True)
class Multipliers:
    """The named multipliers of one plan (all 1 by default: the recipe alone).

    ``lr`` and ``init`` map roles to constants (missing roles are 1);
    ``output``, ``embedding``, ``attention``, ``residual``,
    ``residual_attn_ratio`` and ``activation`` are forward multipliers.
    """

    lr: Mapping[str, float] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    output: float = 1.0
    embedding: float = 1.0
    attention: float = 1.0
    residual: float = 1.0
    residual_attn_ratio: float = 1.0
    activation: float = 1.0

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
    def forward_for(self, role: str, *, query: bool = False, branch: str | None = None,
                    act_input: bool = False) -> float:
        """The named forward multiplier of a tensor of ``role`` (``query``: a query projection tensor that
        carries the attention multiplier; ``branch``: ``"attn"`` or ``"mlp"`` for a residual-branch output;
        ``act_input``: the MLP's pre-activation projection)."""
        f = 1.0
        if role == "readout":
            f *= self.output
        elif role == "embedding":
            f *= self.embedding
        if query:
            f *= self.attention
        if branch is not None:
            a_attn, a_mlp = self.branch_alphas()
            f *= a_attn if branch == "attn" else a_mlp
        if act_input:
            f *= self.activation
        return f

    def branch_alphas(self) -> tuple[float, float]:
        """``(alpha_attn, alpha_mlp)`` of the residual multipliers (both 1 by default)."""
        if self.residual == 1.0 and self.residual_attn_ratio == 1.0:
            return 1.0, 1.0

        return branch_alphas(self.residual, self.residual_attn_ratio)

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
        d = {"lr": dict(self.lr), "init": dict(self.init), "output": self.output, "embedding": self.embedding,
             "attention": self.attention}
        # the residual and activation multipliers only when set, so plans without them keep their digest
        d.update({n: getattr(self, n) for n in FORWARD[3:] if getattr(self, n) != 1.0})
        return d

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
        (the sweep names ``role_lr.<role>``, ``role_init.<role>``, ``output_mult``, ``embedding_mult``,
        ``attn_mult``, ``residual_mult``, ``act_mult`` and ``loss_softmax_mult`` work too)."""
        aliases = {"output_mult": "output", "embedding_mult": "embedding", "attn_mult": "attention",
                   "loss_softmax_mult": "output", "residual_mult": "residual", "act_mult": "activation"}
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
