"""The configuration of one training run.

One pydantic model describes everything a run depends on: model and its base
shape, parameterization, optimizer, data, schedule and stopping rules. Sweeps
(and the batched trainer) build these; a stored trial keeps its config as a
plain dict (``config.model_dump()``), so it can be rerun exactly.
"""

from __future__ import annotations

import difflib
from types import SimpleNamespace
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..modelspec import ModelSpec, ModelStructure, split_model_section
from ..rules.multipliers import Multipliers
from ..optim.registry import REGISTRY as OPTIMIZER_REGISTRY
from ..rules.recipes import MODES, RECIPES, WD_POLICIES, Scale

SCHEDULES = ("constant", "cosine", "wsd", "linear")
ROLES = ("embedding", "hidden", "readout", "vector", "scalar")

# optimizers: the registered ones (proxytune.optim.registry), looked up live so a registered one is valid
_CHOICES = {"recipe": RECIPES, "optimizer": OPTIMIZER_REGISTRY, "mode": MODES, "weight_decay_policy": WD_POLICIES,
            "schedule": SCHEDULES}

#: bounds no real model reaches: a typo beyond them would hang the build instead of failing
MAX_WIDTH = 1 << 20
MAX_DEPTH = 10_000
DEVICE_PATTERN = r"^(cpu|auto|mps|cuda(:\d+)?)$"

# Fields that may differ between the members of one batched group (see
# ``train_batched``); every other field must be equal across the group.
BATCHABLE_FIELDS = ("lr", "weight_decay", "eps", "init_scale", "role_lr", "role_init", "output_mult",
                    "embedding_mult", "attn_mult", "seed", "data_seed", "muon_lr_ratio", "eps_mult")
#: the named multipliers a sweep (and ``proxytune tune``) can set, beside ``lr``
MULTIPLIER_FIELDS = ("init_scale", "role_lr", "role_init", "output_mult", "embedding_mult", "attn_mult",
                     "residual_mult", "residual_attn_ratio", "act_mult")
#: the optimizers' own constants a sweep (and ``proxytune tune``) can set, as multipliers of the default (1):
#: Muon's matrix LR relative to ``lr``, and a multiplier on the base eps (Shampoo's damping ``matrix_eps``)
OPTIMIZER_FIELDS = ("muon_lr_ratio", "eps_mult")
#: the optimizers whose plans have matrices stepped apart from the AdamW tensors (``TensorPlan.muon``: Muon's and
#: Dion's), the ones ``muon_lr_ratio`` moves
MATRIX_STEP_OPTIMIZERS = ("muon", "dion")


class TrainConfig(BaseModel):
    """Everything one training run depends on.

    ``lr``, ``weight_decay`` and ``eps`` are *base* values: the ones tuned at
    the base shape (``base_width`` x ``base_depth``). The rules core turns
    them into per-tensor values for the target shape (``width`` x ``depth``).
    With no base shape the base is the target itself, so the run is plain
    training under the recipe's base-shape values.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # model
    model: str = Field("gpt", description="built-in name (gpt, mlp, moe) or 'pkg.module:function'")
    width: int = Field(64, gt=0, le=MAX_WIDTH, description="width of the model trained")
    depth: int = Field(2, gt=0, le=MAX_DEPTH, description="depth (blocks) of the model trained")
    base_width: int | None = Field(None, gt=0, le=MAX_WIDTH, description="width of the proxy the HPs are tuned at")
    base_depth: int | None = Field(None, gt=0, le=MAX_DEPTH, description="depth of the proxy the HPs are tuned at")
    model_options: dict[str, Any] = Field(default_factory=dict, description="extra builder keyword arguments")
    model_structure: ModelStructure = Field(
        default_factory=ModelStructure, description="how proxytune reads the model: block pattern, branch outputs, "
        "attention adapters, targets argument, output key... (proxytune.modelspec); `model:` may also be that "
        "whole mapping, with builder and options")

    # parameterization
    recipe: str = Field("mup", description="the parameterization (proxytune.rules.recipes)")
    optimizer: str = Field("adamw", description="the optimizer (proxytune.optim.registry)")
    mode: str = "folded"
    alignment: Literal["full", "none"] = "full"
    weight_decay_policy: str = "independent"
    roles: dict[str, str] = Field(default_factory=dict, description="glob -> role overrides")

    # optimizer hyperparameters (base values)
    lr: float = Field(3e-3, gt=0, description="base learning rate")
    weight_decay: float = Field(0.0, ge=0, description="base weight decay")
    eps: float | None = Field(None, gt=0, description="Adam eps at the base (None: optimizer default)")
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD / Muon momentum (None: 0.9 / 0.95)")
    nesterov: bool | None = Field(None, description="Nesterov momentum (None: off for SGD, on for Muon)")
    muon_lr_ratio: float = Field(1.0, gt=0, description="Muon: base LR of the Muon matrices as a multiple of lr "
                                                        "(the AdamW LR of the other tensors); 1: the same base LR")
    eps_mult: float = Field(1.0, gt=0, description="multiplies the base eps (eps, or the optimizer's default when "
                                                   "eps is None): Adam's eps, Shampoo's damping matrix_eps")
    role_lr: dict[str, float] = Field(default_factory=dict,
                                      description="per-role LR constants (Everett's gamma), e.g. {readout: 0.5}")
    init_scale: float = Field(1.0, ge=0, description="multiplies the init std of every weight matrix and embedding")
    role_init: dict[str, float] = Field(default_factory=dict,
                                        description="per-role init multipliers, e.g. {readout: 0} for a zero readout")
    output_mult: float = Field(1.0, gt=0, description="forward multiplier on the readout (the logits)")
    embedding_mult: float = Field(1.0, gt=0, description="forward multiplier on the input embeddings")
    attn_mult: float = Field(1.0, gt=0, description="multiplier on the attention logits")
    residual_mult: float = Field(1.0, gt=0, description="forward multiplier on every residual branch's output "
                                                        "(u-muP's residual_mult)")
    residual_attn_ratio: float = Field(1.0, gt=0, description="attention branches' weight relative to MLP "
                                                              "branches (u-muP's residual_attn_ratio)")
    act_mult: float = Field(1.0, gt=0, description="multiplier on the MLP's pre-activation (u-muP's act_mult)")

    # data
    data: str = Field("stdlib", description="'stdlib', 'teacher', a text file, or a .bin token file")
    data_options: dict[str, Any] = Field(default_factory=dict,
                                         description="loader options, e.g. {vocab_size: 50304, dtype: uint16}")
    batch_size: int = Field(16, gt=0, description="sequences per step")
    seq_len: int = Field(64, gt=0, description="tokens per sequence")

    # schedule and stopping
    steps: int = Field(200, gt=0, description="training steps")
    schedule: str = Field("cosine", description="the LR schedule after warmup")
    warmup: int | float = Field(0.1, ge=0, description="warmup steps (int) or fraction of steps (float < 1)")
    final_lr_frac: float = Field(0.1, ge=0, le=1, description="LR at the end, as a fraction of the peak")
    cooldown: float = Field(0.2, gt=0, le=1, description="WSD: fraction of steps spent decaying")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (None: no clipping)")
    eval_every: int = Field(50, gt=0, description="evaluate every k steps")
    eval_batches: int = Field(4, gt=0)
    diverge_factor: float = Field(3.0, gt=1, description="stop when loss exceeds this multiple of the first loss")

    # measurements
    noise_scale: bool = Field(False, description="measure the gradient noise scale (McCandlish et al. 2018's "
                                                 "B_simple, in tokens): each step's batch is split in two halves "
                                                 "whose gradients are compared; needs an even batch_size")

    # execution
    seed: int = Field(0, description="seed of init and batch order")
    data_seed: int | None = Field(None, description="seed of the batch order (None: same as seed)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    precision: Literal["fp32", "bf16", "bf16-pure", "fp8-sim", "fp64"] = Field(
        "fp32", description="fp32; bf16 autocast; bf16-pure (parameters, activations and optimizer state in "
                            "bfloat16); fp8-sim (every linear layer's input and weight cast to float8_e4m3fn and "
                            "back, gradients to float8_e5m2: fp8 rounding on any device); fp64 (parameters in "
                            "float64: exact comparisons in tests)")
    threads: int | None = Field(None, gt=0, description="torch threads for this process (None: leave as is)")
    tags: dict[str, Any] = Field(default_factory=dict, description="free-form labels stored with the result")

    @field_validator("recipe", "optimizer", "mode", "weight_decay_policy", "schedule")
    @classmethod
    def _named_choice(cls, v: str, info: ValidationInfo) -> str:
        return _choice(info.field_name, v, _CHOICES[info.field_name])

    @field_validator("role_lr", "role_init")
    @classmethod
    def _roles(cls, v: dict[str, float]) -> dict[str, float]:
        for role, value in v.items():
            _choice("role", role, ROLES)
            if not value >= 0:
                raise ValueError(f"multiplier for role {role!r} must be >= 0, got {value}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data: Any) -> Any:
        """YAML's ``true`` is not a number of steps: refuse booleans where a number is expected; a ``model:``
        mapping (:class:`proxytune.modelspec.ModelSpec`) is split into model, model_options and model_structure."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data = split_model_section(data)
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and field.annotation is not bool and \
                        "bool" not in str(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {str(value).lower()}")
        return data

    @field_validator("roles")
    @classmethod
    def _role_names(cls, v: dict[str, str]) -> dict[str, str]:
        for pattern, role in v.items():
            _choice(f"role for {pattern!r}", role, ROLES)
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.match(DEVICE_PATTERN, v):
            raise ValueError(f"device {v!r}: expected cpu, cuda, cuda:N, mps or auto")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if isinstance(self.warmup, float) and self.warmup >= 1:
            raise ValueError("warmup as a float is a fraction of steps and must be < 1; give an int for steps")
        if self.noise_scale and (self.batch_size < 2 or self.batch_size % 2):
            raise ValueError(f"noise_scale splits each batch in two equal halves: batch_size must be even, got "
                             f"{self.batch_size}")
        if self.role_lr.get("hidden", 1.0) == 0 and self.optimizer in MATRIX_STEP_OPTIMIZERS:
            raise ValueError(f"role_lr[hidden] = 0 freezes every {self.optimizer} matrix")
        for name in OPTIMIZER_FIELDS:
            if getattr(self, name) != 1.0 and name not in optimizer_fields(self.optimizer):
                raise ValueError(f"{name} = {getattr(self, name)!r}: {optimizer_field_error(name, self.optimizer)}")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def warmup_steps(self) -> int:
        """Warmup length in steps."""
        if isinstance(self.warmup, float):
            return int(round(self.warmup * self.steps))
        return min(int(self.warmup), self.steps)

    @property
    def batch_seed(self) -> int:
        """Seed of the data order."""
        return self.seed if self.data_seed is None else self.data_seed

    def tokens_per_step(self) -> int:
        """Tokens (or samples, for vector tasks) consumed by one step."""
        return self.batch_size * (self.seq_len if self.data != "teacher" else 1)

    def multipliers(self) -> Multipliers:
        """The named multipliers of this run (the plan applies them; see :mod:`proxytune.rules.multipliers`):
        ``role_lr`` per-role LR constants, ``role_init`` per-role init multipliers times ``init_scale`` on the
        weight matrices and embeddings, and the output, embedding and attention multipliers."""
        init = {r: self.role_init.get(r, 1.0) * (self.init_scale if r in ("embedding", "hidden", "readout") else 1.0)
                for r in ROLES}
        return Multipliers(lr=dict(self.role_lr), init={r: v for r, v in init.items() if v != 1.0},
                           output=self.output_mult, embedding=self.embedding_mult, attention=self.attn_mult,
                           residual=self.residual_mult, residual_attn_ratio=self.residual_attn_ratio,
                           activation=self.act_mult)

    def base_eps(self) -> float | None:
        """The base eps the plan scales per tensor: ``eps`` (None: the optimizer's default) times ``eps_mult``."""
        if self.eps_mult == 1.0:
            return self.eps
        return (self.eps if self.eps is not None else default_eps(self.optimizer)) * self.eps_mult

    def group_kwargs(self, lr: float | None = None) -> dict[str, Any]:
        """``eps`` and ``muon_lr`` for :meth:`proxytune.plan.Plan.param_groups` and ``Plan.optimizer`` with base LR
        ``lr`` (default: this run's): the base eps times ``eps_mult``, the Muon matrices' base LR ``lr`` times
        ``muon_lr_ratio`` (None, the plan's default ``lr``, when the ratio is 1)."""
        lr = self.lr if lr is None else lr
        return {"eps": self.base_eps(), "muon_lr": None if self.muon_lr_ratio == 1.0 else lr * self.muon_lr_ratio}

    def model_spec(self) -> ModelSpec:
        """The one description of this run's model (builder, options and how proxytune reads it)."""
        return ModelSpec(builder=self.model, options=dict(self.model_options),
                         **{**self.model_structure.model_dump(), "roles": {**self.model_structure.roles, **self.roles}})

    def plan_kwargs(self) -> dict[str, Any]:
        """The model-reading keyword arguments of :func:`proxytune.parameterize` for this run."""
        return self.model_structure.plan_kwargs(self.roles)

    def architecture_key(self) -> dict[str, Any]:
        """The fields batched members must share (everything but BATCHABLE_FIELDS and tags)."""
        return self.model_dump(exclude=set(BATCHABLE_FIELDS) | {"tags"})


def default_eps(optimizer: str) -> float | None:
    """The base eps optimizer ``optimizer`` takes when none is given (Adam's 1e-8, Shampoo's damping 1e-6...), read
    from its param-group extras (:mod:`proxytune.optim.registry`) at unit scale: the one float key that follows the
    eps given. None when it has no eps, or not a single float one (Adafactor's pair)."""
    spec = OPTIMIZER_REGISTRY.get(optimizer)
    if spec is None or not spec.has_eps:
        return None
    tensor = SimpleNamespace(muon=False, muon_scale=1.0)  # a tensor outside Muon's matrices: its Adam eps
    one, two, default = (spec.extras(tensor, Scale(), eps) for eps in (1.0, 2.0, None))
    keys = [k for k, v in one.items()
            if isinstance(v, float) and two.get(k) == 2 * v and isinstance(default.get(k), float)]
    return float(default[keys[0]]) if len(keys) == 1 else None


def optimizer_fields(optimizer: str) -> tuple[str, ...]:
    """The :data:`OPTIMIZER_FIELDS` that apply to ``optimizer``: ``muon_lr_ratio`` for Muon, ``eps_mult`` for an
    optimizer with one base eps (:func:`default_eps`)."""
    return tuple(name for name, applies in (("muon_lr_ratio", optimizer in MATRIX_STEP_OPTIMIZERS),
                                            ("eps_mult", default_eps(optimizer) is not None)) if applies)


def optimizer_field_error(name: str, optimizer: str) -> str:
    """Why optimizer constant ``name`` does not apply to ``optimizer``, naming the ones that do."""
    what = {"muon_lr_ratio": "the LR of Muon's or Dion's matrices relative to lr (optimizer muon or dion)",
            "eps_mult": "a multiplier on a single base eps (Adam's eps, Shampoo's damping)"}[name]
    valid = optimizer_fields(optimizer)
    return (f"{name} is {what}; optimizer {optimizer!r} has no such constant (optimizer constants valid for "
            f"{optimizer!r}: {', '.join(valid) if valid else 'none'})")


def _choice(what: str, value: str, valid: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected one of {', '.join(valid)}, got {value!r}")
    if value in valid:
        return value
    close = difflib.get_close_matches(value, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {what} {value!r}{hint} (valid: {', '.join(valid)})")


def misspelled_keys(data: dict[str, Any]) -> list[str]:
    """Messages for keys of ``data`` that are not TrainConfig fields, with the closest valid name."""
    fields = list(TrainConfig.model_fields)
    out = []
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            out.append(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    return out


def make_config(**kwargs: Any) -> TrainConfig:
    """Build a TrainConfig; unknown keys raise ValueError naming the closest valid key."""
    bad = misspelled_keys(kwargs)
    if bad:
        raise ValueError("; ".join(bad))
    return TrainConfig(**kwargs)


def field_choices(name: str) -> tuple[str, ...] | None:
    """The values :class:`TrainConfig` field ``name`` accepts when it is a choice among names (its ``Literal``
    or the table it is checked against), else None. The command line builds its help from this."""
    if name in _CHOICES:
        return tuple(_CHOICES[name])
    annotation = TrainConfig.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return tuple(get_args(annotation))
    return None
