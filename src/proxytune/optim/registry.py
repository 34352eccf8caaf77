"""The optimizer registry: everything the runtime knows about an optimizer, in one entry.

:data:`REGISTRY` maps an optimizer's name (``optimizer="adamw"``) to its
:class:`OptimizerSpec`: how to build it (``build_optimizer``), the keyword
arguments the trainer gives it (``proxytune.train.setup.optimizer_kwargs``),
the extra keys of each param group (``Plan.param_groups``: eps, Muon's
``use_muon``/``scale``), its update over K stacked members for the batched
trainer (``proxytune.optim.batched``), and its state size (memory estimates).

How the optimizer's update reacts to a rescaled weight (the LR exponent, the
LR family of Everett's tables, whether it has an eps) is a rules-level fact and
stays in the torch-free rules table :data:`proxytune.rules.recipes.OPTIMIZERS`;
a spec refers to its entry there by name (``rules``), or brings a new entry.

Adding an optimizer is one :func:`register` call::

    register(OptimizerSpec("signsgd", SignSGD, rules="adam-atan2", batched_step=signsgd_step))

(``rules="adam-atan2"``: it scales like Adam-atan2: sign-like update, no eps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..rules import recipes as _rules
from .adam_atan2 import AdamAtan2
from .dion import DION_MATRIX_EPS, Dion
from .matrix import shampoo, soap
from .stacked import BatchedStep, adam_atan2_step, adam_step, adamw_step, muon_step, sgd_step
from .muon import Muon

__all__ = ["OptimizerSpec", "OptimizerSettings", "GroupExtras", "REGISTRY", "register", "unregister",
           "get_spec", "group_extras", "has_eps"]


class OptimizerSettings(Protocol):
    """The run settings an optimizer's default keywords follow (a ``TrainConfig`` has them)."""

    betas: tuple[float, float]
    momentum: float | None
    nesterov: bool | None


#: ``extras(tensor_plan, scale, eps) -> {key: value}``: the optimizer's own keys of one param group, from the
#: tensor's plan record (``TensorPlan``: ``muon``, ``muon_scale``...), its ``Scale`` in the plan's mode and the
#: base eps given to ``Plan.param_groups`` (None: the optimizer's default)
GroupExtras = Callable[[Any, _rules.Scale, Any], dict[str, Any]]


def no_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    return {}


def no_extras(tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
    return {}


def eps_extras(tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
    """An Adam-like eps: the base eps (default 1e-8) times the tensor's eps multiplier."""
    return {"eps": (1e-8 if eps is None else eps) * scale.eps}


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer, as the runtime uses it.

    Attributes:
        name: what users pass (``optimizer="adamw"``).
        factory: builds the torch optimizer: ``factory(groups, lr=lr, **kwargs)`` (an optimizer class).
        rules: its entry in the rules table :data:`proxytune.rules.recipes.OPTIMIZERS`: a name there (``""``:
            the optimizer's own name; another name: it scales as that one does) or a new rules entry.
        default_kwargs: the trainer's keyword arguments for the optimizer from the run's settings
            (``betas``, ``momentum``, ``nesterov`` of a ``TrainConfig``).
        group_extras: the optimizer's own keys of each param group (:data:`GroupExtras`); None: the base
            eps scaled per tensor when the optimizer has an eps, nothing otherwise.
        batched_step: its update of K stacked members (:data:`proxytune.optim.batched.BatchedStep`), the same
            arithmetic member by member; None: it trains one trial at a time.
        state_slots: optimizer-state tensors kept per parameter (memory estimates), from the run's settings.
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    rules: str | _rules.OptimizerSpec = ""
    default_kwargs: Callable[[OptimizerSettings], dict[str, Any]] = no_kwargs
    group_extras: GroupExtras | None = None
    batched_step: BatchedStep | None = None
    state_slots: Callable[[OptimizerSettings], int] = lambda settings: 2

    @property
    def scaling(self) -> _rules.OptimizerSpec:
        """The rules entry this optimizer follows (LR exponent, LR family, eps)."""
        if self.name in _rules.OPTIMIZERS:  # a registered optimizer always has its entry under its own name
            return _rules.OPTIMIZERS[self.name]
        if isinstance(self.rules, _rules.OptimizerSpec):
            return dataclasses.replace(self.rules, name=self.name)
        return _rules.get_optimizer(self.rules or self.name)

    @property
    def has_eps(self) -> bool:
        """Whether the update has an eps (which the plan then scales per tensor)."""
        return self.scaling.has_eps

    def extras(self, tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
        """The optimizer's own keys of the param group of one tensor (see ``group_extras``)."""
        if self.group_extras is not None:
            return self.group_extras(tp, scale, eps)
        return eps_extras(tp, scale, eps) if self.has_eps else {}


REGISTRY: dict[str, OptimizerSpec] = {}
# the rules entries register() added (and unregister() removes)
_ADDED_RULES: set[str] = set()


def _rules_entry(spec: OptimizerSpec) -> _rules.OptimizerSpec | None:
    """The rules entry ``spec`` brings under its own name; None when the table has it already."""
    current = _rules.OPTIMIZERS.get(spec.name)
    if isinstance(spec.rules, _rules.OptimizerSpec):
        entry = dataclasses.replace(spec.rules, name=spec.name)
        if current is not None and current != entry:
            raise ValueError(f"optimizer {spec.name!r} already has other rules ({current})")
        return None if current is not None else entry
    if spec.rules in ("", spec.name):
        if current is None:
            raise ValueError(f"optimizer {spec.name!r} has no entry in the rules table; give rules= the name "
                             f"of one it scales like ({', '.join(_rules.OPTIMIZERS)}) or a new entry")
        return None
    like = _rules.get_optimizer(spec.rules)
    if current is not None and dataclasses.replace(current, name=like.name, summary=like.summary) != like:
        raise ValueError(f"optimizer {spec.name!r} already has other rules than {spec.rules!r} ({current})")
    return None if current is not None else dataclasses.replace(like, name=spec.name,
                                                                summary=f"{spec.name} (scales as {like.name})")


def register(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add ``spec`` to the registry (and its rules entry to the rules table when it brings one)."""
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"optimizer {spec.name!r} is already registered (replace=True replaces it)")
    entry = _rules_entry(spec)
    if entry is not None:
        _rules.OPTIMIZERS[spec.name] = entry
        _ADDED_RULES.add(spec.name)
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove optimizer ``name`` from the registry, and the rules entry its registration added."""
    REGISTRY.pop(name, None)
    if name in _ADDED_RULES:
        _ADDED_RULES.discard(name)
        _rules.OPTIMIZERS.pop(name, None)


def get_spec(name: str) -> OptimizerSpec:
    """The registered optimizer ``name``, with an error listing the valid ones."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(REGISTRY)}")
    return spec


def group_extras(name: str) -> GroupExtras:
    """The param-group extras of optimizer ``name`` (for one only in the rules table: its eps, if it has one)."""
    spec = REGISTRY.get(name)
    if spec is not None:
        return spec.extras
    return eps_extras if _rules.get_optimizer(name).has_eps else no_extras


def has_eps(name: str) -> bool:
    """Whether optimizer ``name`` has an eps (from the rules table when it is not registered)."""
    spec = REGISTRY.get(name)
    return spec.has_eps if spec is not None else _rules.get_optimizer(name).has_eps


# ------------------------------------------------------------------------------------------------ built-ins
def _sgd_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    momentum = 0.9 if settings.momentum is None else settings.momentum
    return {"momentum": momentum, "nesterov": bool(settings.nesterov) and momentum > 0}


def _adam_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    return {"betas": settings.betas}


def _muon_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    return {"betas": settings.betas, "momentum": 0.95 if settings.momentum is None else settings.momentum,
            "nesterov": True if settings.nesterov is None else settings.nesterov}


def _adafactor_extras(tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
    """Adafactor's (eps1, eps2): eps1 follows the gradient scale, eps2 (a floor on the parameter scale) the
    init."""
    e1, e2 = eps if isinstance(eps, tuple) else (None, 1e-3 if eps is None else eps)
    return {"eps": (None if e1 is None else e1 * scale.eps, e2 * scale.init)}


def _shampoo_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    # no momentum by default (the library's); a momentum set in the run is passed on, and refused when built
    return {} if not settings.momentum else {"momentum": settings.momentum}


def _shampoo_extras(tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
    """Shampoo's damping ``matrix_eps`` (added to its statistics L and R): the base value (default the library's
    1e-6) times the tensor's damping multiplier (``Scale.eps`` of an optimizer with ``eps_power=2``)."""
    return {"matrix_eps": (1e-6 if eps is None else eps) * scale.eps}


def _dion_kwargs(settings: OptimizerSettings) -> dict[str, Any]:
    if settings.nesterov:
        raise ValueError("dion: nesterov=True is not offered: Dion's momentum is its error-feedback buffer "
                         "(Ahn et al. 2025), which has no Nesterov form; leave nesterov unset")
    return {"betas": settings.betas, "mu": 0.95 if settings.momentum is None else settings.momentum}


def _matrix_extras(flag: str, matrix_eps: float) -> GroupExtras:
    """The group keys of an optimizer with a matrix step on the plan's matrices (``tp.muon``) and AdamW
    elsewhere: the ``flag`` key, the matrix step's scale and its own eps (base ``matrix_eps``; the user's eps is
    AdamW's, default 1e-8), each eps times the tensor's eps multiplier."""

    def extras(tp: Any, scale: _rules.Scale, eps: Any) -> dict[str, Any]:
        if tp.muon:
            return {flag: tp.muon, "scale": tp.muon_scale, "eps": matrix_eps * scale.eps}
        return {flag: tp.muon, "eps": (1e-8 if eps is None else eps) * scale.eps}

    return extras


#: Muon on the plan's Muon matrices (their scale, the Newton-Schulz eps), AdamW elsewhere
_muon_extras = _matrix_extras("use_muon", 1e-7)


for _spec in (
    OptimizerSpec("sgd", torch.optim.SGD, default_kwargs=_sgd_kwargs, batched_step=sgd_step,
                  state_slots=lambda settings: 0 if settings.momentum == 0 else 1),
    OptimizerSpec("adam", torch.optim.Adam, default_kwargs=_adam_kwargs, batched_step=adam_step),
    OptimizerSpec("adamw", torch.optim.AdamW, default_kwargs=_adam_kwargs, batched_step=adamw_step),
    OptimizerSpec("adam-atan2", AdamAtan2, default_kwargs=_adam_kwargs, batched_step=adam_atan2_step),
    OptimizerSpec("adafactor", torch.optim.Adafactor, group_extras=_adafactor_extras,
                  state_slots=lambda settings: 0),  # its factored state is taken as negligible
    OptimizerSpec("muon", Muon, default_kwargs=_muon_kwargs, group_extras=_muon_extras, batched_step=muon_step),
    # pytorch-optimizer's (the matrix extra, imported when built); one trial at a time. State: Adam's two
    # moments, the statistics L, R and their eigenbases (4 more parameter-sized tensors for a square matrix);
    # Shampoo keeps L, R, their inverse roots and its last step.
    OptimizerSpec("soap", soap, default_kwargs=_adam_kwargs, state_slots=lambda settings: 6),
    OptimizerSpec("shampoo", shampoo, default_kwargs=_shampoo_kwargs, group_extras=_shampoo_extras,
                  state_slots=lambda settings: 5),
    # Dion on the plan's hidden matrices (their sqrt(fan_out/fan_in) scale, the column-normalization eps), AdamW
    # elsewhere; one trial at a time. State: the momentum buffer and Q (at most parameter-sized).
    OptimizerSpec("dion", Dion, default_kwargs=_dion_kwargs, group_extras=_matrix_extras("use_dion", DION_MATRIX_EPS),
                  state_slots=lambda settings: 2),
):
    register(_spec)
del _spec
