"""Recipes and optimizers as data, and the per-tensor scaling they imply.

Every number here is a multiplier relative to the base model: at the base shape
(all width and depth multipliers 1) every multiplier is exactly 1, which is the
contract that makes "tune at base, transfer to target" mean something.

Two equivalent forms are computed for each tensor (Everett et al. 2024, the
abc symmetry):

- *explicit*: the parameterization as written in the papers, with a forward
  multiplier on the weight (``W_eff = multiplier x W``);
- *folded*: the multiplier absorbed into init, LR, eps and weight decay, so the
  forward pass is the user's own, untouched.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

from .everett import AB, LR_EXPONENTS, backward_exponent


@dataclass(frozen=True)
class Recipe:
    """One parameterization recipe.

    Attributes:
        name: the name users pass (``recipe="mup"``).
        abc: row of :data:`proxytune.rules.everett.AB` used for width.
        per_layer_lr: use Everett's per-layer LR exponents; False means one
            global LR (what plain SP training does).
        track_eps: scale Adam's eps with each tensor's gradient scale.
        depth_alpha: residual-branch exponent ``x <- x + m_L^-alpha F(x)``;
            None for recipes without a depth rule.
        attn_exponent: attention logits get ``(d_head / base_d_head)^attn_exponent``
            (-1/2 turns 1/sqrt(d_head) into 1/d_head relative to the base).
        tied_readout_multiplier: a weight tied between embedding and readout
            keeps the embedding rules; the readout use then needs a forward
            multiplier to get the readout's scale.
        source: the paper(s) the rules come from.
        summary: one line for ``explain``.
        unit: absolute unit-scaled rules (u-muP, :mod:`proxytune.rules.umup`) instead of multipliers
            relative to the base; such a recipe lives in explicit mode.
    """

    name: str
    abc: str
    per_layer_lr: bool
    track_eps: bool
    depth_alpha: float | None
    attn_exponent: float
    tied_readout_multiplier: bool
    source: str
    summary: str
    unit: bool = False


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("sp", "sp", False, False, None, 0.0, False,
               "Everett et al. 2024 (standard parameterization)",
               "fan-in init, one global LR, constant eps"),
        Recipe("ntk", "ntk", True, True, None, 0.0, False,
               "Everett et al. 2024 (NTK parameterization)",
               "NTK multipliers with maximal stable per-layer LR exponents"),
        Recipe("mup", "mup", True, True, None, -0.5, True,
               "Yang et al. 2022 (Tensor Programs V); Everett et al. 2024",
               "muP width rules, attention 1/d_head"),
        Recipe("mf", "mf", True, True, None, -0.5, True,
               "Everett et al. 2024 (mean-field parameterization)",
               "mean-field multipliers; equal to muP by the abc symmetry"),
        Recipe("sp-perlayer", "sp", True, True, None, 0.0, False,
               "Everett et al. 2024 (SP with per-layer LR exponents)",
               "SP init with Everett's per-layer LR exponents and scaled eps"),
        Recipe("depth-mup", "mup", True, True, 0.5, -0.5, True,
               "Bordelon et al. 2023; Yang et al. 2023 (depth-muP)",
               "muP width rules + residual branches scaled by m_L^-1/2"),
        Recipe("completep", "mup", True, True, 1.0, -0.5, True,
               "Dey et al. 2025 (CompleteP)",
               "muP width rules + residual branches scaled by m_L^-1"),
        Recipe("u-mup", "mup", True, False, 0.5, -0.5, True,
               "Blake et al. 2024 (u-muP: The Unit-Scaled Maximal Update Parametrization)",
               "unit init, scales in the forward pass, tau residual rule, absolute LR table", unit=True),
    )
}


@dataclass(frozen=True)
class OptimizerSpec:
    """How an optimizer's update reacts to a rescaled parameter.

    ``lr_power`` is the exponent of the abc symmetry for the LR: rescaling a
    weight by ``s`` (``W' = s W``) keeps training identical when
    ``lr' = lr x s^lr_power``: 2 for SGD (update ~ lr x grad, grad ~ 1/s),
    1 for sign-like updates (Adam, Adam-atan2, Muon) and for any update that
    does not depend on the gradient's scale (SOAP, Shampoo, Dion), 0 for Adafactor,
    whose step is relative to the parameter's RMS. Weight decay folds as
    ``wd' = wd x s^-wd_fold_power``: lr-coupled decoupled decay (AdamW) keeps
    ``lr x wd``; Adam's L2 term enters the gradient, so it needs ``s^-2``.

    ``eps_power`` says in which units the eps is added: 1 when it is added to
    something of the gradient's own size (Adam's ``sqrt(v) + eps``); 2 when it
    is a damping added to second-moment statistics (Shampoo's ``eps I + sum G
    G^T``). A damping folds as ``s^-2`` and, since the statistics sum over the
    tensor, it also follows the tensor's size (see :func:`explicit_scale`).

    ``alignment`` fixes the column of Everett et al.'s LR table the optimizer
    uses whatever the plan's ``alignment`` (empty: the plan's choice): SOAP
    takes the no-alignment column, Shampoo's spectral rows and Dion's rows
    exist for full alignment only (docs/parameterizations.md sections 17, 18).
    """

    name: str
    family: str
    lr_power: int
    has_eps: bool
    summary: str
    wd_power: int = -1  # fold exponent of weight decay; -1 means -lr_power (lr-coupled decay)
    eps_power: int = 1
    alignment: str = ""

    @property
    def wd_fold_power(self) -> int:
        return self.lr_power if self.wd_power < 0 else self.wd_power


OPTIMIZERS: dict[str, OptimizerSpec] = {
    o.name: o
    for o in (
        OptimizerSpec("sgd", "sgd", 2, False, "torch.optim.SGD"),
        OptimizerSpec("adam", "adam", 1, True, "torch.optim.Adam (weight decay as L2)", wd_power=2),
        OptimizerSpec("adamw", "adam", 1, True, "torch.optim.AdamW"),
        OptimizerSpec("adam-atan2", "adam", 1, False, "proxytune.optim.AdamAtan2 (no eps)"),
        OptimizerSpec("adafactor", "adafactor", 0, True, "torch.optim.Adafactor"),
        OptimizerSpec("muon", "adam", 1, True, "proxytune.optim.Muon: Muon on hidden matrices, AdamW on the rest"),
        OptimizerSpec("soap", "adam", 1, True, "pytorch_optimizer.SOAP: Adam in Shampoo's eigenbasis; Adam's "
                      "no-alignment LR rows (measured)", alignment="none"),
        OptimizerSpec("shampoo", "spectral", 1, True, "pytorch_optimizer.Shampoo: L^-1/4 G R^-1/4; spectral LR "
                      "rows, damping ~ gradient^2 x size", eps_power=2, alignment="full"),
        OptimizerSpec("dion", "dion", 1, True, "proxytune.optim.Dion: low-rank orthonormalized momentum x "
                      "sqrt(fan_out/fan_in) on hidden matrices (spectral LR rows), AdamW on the rest",
                      alignment="full"),
    )
}

WD_POLICIES: tuple[str, ...] = ("independent", "sqrt-width", "none")
MUON_SCALES: tuple[str, ...] = ("spectral", "rms")
ROLES: tuple[str, ...] = ("embedding", "hidden", "readout", "vector", "scalar")
MODES: tuple[str, ...] = ("folded", "explicit")
ALIGNMENT_CHOICES: tuple[str, ...] = ("full", "none")


def _suggest(value: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"valid: {', '.join(valid)}.{hint}"


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name, with an error listing the valid ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; {_suggest(name, tuple(RECIPES))}")
    return RECIPES[name]


def get_optimizer(name: str) -> OptimizerSpec:
    """Look an optimizer up by name, with an error listing the valid ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; {_suggest(name, tuple(OPTIMIZERS))}")
    return OPTIMIZERS[name]


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    """Raise a ValueError naming ``kind`` and the valid choices if ``value`` is not one."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; {_suggest(value, valid)}")
    return value


@dataclass
class Scale:
    """Multipliers for one tensor, relative to the base model's own values.

    ``multiplier`` is the forward multiplier on the weight (1 in folded form
    unless it cannot be folded); ``init`` multiplies the base init std; ``lr``,
    ``wd``, ``eps`` multiply the base learning rate, weight decay and eps.
    ``eps`` follows the tensor's gradient scale (Adafactor's parameter-scale
    floor follows ``init`` instead; a damping of squared-gradient statistics,
    Shampoo's, follows its square times the tensor's size).
    """

    multiplier: float = 1.0
    init: float = 1.0
    lr: float = 1.0
    wd: float = 1.0
    eps: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fold(scale: Scale, lr_power: int, keep: float = 1.0, wd_power: int | None = None, eps_power: int = 1) -> Scale:
    """Absorb the forward multiplier into the weight by the abc symmetry.

    ``W' = s W`` trains identically when ``lr' = lr s^p``, ``wd' = wd s^-p``
    (torch's weight decay is lr-coupled, so ``lr x wd`` must stay put) and
    ``eps' = eps / s`` (the gradient of ``W'`` is the gradient of ``W`` over s;
    a damping of squared-gradient statistics, ``eps_power=2``, needs ``s^-2``).
    ``keep`` is a part of the multiplier that must stay in the forward pass.
    """
    s = scale.multiplier / keep
    wp = lr_power if wd_power is None else wd_power
    return Scale(
        multiplier=keep,
        init=scale.init * s,
        lr=scale.lr * s**lr_power,
        wd=scale.wd / s**wp,
        eps=scale.eps / s**eps_power,
    )


def unfold(folded: Scale, multiplier: float, lr_power: int, wd_power: int | None = None,
           eps_power: int = 1) -> Scale:
    """Inverse of :func:`fold`: the explicit form with forward ``multiplier``."""
    s = multiplier / folded.multiplier
    wp = lr_power if wd_power is None else wd_power
    return Scale(
        multiplier=multiplier,
        init=folded.init / s,
        lr=folded.lr / s**lr_power,
        wd=folded.wd * s**wp,
        eps=folded.eps * s**eps_power,
    )


def _pow(m: float, e: Fraction | float) -> float:
    return float(m) ** float(e)


@dataclass(frozen=True)
class TensorContext:
    """What the rules need to know about one tensor.

    ``width`` is the tensor's width multiplier for its role (fan-out ratio for
    embeddings and vectors, fan-in ratio for hidden and readout tensors);
    ``depth`` the block-count ratio of its block stack (1 outside blocks);
    ``size`` the ratio of its number of entries to the base's (a damping of
    squared-gradient statistics follows it).
    """

    role: str
    width: float = 1.0
    depth: float = 1.0
    size: float = 1.0
    in_block: bool = False
    branch_output: bool = False
    attn_factor: float = 1.0
    muon_matrix: bool = False
    # named multipliers (proxytune.rules.multipliers), constants on top of the recipe's rules
    named_forward: float = 1.0
    named_init: float = 1.0
    named_lr: float = 1.0


def explicit_scale(
    recipe: Recipe, opt: OptimizerSpec, ctx: TensorContext, *, alignment: str, muon_scale: str
) -> Scale:
    """The explicit-form multipliers of one tensor (before weight decay)."""
    layer = {"embedding": "embedding", "vector": "embedding", "hidden": "hidden",
             "readout": "readout"}.get(ctx.role)
    p = opt.lr_power
    s = init = lr = eps = 1.0
    if layer is not None:
        a, b = AB[recipe.abc][layer]
        m = ctx.width
        if ctx.muon_matrix and recipe.per_layer_lr:
            # Muon's orthogonalized step has a width-free spectral norm with the
            # "spectral" scale (LR constant, like muP), or RMS ~ AdamW's with
            # the "rms" scale (then LR ~ 1/sqrt(fan_in)); c given in folded form.
            c = (Fraction(0) if muon_scale == "spectral" else Fraction(1, 2)) - a * p
        elif recipe.per_layer_lr:
            c = LR_EXPONENTS[(opt.family, recipe.abc, opt.alignment or alignment)][layer]
        else:
            c = -a * p  # one global LR in the folded (multiplier-free) form
        g = backward_exponent(recipe.abc)
        grad = -a if layer == "readout" else -(a + g)
        s = _pow(m, -a)
        init = _pow(m, -b)
        lr = _pow(m, -c)
        eps = _pow(m, grad) if recipe.track_eps else s
    if recipe.depth_alpha is not None and ctx.in_block and ctx.depth != 1.0:
        alpha = recipe.depth_alpha
        # Each block's update must move the residual stream by O(1/L):
        # sign-like steps need lr ~ L^(alpha-1), SGD lr ~ L^(2 alpha - 1).
        lr *= _pow(ctx.depth, (2 * alpha - 1) if p == 2 else (alpha - 1))
        if recipe.track_eps:
            eps *= _pow(ctx.depth, -alpha)  # every in-block gradient carries the branch factor
        if ctx.branch_output:
            s *= _pow(ctx.depth, -alpha)
    # The logit factor and the named forward multipliers act like the recipe's own multipliers: in the
    # forward pass when explicit, folded into init / lr / eps / wd otherwise. eps follows the raw gradient,
    # which a forward multiplier scales.
    forward = ctx.attn_factor * ctx.named_forward
    if forward != 1.0:
        s *= forward
        eps *= forward
    if opt.eps_power != 1:
        # A damping added to sum G G^T (and sum G^T G) competes with their eigenvalues, the squared singular
        # values of the gradient. For a gradient of fixed rank (a batch of fewer samples than the width; the
        # one-step view of Ishikawa & Karakida 2024) they are ||G||_F^2 / rank = gradient RMS^2 x entries:
        # the square of the gradient scale above times the tensor's size. A recipe with a constant eps (sp)
        # keeps the damping constant in the model's own (folded) units: s^2 here, which folds by s^-2 to 1.
        eps = eps**opt.eps_power * (ctx.size if recipe.track_eps else 1.0)
    return Scale(multiplier=s, init=init * ctx.named_init, lr=lr, wd=1.0, eps=eps)


def weight_decay_folded(policy: str, folded: Scale, ctx: TensorContext, lr_power: int,
                        recipe: Recipe) -> float:
    """Weight-decay multiplier in folded form for a named policy.

    - ``independent`` (default): ``lr x wd`` stays at its base value for every
      tensor (torch's AdamW decays by ``lr x wd``), as in the mup package and
      CompleteP.
    - ``sqrt-width`` (Fan et al. 2025): ``wd ~ sqrt(width)`` for hidden
      matrices on top of their LR rule, vectors not decayed; other tensors as
      ``independent``.
    - ``none``: the base weight decay on every tensor, unscaled.
    """
    if policy == "none":
        return 1.0
    if policy == "sqrt-width":
        if ctx.role == "vector":
            return 0.0
        if ctx.role == "hidden":
            depth_lr = 1.0
            if recipe.depth_alpha is not None and ctx.in_block:
                alpha = recipe.depth_alpha
                depth_lr = _pow(ctx.depth, (2 * alpha - 1) if lr_power == 2 else (alpha - 1))
            return math.sqrt(ctx.width) / depth_lr
    return 1.0 / folded.lr


def tensor_scales(
    recipe: Recipe, opt: OptimizerSpec, ctx: TensorContext, *, alignment: str = "full",
    muon_scale: str = "spectral", wd_policy: str = "independent",
) -> tuple[Scale, Scale]:
    """(explicit, folded) multipliers of one tensor, weight decay included.

    The named LR constant (``ctx.named_lr``) multiplies the LR after the weight-decay policy has set the
    decay, so a tuned per-role LR constant does not change the tensor's decay coefficient (as Everett et
    al.'s per-layer constants, and ``gamma`` in ``Plan.param_groups``).
    """
    e = explicit_scale(recipe, opt, ctx, alignment=alignment, muon_scale=muon_scale)
    f = fold(e, opt.lr_power, wd_power=opt.wd_fold_power, eps_power=opt.eps_power)
    f.wd = weight_decay_folded(wd_policy, f, ctx, opt.lr_power, recipe)
    e = unfold(f, e.multiplier, opt.lr_power, wd_power=opt.wd_fold_power, eps_power=opt.eps_power)
    if ctx.named_lr != 1.0:
        e.lr *= ctx.named_lr
        f.lr *= ctx.named_lr
    return e, f
