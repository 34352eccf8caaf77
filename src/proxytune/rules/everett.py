"""abc-parameterizations and their per-layer learning-rate exponents.

Source: Everett et al. 2024, "Scaling Exponents Across Parameterizations and
Optimizers". A parameterization gives every layer a forward multiplier
``n^-a``, an init std ``n^-b`` and a learning rate ``n^-c`` (``n`` = width,
here always the width *multiplier* relative to the base model). The layers are
the embedding (finite -> width), the hidden layers (width -> width) and the
readout (width -> finite). Vectors (biases, norm gains) follow the embedding
row: a bias is an embedding of a constant input.

This module is pure data plus the stability constraints the table was solved
from, so a test (and a curious user) can re-derive every entry.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

Layer = Literal["embedding", "hidden", "readout"]
LAYERS: tuple[Layer, ...] = ("embedding", "hidden", "readout")
Alignment = Literal["full", "none"]
ALIGNMENTS: tuple[str, ...] = ("full", "none")

_h = Fraction(1, 2)

#: (a, b) per layer: forward multiplier n^-a, init std n^-b.
AB: dict[str, dict[Layer, tuple[Fraction, Fraction]]] = {
    "sp": {"embedding": (Fraction(0), Fraction(0)), "hidden": (Fraction(0), _h), "readout": (Fraction(0), _h)},
    "ntk": {"embedding": (Fraction(0), Fraction(0)), "hidden": (_h, Fraction(0)), "readout": (_h, Fraction(0))},
    "mup": {"embedding": (-_h, _h), "hidden": (Fraction(0), _h), "readout": (_h, _h)},
    "mf": {"embedding": (-_h, _h), "hidden": (_h, Fraction(0)), "readout": (Fraction(1), Fraction(0))},
}


def _c(*xs: float) -> dict[Layer, Fraction]:
    return {layer: Fraction(x).limit_denominator(4) for layer, x in zip(LAYERS, xs)}


#: Maximal stable LR exponents c (embedding, hidden, readout) per optimizer
#: family, parameterization and alignment assumption. For SGD with no
#: alignment, muP and MF admit a family of solutions; the table picks one.
LR_EXPONENTS: dict[tuple[str, str, str], dict[Layer, Fraction]] = {
    ("sgd", "sp", "full"): _c(-0.5, 0.5, 1),
    ("sgd", "sp", "none"): _c(-0.5, 0, 0.5),
    ("sgd", "ntk", "full"): _c(-0.5, -0.5, 0),
    ("sgd", "ntk", "none"): _c(-0.5, -1, -0.5),
    ("sgd", "mup", "full"): _c(0, 0, 0),
    ("sgd", "mup", "none"): _c(0, -0.5, 0),
    ("sgd", "mf", "full"): _c(0, -1, -1),
    ("sgd", "mf", "none"): _c(0, -1.5, -1),
    ("adam", "sp", "full"): _c(0, 1, 1),
    ("adam", "sp", "none"): _c(0, 0.5, 0.5),
    ("adam", "ntk", "full"): _c(0, 0.5, 0.5),
    ("adam", "ntk", "none"): _c(0, 0, 0),
    ("adam", "mup", "full"): _c(0.5, 1, 0.5),
    ("adam", "mup", "none"): _c(0.5, 0.5, 0),
    ("adam", "mf", "full"): _c(0.5, 0.5, 0),
    ("adam", "mf", "none"): _c(0.5, 0, -0.5),
    ("adafactor", "sp", "full"): _c(0, 0.5, 0.5),
    ("adafactor", "sp", "none"): _c(0, 0, 0),
    ("adafactor", "ntk", "full"): _c(0, 0.5, 0.5),
    ("adafactor", "ntk", "none"): _c(0, 0, 0),
    ("adafactor", "mup", "full"): _c(0, 0.5, 0),
    ("adafactor", "mup", "none"): _c(0, 0, 0),
    ("adafactor", "mf", "full"): _c(0, 0.5, 0),
    ("adafactor", "mf", "none"): _c(0, 0, 0),
    # Updates whose spectral norm is set by the LR alone (Shampoo's L^-1/4 G R^-1/4 = U V^T for one gradient):
    # the spectral condition (Yang, Simon & Bernstein 2023) wants the effective weight's update of norm
    # sqrt(fan_out / fan_in), i.e. n^-a n^-c ~ (n^1/2, 1, n^-1/2): c = (-1/2, 0, 1/2) - a. Full alignment only.
    ("spectral", "sp", "full"): _c(-0.5, 0, 0.5),
    ("spectral", "ntk", "full"): _c(-0.5, -0.5, 0),
    ("spectral", "mup", "full"): _c(0, 0, 0),
    ("spectral", "mf", "full"): _c(0, -0.5, -0.5),
    # Dion (Ahn et al. 2025, "Dion: Distributed Orthonormalized Updates"): hidden matrices take its low-rank
    # orthonormalized step scaled by sqrt(fan_out / fan_in), whose spectral norm is set by the LR alone: the
    # spectral row's hidden entry, -a. Embeddings, vectors and the readout take AdamW's step: Adam's
    # full-alignment entries. Full alignment only (the spectral entry is maximal there).
    ("dion", "sp", "full"): _c(0, 0, 1),
    ("dion", "ntk", "full"): _c(0, -0.5, 0.5),
    ("dion", "mup", "full"): _c(0.5, 0, 0.5),
    ("dion", "mf", "full"): _c(0.5, -0.5, 0),
}


def backward_exponent(param: str) -> Fraction:
    """Exponent g of the backward signal at the readout input: ``n^-g`` with
    ``g = a_{L+1} + b_{L+1}`` (the readout sums over a finite dimension)."""
    a, b = AB[param]["readout"]
    return a + b


def adam_equivalent_c(family: str, param: str, c: dict[Layer, Fraction]) -> dict[Layer, Fraction]:
    """Map an optimizer's LR exponents to the exponent of its per-entry update
    size, which is what the Adam constraints are written in.

    - Adam: the update entry is ``lr`` itself (gradient-scale free).
    - SGD: the update entry is ``lr x grad``; the gradient of layer l is
      ``n^-(a_l + g)`` where g is the backward-signal exponent. Once the readout
      moves, g is ``min(a+b, 2a+c)`` of the readout (its init or its update,
      whichever is larger), which is what makes the SGD no-alignment rows a
      family.
    - Adafactor: the update entry is ``lr x rms(param)`` = ``n^-(c + b)``.
    - spectral (Shampoo): the LR sets the update's spectral norm. An aligned Adam step with entries ``n^-c'``
      has spectral norm ``n^-c' sqrt(fan_in x fan_out)``, so the Adam entry of the same step is ``c + 1/2``
      (embedding, readout: one fan grows) and ``c + 1`` (hidden: both grow). This holds under full
      alignment, the only column the spectral rows have.
    - dion: its hidden matrices step as the spectral rows do (``c + 1``), the rest is Adam (``c``).
    """
    if family == "adam":
        return dict(c)
    if family == "sgd":
        a_r, b_r = AB[param]["readout"]
        g = min(a_r + b_r, 2 * a_r + c["readout"])
        out = {}
        for layer in LAYERS:
            a_l = AB[param][layer][0]
            out[layer] = c[layer] + a_l + (0 if layer == "readout" else g)
        return out
    if family == "adafactor":
        return {layer: c[layer] + AB[param][layer][1] for layer in LAYERS}
    if family == "spectral":
        fans = {"embedding": _h, "hidden": Fraction(1), "readout": _h}
        return {layer: c[layer] + fans[layer] for layer in LAYERS}
    if family == "dion":
        return {layer: c[layer] + (1 if layer == "hidden" else 0) for layer in LAYERS}
    raise ValueError(f"unknown optimizer family {family!r}")


def stability_margins(
    family: str, param: str, alignment: str, c: dict[Layer, Fraction], *, n_hidden: int = 3
) -> dict[str, Fraction]:
    """Every stability constraint of Everett et al. as a named margin (>= 0 when
    satisfied), for a network with ``n_hidden`` hidden layers.

    Constraints (Adam form; other optimizers enter through their per-entry
    update exponent, see :func:`adam_equivalent_c`):
    ``r_1 = a_1 + c_1 >= 0``;
    ``r_l = min(a_l + c_l - alpha, a_l + c_l + r_{l-1} - u, 1/2 + r_{l-1} - omega) >= 0``;
    logits ``min(a+b+r_L-omega, a+c-alpha, a+c+r_L-u) >= 0`` for the readout;
    init ``a_1+b_1 = 0``, ``a_l+b_l = 1/2``, ``a_{L+1}+b_{L+1} >= 1/2``.
    Full alignment: ``alpha = u = 1, omega = 1/2``; none: all ``1/2``.
    Adafactor also needs ``c_l >= 0``: its step is relative to the parameter,
    so a step that grows with width compounds across steps.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; valid: {', '.join(ALIGNMENTS)}")
    alpha, u, omega = (Fraction(1), Fraction(1), _h) if alignment == "full" else (_h, _h, _h)
    ce = adam_equivalent_c(family, param, c)
    ab = AB[param]
    m: dict[str, Fraction] = {}
    a1, b1 = ab["embedding"]
    m["init:embedding"] = -abs(a1 + b1)
    ah, bh = ab["hidden"]
    m["init:hidden"] = -abs(ah + bh - _h)
    ar, br = ab["readout"]
    m["init:readout"] = ar + br - _h
    r = a1 + ce["embedding"]
    m["r_1"] = r
    for layer in range(2, n_hidden + 2):
        r = min(ah + ce["hidden"] - alpha, ah + ce["hidden"] + r - u, _h + r - omega)
        m[f"r_{layer}"] = r
    m["logits"] = min(ar + br + r - omega, ar + ce["readout"] - alpha, ar + ce["readout"] + r - u)
    if family == "adafactor":
        for layer in LAYERS:
            m[f"relative_step:{layer}"] = c[layer]
    return m


def is_stable(family: str, param: str, alignment: str, c: dict[Layer, Fraction]) -> bool:
    """True when every constraint of :func:`stability_margins` holds."""
    return all(v >= 0 for v in stability_margins(family, param, alignment, c).values())
