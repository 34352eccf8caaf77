"""The plan: per-tensor init, multiplier, LR, weight decay and eps, keyed by name.

``parameterize(target, base, recipe, optimizer)`` compares the target with the
base shape, applies the recipe's rules to every tensor, re-initializes the
target and returns a :class:`Plan`. The plan is plain data (JSON round trip);
nothing is stored on tensors, so it survives ``torch.save``/``load``,
``deepcopy``, DDP (``module.`` prefix) and ``torch.compile`` (``_orig_mod.``).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .nn.attention import (
    BUILTIN_ADAPTERS, DEFAULT_ADAPTERS, AttentionAdapter, AttentionSite, AttributeName, MultiheadAttention,
    QueryProjection, QueryRows, ScaleAttribute, check_adapter_state, head_dim_of, looks_like_attention,
    query_params_of,
)
from .nn.multipliers import add_input_multiplier, add_multiplier, add_output_multiplier, takes_input_multiplier
from .rules.multipliers import Multipliers
from .rules.recipes import (
    ALIGNMENT_CHOICES, MODES, MUON_SCALES, OPTIMIZERS, RECIPES, WD_POLICIES, Scale, TensorContext, check_choice,
    fold, get_optimizer, get_recipe, tensor_scales,
)
from .forward import ForwardSpec
from .trace import AttentionCall
from .shapes import FactorRatio, PlanError, TensorShape, analyze_model, canonical_modules, canonical_name
from .nn.unit import InputGradScale, LogitGradScale
from .nn.unit import install_unit_weight
from .optim import build_optimizer
from .optim.dion import DION_MATRIX_EPS
from .optim.registry import group_extras
from .rules.everett import AB
from .rules.umup import ACTIVATIONS, activation_grad_scale, activation_scale, branch_weights, causal_attention_output_scale
from .rules.umup import residual_taus
from .rules.umup import unit_forward, unit_lr

PLAN_VERSION = 1
# set on a model by Plan.apply: the digest of the plan applied to it
APPLIED_ATTR = "_proxytune_plan_digest"
# a buffer (so it is in every state_dict) holding that digest, on models whose forward pass carries state the
# weights do not (an attention scale attribute, a tied readout's input multiplier)
MARKER_BUFFER = "proxytune_plan"


def _digest_tensor(digest: str) -> torch.Tensor:
    return torch.tensor(list(digest.encode()), dtype=torch.uint8)


def _check_marker(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                  missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """load_state_dict pre-hook: refuse a checkpoint of a model parameterized by another plan."""
    saved = state_dict.get(prefix + MARKER_BUFFER)
    own = getattr(module, MARKER_BUFFER, None)
    if saved is not None and own is not None and not torch.equal(saved.cpu().to(torch.uint8), own.cpu()):
        error_msgs.append(
            f"the checkpoint was saved from a model parameterized by plan {bytes(saved.tolist()).decode()!r}, "
            f"this model by plan {bytes(own.tolist()).decode()!r}: its attention scales and multipliers would "
            "not match the weights. Apply the checkpoint's own plan to a fresh model (Plan.load(...).apply(model, "
            "reinit=False)) before loading it.")


@dataclass
class TensorPlan:
    """Everything the plan decided for one parameter (see ``Plan.explain``)."""

    name: str
    role: str
    shape: list[int]
    base_shape: list[int]
    layout: str
    fan_in: int
    fan_out: int
    m_in: float
    m_out: float
    width: float
    depth: float
    block: str | None
    branch_output: bool
    base_std: float
    init_source: str
    explicit: Scale
    folded: Scale
    aliases: list[str] = field(default_factory=list)
    readout_use: str | None = None
    readout_multiplier: float = 1.0
    attn_factor: float = 1.0
    muon: bool = False  # stepped by the optimizer's orthonormalized matrix update (Muon's, or Dion's)
    muon_scale: float = 1.0  # that update's scale (Muon: per muon_scale=; Dion: sqrt(fan_out / fan_in))
    no_decay: bool = False
    notes: list[str] = field(default_factory=list)
    grad_scale: float = 1.0  # u-muP: the tensor's backward scale (see proxytune.nn.unit.UnitWeight)
    #: where the role came from: override, forward (the traced forward pass), module (the module's type) or
    #: guess (a layout assumed from the shape); and the residual-branch mark's (override, forward, name, structure)
    role_source: str = "module"
    branch_source: str = ""
    #: a tied table whose readout use is a functional product: the readout multiplier is carried by the tensor
    #: itself and this embedding module's output is multiplied by ``lookup_multiplier`` to undo it for the lookup
    lookup_module: str | None = None
    lookup_multiplier: float = 1.0

    def scale(self, mode: str) -> Scale:
        return self.folded if mode == "folded" else self.explicit

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["explicit"], d["folded"] = self.explicit.to_dict(), self.folded.to_dict()
        # fields at their defaults are left out, so plans that do not use them keep their digest
        for key, default in _OPTIONAL_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "tensor") -> "TensorPlan":
        """Rebuild from :meth:`to_dict`'s output; a missing field, an unknown one or one of the wrong type raises
        :class:`PlanError` naming it (``where`` is the path to ``d`` in the plan)."""
        _check_fields(d, _TENSOR_FIELDS, where, _TENSOR_REQUIRED)
        d = dict(d)
        d["explicit"], d["folded"] = Scale(**d["explicit"]), Scale(**d["folded"])
        return cls(**d)


_OPTIONAL_DEFAULTS: dict[str, Any] = {"grad_scale": 1.0, "role_source": "module", "branch_source": "",
                                      "lookup_module": None, "lookup_multiplier": 1.0}


# ------------------------------------------------------------------ reading a plan file: data, checked field by field
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scale(v: Any) -> bool:
    return isinstance(v, dict) and set(v) <= {"multiplier", "init", "lr", "wd", "eps"} and all(map(_is_num, v.values()))


#: the kinds of value a plan file holds: a test and what the error says was expected
_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str?": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "int": (_is_int, "an integer"),
    "num": (_is_num, "a number"),
    "num?": (lambda v: v is None or _is_num(v), "a number or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    # tuples too: ``from_dict`` also takes a ``to_dict`` that never went through JSON
    "strs": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings"),
    "ints": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a list of integers"),
    "ints?": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(map(_is_int, v))),
              "a list of integers or null"),
    "nums": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_num, v)), "a list of numbers"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "dict?": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list"),
    "scale": (_is_scale, "an object of numbers multiplier, init, lr, wd, eps"),
}


def _check_fields(d: Any, schema: dict[str, str], where: str, required: Iterable[str]) -> None:
    """Raise :class:`PlanError` naming the field unless ``d`` is an object with the ``required`` fields, no field
    outside ``schema`` and each of its kind (see ``_KINDS``)."""
    if not isinstance(d, dict):
        raise PlanError(f"{where}: expected an object, got {_json_type(d)}")
    unknown = sorted(map(str, set(d) - set(schema)))
    if unknown:
        raise PlanError(f"{where}.{unknown[0]}: not a field of a saved plan (valid: {', '.join(schema)})")
    for key in required:
        if key not in d:
            raise PlanError(f"{where}.{key}: missing")
    for key, value in d.items():
        test, what = _KINDS[schema[key]]
        if not test(value):
            raise PlanError(f"{where}.{key}: expected {what}, got {_json_type(value)} {_short(value)}")


def _json_type(v: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
             type(None): "null"}
    return names.get(type(v), "a number" if _is_num(v) else type(v).__name__)


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_TENSOR_FIELDS: dict[str, str] = {
    "name": "str", "role": "str", "shape": "ints", "base_shape": "ints", "layout": "str", "fan_in": "int",
    "fan_out": "int", "m_in": "num", "m_out": "num", "width": "num", "depth": "num", "block": "str?",
    "branch_output": "bool", "base_std": "num", "init_source": "str", "explicit": "scale", "folded": "scale",
    "aliases": "strs", "readout_use": "str?", "readout_multiplier": "num", "attn_factor": "num", "muon": "bool",
    "muon_scale": "num", "no_decay": "bool", "notes": "strs", "grad_scale": "num", "role_source": "str",
    "branch_source": "str", "lookup_module": "str?", "lookup_multiplier": "num"}
_TENSOR_REQUIRED = [f.name for f in fields(TensorPlan) if f.default is MISSING and f.default_factory is MISSING]
_PLAN_FIELDS: dict[str, str] = {
    "version": "int", "recipe": "str", "optimizer": "str", "mode": "str", "alignment": "str",
    "weight_decay_policy": "str", "muon_scale": "str", "tensors": "dict", "attention": "list", "notes": "strs",
    "multipliers": "dict?", "residual": "list", "backward": "list"}
_PLAN_REQUIRED = ("recipe", "optimizer", "mode", "alignment", "weight_decay_policy", "muon_scale", "tensors")
_PLAN_CHOICES: dict[str, Iterable[str]] = {"recipe": RECIPES, "optimizer": OPTIMIZERS, "mode": MODES,
                                            "alignment": ALIGNMENT_CHOICES, "weight_decay_policy": WD_POLICIES,
                                            "muon_scale": MUON_SCALES}
_ATTENTION_FIELDS: dict[str, str] = {"module": "str", "adapter": "str", "factor": "num", "site": "dict",
                                     "adapter_class": "str", "adapter_state": "dict?"}
_SITE_FIELDS: dict[str, str] = {"module": "str", "adapter": "str", "head_dim": "int", "base_head_dim": "int",
                                "query_params": "strs", "value": "num?", "rows": "ints?", "row_params": "strs",
                                "rows_dim": "int"}
_RESIDUAL_FIELDS: dict[str, str] = {"module": "str", "scales": "nums"}
_BACKWARD_FIELDS: dict[str, str] = {"module": "str", "kind": "str", "vocab": "int", "factor": "num"}
#: where older versions recorded the built-in adapters (``adapter_class``): mapped to the class, never imported
_BUILTIN_PATHS: dict[str, type[AttentionAdapter]] = {
    f"{cls.__module__}:{cls.__qualname__}": cls for cls in BUILTIN_ADAPTERS.values()}


def _check_attention_record(r: Any, where: str) -> None:
    _check_fields(r, _ATTENTION_FIELDS, where, ("module", "adapter", "factor", "site"))
    _check_fields(r["site"], _SITE_FIELDS, f"{where}.site", ("module", "adapter", "head_dim", "base_head_dim"))
    rows = r["site"].get("rows")
    if rows is not None and (len(rows) != 2 or not 0 <= rows[0] <= rows[1]):
        raise PlanError(f"{where}.site.rows: expected [start, stop] with 0 <= start <= stop, got {rows}")
    state = r.get("adapter_state") or {}
    for key, value in state.items():
        # whatever adapter it belongs to, a setting is a plain name and a plain value
        if not (key.isidentifier() and not key.startswith("_")):
            raise PlanError(f"{where}.adapter_state: {key!r} is not a public field name")
        if not (value is None or isinstance(value, (str, bool)) or _is_num(value)):
            raise PlanError(f"{where}.adapter_state.{key}: expected a string, number, boolean or null, got "
                            f"{_json_type(value)}")


def _check_plan_dict(d: Any) -> None:
    """Everything :meth:`Plan.from_dict` reads, checked before it builds anything."""
    if not isinstance(d, dict):
        raise PlanError(f"a plan is a JSON object, this is {_json_type(d)}")
    version = d.get("version")
    if "version" not in d:
        raise PlanError("version: missing (not a proxytune plan?)")
    if not _is_int(version) or version != PLAN_VERSION:
        raise PlanError(f"version: plan version {version!r} is not supported (expected {PLAN_VERSION})")
    _check_fields(d, _PLAN_FIELDS, "plan", _PLAN_REQUIRED)
    for key, valid in _PLAN_CHOICES.items():
        if d[key] not in valid:
            raise PlanError(f"plan.{key}: unknown {key} {d[key]!r}; valid: {', '.join(valid)}")
    for name, t in d["tensors"].items():
        where = f"tensors[{name!r}]"
        _check_fields(t, _TENSOR_FIELDS, where, _TENSOR_REQUIRED)
        if t["name"] != name:
            raise PlanError(f"{where}.name: {t['name']!r} differs from its key")
    for i, r in enumerate(d.get("attention", [])):
        _check_attention_record(r, f"attention[{i}]")
    for i, r in enumerate(d.get("residual", [])):
        _check_fields(r, _RESIDUAL_FIELDS, f"residual[{i}]", ("module", "scales"))
        if len(r["scales"]) != 2:
            raise PlanError(f"residual[{i}].scales: expected two numbers (attention, MLP), got {len(r['scales'])}")
    for i, r in enumerate(d.get("backward", [])):
        where = f"backward[{i}]"
        _check_fields(r, _BACKWARD_FIELDS, where, ("module", "kind"))
        needs = {"logits": "vocab", "input": "factor"}.get(r["kind"])
        if needs is None:
            raise PlanError(f"{where}.kind: expected 'logits' or 'input', got {r['kind']!r}")
        if needs not in r:
            raise PlanError(f"{where}.{needs}: missing")
    m = d.get("multipliers") or {}
    for key in ("lr", "init"):
        if key in m and not isinstance(m[key], dict):
            raise PlanError(f"multipliers.{key}: expected an object of role -> number, got {_json_type(m[key])}")


def _adapter_for(record: dict[str, Any], where: str, passed: Sequence[AttentionAdapter]) -> AttentionAdapter | None:
    """The adapter a checked attention record names: one the caller passed with that name and the saved
    settings, else a built-in rebuilt from its checked settings, else None (a user adapter not passed).
    Nothing the record says is imported or called."""
    name, ref = record["adapter"], record.get("adapter_class")
    state = record.get("adapter_state") or {}
    same_name = [a for a in passed if a.name == name]
    for a in same_name:
        saved = check_adapter_state(type(a), state, f"{where}.adapter_state")
        own = _declared_state(a, where)
        if all(own.get(k) == v for k, v in saved.items()):  # the passed object agrees with what was saved
            return a
    cls = BUILTIN_ADAPTERS.get(name) if ref is None else _BUILTIN_PATHS.get(ref)
    if cls is not None and cls.name != name:
        raise PlanError(f"{where}.adapter: {name!r} is not the name of {ref} ({cls.name!r})")
    if cls is not None:
        return cls(**check_adapter_state(cls, state, f"{where}.adapter_state"))
    if same_name:
        raise PlanError(f"{where}.adapter_state: the plan saved {name!r} with {state}, the adapter passed for it "
                        f"has {_declared_state(same_name[0], where)}; pass one built with the saved settings")
    return None


def _declared_state(adapter: AttentionAdapter, where: str) -> dict[str, Any]:
    """``adapter``'s declared settings, checked against its own ``STATE_FIELDS``."""
    try:
        state = {k: getattr(adapter, k) for k in getattr(type(adapter), "STATE_FIELDS", {})}
    except AttributeError as e:
        raise PlanError(f"{where}: adapter {type(adapter).__name__} lacks a field its STATE_FIELDS declares ({e})") \
            from None
    return check_adapter_state(type(adapter), state, f"{where}: {type(adapter).__name__}")


def _missing_adapter(record: dict[str, Any], where: str) -> PlanError:
    name, ref = record["adapter"], record.get("adapter_class")
    field_name, what = ("adapter_class", ref) if ref is not None else ("adapter", name)
    cls = (ref or "MyAdapter").rpartition(":")[2].rpartition(".")[2] or "MyAdapter"
    return PlanError(f"{where}.{field_name}: {what!r} (for module {record['module']!r}) is not a built-in proxytune "
                     "adapter, and a plan file is data: it never imports code. Pass the adapter object named "
                     f"{name!r}: Plan.load(path, attention=[{cls}(...)]) or plan.apply(model, attention=[{cls}(...)])")


def _std(t: torch.Tensor) -> float:
    if t.numel() < 2:
        return float(t.detach().abs().double().mean()) if t.numel() else 0.0
    return float(t.detach().double().std())


def _torch_default_std(fan_in_torch: int | None) -> float | None:
    """Std of torch's default Linear/Conv init (kaiming-uniform with a=sqrt(5),
    and the matching bias): uniform(+-1/sqrt(fan_in)), std = 1/sqrt(3 fan_in)."""
    if fan_in_torch is None or fan_in_torch <= 0:
        return None
    return 1.0 / math.sqrt(3.0 * fan_in_torch)


def _torch_fan_in(module: nn.Module, attr: str, shape: Sequence[int]) -> int | None:
    """torch's fan-in of a Linear/Conv weight of this shape (dim 1 x kernel);
    for a bias, pass the weight's shape."""
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and attr == "weight" and len(shape) >= 2:
        return shape[1] * math.prod(shape[2:])
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and attr == "bias":
        w = module.weight
        return w.shape[1] * math.prod(w.shape[2:])
    return None


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Canonical name -> parameter (each tied alias listed)."""
    out: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(canonical_name(name), p)
    return out


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` through DDP / torch.compile wrappers."""
    inner = model
    while True:
        if hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        elif isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = inner.module
        else:
            break
    return inner.get_submodule(name) if name else inner


_ABSENT = object()


def _find_module(model: nn.Module, name: str, where: str) -> nn.Module:
    """``_submodule`` for a name read from a plan: a missing module is a :class:`PlanError` naming the field."""
    try:
        return _submodule(model, name)
    except AttributeError:
        raise PlanError(f"{where}: the model has no module {name!r}") from None


def _check_passed(adapters: Any) -> list[AttentionAdapter]:
    """The caller's ``attention=`` adapters: objects, not classes (a class is a common slip)."""
    if isinstance(adapters, AttentionAdapter) or not isinstance(adapters, Iterable):
        raise PlanError("attention: expected a list of adapter objects, e.g. attention=[MyAdapter()]")
    out = list(adapters)
    for a in out:
        if not isinstance(a, AttentionAdapter):
            hint = f"; pass an instance, {a.__name__}()" if isinstance(a, type) else ""
            raise PlanError(f"attention: {a!r} is not an AttentionAdapter object{hint}")
    return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module and attribute behind a canonical parameter name."""
    mod_name, _, attr = name.rpartition(".")
    return _submodule(model, mod_name), attr


@dataclass
class Plan:
    """The per-tensor scaling plan for one (target, base, recipe, optimizer).

    Build it with :func:`parameterize`. ``optimizer()`` builds the optimizer
    with per-tensor groups, ``explain()`` prints the table, ``save``/``load``
    round-trip it through JSON, ``apply(model)`` re-initializes and installs
    a plan on a fresh instance of the target model.
    """

    recipe: str
    optimizer_name: str
    mode: str
    alignment: str
    weight_decay_policy: str
    muon_scale_mode: str
    tensors: dict[str, TensorPlan]
    attention: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION
    multipliers: Multipliers = field(default_factory=Multipliers)
    # blocks whose ``residual_scales`` attribute the plan sets (u-muP's normalized residual add)
    residual: list[dict[str, Any]] = field(default_factory=list)
    # u-muP's backward scales on modules: {"module", "kind": "logits" | "input", "factor" | "vocab"}
    backward: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._model: nn.Module | None = None
        # the adapter objects that found each attention site (user adapters included), in ``attention``'s order;
        # a loaded plan holds the built-ins it rebuilt by name and those its caller passed, None for the rest
        self._adapters: list[AttentionAdapter | None] = []

    # ----------------------------------------------------------------- data
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "recipe": self.recipe, "optimizer": self.optimizer_name,
            "mode": self.mode, "alignment": self.alignment,
            "weight_decay_policy": self.weight_decay_policy, "muon_scale": self.muon_scale_mode,
            "attention": self.attention, "notes": self.notes, "multipliers": self.multipliers.to_dict(),
            "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
            # only when present, so plans without it keep their digest
            **({"residual": self.residual} if self.residual else {}),
            **({"backward": self.backward} if self.backward else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, *, attention: Sequence[AttentionAdapter] = ()) -> "Plan":
        """Rebuild a plan from :meth:`to_dict`'s output. Every field is checked (a :class:`PlanError` names the
        one that is missing, unknown or of the wrong type) and nothing in ``d`` is imported or called: the
        attention adapters are the built-in ones named by the records, or those passed in ``attention`` (see
        :meth:`load`)."""
        _check_plan_dict(d)
        passed = _check_passed(attention)
        try:
            multipliers = Multipliers.from_dict(d.get("multipliers"))
        except (ValueError, TypeError) as e:
            raise PlanError(f"multipliers: {e}") from None
        plan = cls(
            recipe=d["recipe"], optimizer_name=d["optimizer"], mode=d["mode"], alignment=d["alignment"],
            weight_decay_policy=d["weight_decay_policy"], muon_scale_mode=d["muon_scale"],
            tensors={k: TensorPlan.from_dict(v, f"tensors[{k!r}]") for k, v in d["tensors"].items()},
            attention=list(d.get("attention", [])), notes=list(d.get("notes", [])),
            multipliers=multipliers, residual=list(d.get("residual", [])), backward=list(d.get("backward", [])))
        plan._adapters = [_adapter_for(r, f"attention[{i}]", passed) for i, r in enumerate(plan.attention)]
        return plan

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, *, attention: Sequence[AttentionAdapter] = ()) -> "Plan":
        """Read a plan written by :meth:`save`.

        A plan file is data: loading it never imports a module or calls anything it names. An attention site
        found by a built-in adapter is rebuilt from the adapter's registered name and its declared settings
        (``STATE_FIELDS``), which are checked. A site found by your own adapter needs that adapter object, given
        here or to :meth:`apply` (``attention=[MyAdapter()]``, as for :func:`parameterize`); it is matched by its
        ``name`` and settings. A malformed file raises :class:`PlanError` naming the field."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanError(f"no plan file at {str(path)!r}") from None
        except UnicodeDecodeError as e:
            raise PlanError(f"{str(path)!r} is not a proxytune plan: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise PlanError(f"cannot read the plan file {str(path)!r}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{str(path)!r} is not a proxytune plan: invalid JSON at line {e.lineno} column "
                            f"{e.colno} ({e.msg}); the file is truncated or garbled") from None
        except RecursionError:
            raise PlanError(f"{str(path)!r} is not a proxytune plan: its JSON is nested too deeply") from None
        try:
            return cls.from_dict(data, attention=attention)
        except PlanError as e:
            raise PlanError(f"{str(path)!r}: {e}") from None

    def bind(self, model: nn.Module) -> "Plan":
        """Remember ``model`` so ``optimizer()`` needs no ``model=`` argument."""
        self._model = model
        return self

    # ---------------------------------------------------------------- model
    def parameters(self, model: nn.Module | None = None) -> dict[str, nn.Parameter]:
        """The model's parameters keyed by planned tensor name (checks the model matches)."""
        return self._resolve(model)

    def _resolve(self, model: nn.Module | None) -> dict[str, nn.Parameter]:
        model = model if model is not None else self._model
        if model is None:
            raise PlanError("this plan is not bound to a model: pass model=... (or call plan.bind(model))")
        params = _named_params(model)
        missing = [n for n in self.tensors if n not in params]
        unplanned = sorted({canonical_name(n) for n in params} - set(self.tensors)
                           - {a for t in self.tensors.values() for a in t.aliases})
        if missing or unplanned:
            msg = "the model does not match the plan."
            if missing:
                msg += f" Planned but not in the model: {', '.join(missing[:6])}."
            if unplanned:
                msg += f" In the model but not planned: {', '.join(unplanned[:6])}."
            raise PlanError(msg)
        return params

    def apply(self, model: nn.Module, *, reinit: bool = True,
              attention: Sequence[AttentionAdapter] | None = None) -> nn.Module:
        """Re-initialize ``model`` with the planned std and install the forward
        multipliers the plan's mode needs. Call it once, on a freshly built
        target (the init is rescaled relative to the model's own), before
        wrapping it in DDP or ``torch.compile``.

        ``attention`` gives the user adapters a loaded plan needs (see
        :meth:`load`); they take precedence over those it already holds.
        Everything the plan names (tensors, modules, the attributes its
        adapters set) is checked against the model before anything is
        changed, and a mismatch raises :class:`PlanError`.

        Applying the same plan (or an equal one, e.g. saved and loaded) to a
        model it was already applied to changes nothing; applying a different
        plan to it raises :class:`PlanError`, since its multipliers and init
        would stack on the first plan's."""
        params = self._resolve(model)
        key = self.digest()
        applied = getattr(model, APPLIED_ATTR, None)
        if applied == key:
            self._model = model
            return model
        if applied is not None:
            raise PlanError("this model was already parameterized by another plan: its init and forward multipliers "
                            "would stack. Build a fresh model and apply this plan to it.")
        adapters = self._attention_adapters(attention)
        self._check_targets(model, params, adapters)
        if reinit:
            self._reinit(params)
        self._install_multipliers(model)
        self._install_module_state(model, adapters)
        if self.forward_state():
            # A state_dict of this model then says which plan it needs: loading it into a model without the
            # plan fails on the unexpected key, into a model with another plan on the check below.
            model.register_buffer(MARKER_BUFFER, _digest_tensor(key), persistent=True)
            model._register_load_state_dict_pre_hook(_check_marker, with_module=True)
        setattr(model, APPLIED_ATTR, key)
        self._model = model
        return model

    def _reinit(self, params: dict[str, nn.Parameter]) -> None:
        """Phase of :meth:`apply`: rescale every materialized tensor from the model's own init std to the
        planned one (the base's std times the plan's init multiplier)."""
        with torch.no_grad():
            for name, tp in self.tensors.items():
                p = params[name]
                if p.is_meta:
                    continue
                own = _std(p)
                sc = tp.scale(self.mode)
                factor = (tp.base_std * sc.init / own) if own > 0 and tp.base_std > 0 else sc.init
                if factor != 1.0:
                    p.mul_(factor)

    def _install_multipliers(self, model: nn.Module) -> None:
        """Phase of :meth:`apply`: the forward multipliers of the tensors (u-muP's unit weights), of the
        lookups that divide a tied table's multiplier back out, and of tied readout uses."""
        unit = get_recipe(self.recipe).unit
        for name, tp in self.tensors.items():
            sc = tp.scale(self.mode)
            if unit and tp.readout_use is None:
                # u-muP: every tensor gets its forward scale and its own backward scale

                mod, attr = _owner(model, name)
                install_unit_weight(mod, attr, sc.multiplier, tp.grad_scale,
                                    table=tp.role == "embedding" and len(tp.shape) >= 2, rows=tp.shape[0])
            elif sc.multiplier != 1.0:
                mod, attr = _owner(model, name)
                add_multiplier(mod, attr, sc.multiplier)
            if tp.lookup_module is not None and tp.lookup_multiplier != 1.0:
                add_output_multiplier(_submodule(model, tp.lookup_module), tp.lookup_multiplier)
            if tp.readout_use is not None and tp.readout_multiplier * sc.multiplier != 1.0:
                mod, attr = _owner(model, tp.readout_use)
                if takes_input_multiplier(mod, attr):
                    # on the layer's input, not its (shared) weight: the tie stays a plain attribute
                    add_input_multiplier(mod, tp.readout_multiplier * sc.multiplier)
                else:
                    add_multiplier(mod, attr, tp.readout_multiplier * sc.multiplier)

    def _install_module_state(self, model: nn.Module, adapters: list[AttentionAdapter]) -> None:
        """Phase of :meth:`apply`: what the plan sets on modules: the attention adapters' logit factors, the
        residual scales and the backward scales (u-muP)."""
        for adapter, site in zip(adapters, self.attention):  # a query projection's install is a no-op: folded above
            adapter.install(_submodule(model, site["module"]), AttentionSite(**site["site"]), site["factor"])
        for r in self.residual:
            setattr(_submodule(model, r["module"]), RESIDUAL_ATTR, tuple(r["scales"]))
        if self.backward:

            for r in self.backward:
                mod = _submodule(model, r["module"])
                if r["kind"] == "logits":
                    mod.register_forward_hook(LogitGradScale(r["vocab"]))
                else:
                    mod.register_forward_pre_hook(InputGradScale(r["factor"]))

    def _attention_adapters(self, passed: Sequence[AttentionAdapter] | None) -> list[AttentionAdapter]:
        """The adapter of every attention record: one of ``passed`` where it fits, else the one the plan holds;
        a record with neither raises :class:`PlanError` saying how to pass it."""
        extra = _check_passed(passed or ())
        out: list[AttentionAdapter] = []
        for i, record in enumerate(self.attention):
            where = f"attention[{i}]"
            held = self._adapters[i] if i < len(self._adapters) else None
            found = _adapter_for(record, where, extra) if extra or held is None else None
            # a passed adapter replaces the held one; a built-in rebuilt again would only duplicate it
            adapter = found if held is None or any(found is a for a in extra) else held
            if adapter is None:
                raise _missing_adapter(record, where)
            out.append(adapter)
        return out

    def _check_targets(self, model: nn.Module, params: dict[str, nn.Parameter],
                       adapters: Sequence[AttentionAdapter]) -> None:
        """Everything ``apply`` will change, found in ``model`` first, so that a plan naming something the model
        lacks (or an attribute that is not a plain number) fails before the model is touched."""
        for name, tp in self.tensors.items():
            if tp.readout_use is not None and tp.readout_use not in params:
                raise PlanError(f"tensors[{name!r}].readout_use: the model has no parameter {tp.readout_use!r}")
            if tp.lookup_module is not None:
                _find_module(model, tp.lookup_module, f"tensors[{name!r}].lookup_module")
        for i, (adapter, r) in enumerate(zip(adapters, self.attention)):
            where = f"attention[{i}]"
            mod = _find_module(model, r["module"], f"{where}.module")
            site = r["site"]
            for field_name, kind in getattr(type(adapter), "STATE_FIELDS", {}).items():
                if kind is not AttributeName:
                    continue
                # the adapter sets this attribute: it must be one the module already keeps a number in
                attr = getattr(adapter, field_name)
                current = getattr(mod, attr, _ABSENT)
                number = (isinstance(current, numbers.Real) and not isinstance(current, bool)) or (
                    isinstance(current, torch.Tensor) and current.numel() == 1)
                if not (current is None or number):
                    raise PlanError(f"{where}.adapter_state.{field_name}: module {r['module']!r} has no number "
                                    f"attribute {attr!r} for adapter {adapter.name!r} to set")
            if isinstance(adapter, ScaleAttribute) and not _is_num(site.get("value")):
                raise PlanError(f"{where}.site.value: adapter {adapter.name!r} needs the scale to set, got "
                                f"{site.get('value')!r}")
            if isinstance(adapter, MultiheadAttention) and not isinstance(mod, nn.MultiheadAttention):
                raise PlanError(f"{where}.module: {r['module']!r} is a {type(mod).__name__}, not the "
                                "nn.MultiheadAttention adapter 'torch-mha' expects")
            if isinstance(adapter, QueryRows):
                if site.get("rows") is None or not site.get("row_params"):
                    raise PlanError(f"{where}.site: adapter 'query-rows' needs rows and row_params")
                for rel in site["row_params"]:
                    full = f"{r['module']}.{rel}" if r["module"] else rel
                    if full not in params:
                        raise PlanError(f"{where}.site.row_params: the model has no parameter {full!r}")
        for i, r in enumerate(self.residual):
            mod = _find_module(model, r["module"], f"residual[{i}].module")
            if not hasattr(mod, RESIDUAL_ATTR):
                raise PlanError(f"residual[{i}].module: {r['module']!r} has no {RESIDUAL_ATTR} attribute to set")
        for i, r in enumerate(self.backward):
            _find_module(model, r["module"], f"backward[{i}].module")

    def forward_state(self) -> list[str]:
        """What this plan puts in the forward pass that the weights do not carry (an attention scale set as an
        attribute, a multiplier on a tied readout's input). A checkpoint of the model reproduces its outputs
        only on a model this plan was applied to (``plan.apply(model, reinit=False)``); such models carry a
        ``proxytune_plan`` buffer so that loading into any other model fails loudly."""
        out = [f"attention {r['module']!r}: logits x{r['factor']:.4g} ({r['adapter']})" for r in self.attention
               if r["factor"] != 1.0 and not r["site"].get("query_params")]
        out += [f"{tp.readout_use!r}: readout multiplier x{tp.readout_multiplier * tp.scale(self.mode).multiplier:.4g}"
                for tp in self.tensors.values()
                if tp.readout_use is not None and tp.readout_multiplier * tp.scale(self.mode).multiplier != 1.0]
        out += [f"{tp.lookup_module!r}: output x{tp.lookup_multiplier:.4g} (the lookup of a table that carries its "
                f"readout multiplier)" for tp in self.tensors.values()
                if tp.lookup_module is not None and tp.lookup_multiplier != 1.0]
        out += [f"{r['module']!r}: residual scales {tuple(round(c, 4) for c in r['scales'])}" for r in self.residual]
        return out

    def digest(self) -> str:
        """A short fingerprint of the plan's content: equal for a plan and its saved-and-loaded copy."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------ optimizer
    def param_groups(
        self, lr: float, weight_decay: float = 0.0, *, eps: float | tuple | None = None,
        gamma: dict[str, float] | None = None, model: nn.Module | None = None,
        muon_lr: float | None = None, merge: bool = False,
    ) -> list[dict[str, Any]]:
        """One torch param group per tensor with its planned lr / weight_decay / eps.

        ``lr``, ``weight_decay`` and ``eps`` are the base values (tuned at the
        base shape). ``gamma`` holds per-role LR constants (Everett et al.'s
        ``gamma_l``: ``{"embedding": 2.0, "readout": 0.5}``), tuned at the base
        and transferred unchanged. ``muon_lr`` is the base LR of Muon's (or
        Dion's) matrix groups (default ``lr``). ``merge=True`` puts tensors
        whose settings are all equal into one group (``names`` lists them), so
        foreach/fused optimizer kernels batch them as they would for a plain
        model.
        """
        _check_positive("lr", lr)
        if muon_lr is not None:
            _check_positive("muon_lr", muon_lr)
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0 and math.isfinite(weight_decay)):
            raise PlanError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        gamma = dict(gamma or {})
        for role, g in gamma.items():
            if role not in ("embedding", "hidden", "readout", "vector", "scalar"):
                raise PlanError(f"gamma has unknown role {role!r}; valid: embedding, hidden, readout, vector, scalar")
            _check_positive(f"gamma[{role!r}]", g)

        extras = group_extras(self.optimizer_name)  # the optimizer's own group keys (eps, Muon's use_muon...)
        unit = get_recipe(self.recipe).unit
        params = self._resolve(model)
        groups = []
        for name, tp in self.tensors.items():
            sc = tp.scale(self.mode)
            base_lr = muon_lr if (tp.muon and muon_lr is not None) else lr
            g: dict[str, Any] = {
                "params": [params[name]], "name": name, "role": tp.role,
                "lr": base_lr * gamma.get(tp.role, 1.0) * sc.lr,
                "weight_decay": 0.0 if tp.no_decay else weight_decay * sc.wd,
            }
            if unit and g["weight_decay"] and g["lr"] > 0:
                # u-muP's independent decay: wd per step at the schedule's peak, whatever the tensor's LR
                g["weight_decay"] = weight_decay / g["lr"]
            g.update(extras(tp, sc, eps))
            groups.append(g)
        if merge:
            return _merge_groups(groups)
        return groups

    def optimizer(
        self, lr: float, weight_decay: float = 0.0, *, model: nn.Module | None = None,
        gamma: dict[str, float] | None = None, eps: float | tuple | None = None,
        muon_lr: float | None = None, **kwargs: Any,
    ) -> torch.optim.Optimizer:
        """Build the optimizer named in the plan with per-tensor param groups.

        Extra keyword arguments go to the optimizer (``betas``, ``momentum``...).
        """

        groups = self.param_groups(lr, weight_decay, eps=eps, gamma=gamma, model=model, muon_lr=muon_lr,
                                   merge=True)
        return build_optimizer(self.optimizer_name, groups, lr=lr, **kwargs)

    # ------------------------------------------------------------- clipping
    def clip_weights(self) -> dict[str, float]:
        """Per planned tensor, the factor that turns its gradient in this plan's mode into the gradient of the
        explicit form: the folded weight is ``W' = s W`` with ``s`` the forward multiplier it absorbed, so its
        gradient is the explicit one over ``s``. 1 for every tensor of an explicit plan."""
        if self.mode != "folded":
            return {name: 1.0 for name in self.tensors}
        return {name: (tp.explicit.multiplier / tp.folded.multiplier if tp.folded.multiplier else 1.0)
                for name, tp in self.tensors.items()}

    def clip_grad_norm_(self, model: nn.Module | None, max_norm: float, *, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> torch.Tensor:
        """Clip the model's gradients by their global norm measured in the explicit form's units.

        The drop-in for ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)``. Folding a forward
        multiplier ``s`` into a weight divides that weight's gradient by ``s``, so torch's clipping of a folded
        model sees a different norm (CompleteP at 8x the base depth: branch gradients 8x larger) and clips in
        other steps than the explicit form would. Here each tensor's gradient norm is weighted by
        :meth:`clip_weights` before the global norm is taken, and every gradient is scaled by the same factor
        ``min(1, max_norm / (norm + 1e-6))``: a folded model trains as its explicit form does, clipping
        included. Returns the total norm before clipping (explicit units), as torch's does. ``model`` may be
        None for a plan bound with :meth:`bind`.
        """
        from torch.nn.utils import clip_grads_with_norm_, get_total_norm

        _check_positive("max_norm", max_norm)
        params = self._resolve(model)
        weights = self.clip_weights()
        by_weight: dict[float, list[torch.Tensor]] = {}
        seen: set[int] = set()
        grads_params = []
        for name, w in weights.items():
            p = params[name]
            if id(p) in seen or p.grad is None:
                continue
            seen.add(id(p))
            grads_params.append(p)
            by_weight.setdefault(w, []).append(p.grad)
        if not grads_params:
            return torch.tensor(0.0)
        parts = [get_total_norm(grads, norm_type) * w for w, grads in by_weight.items()]
        total = get_total_norm(parts, norm_type, error_if_nonfinite)
        clip_grads_with_norm_(grads_params, max_norm, total)
        return total

    # -------------------------------------------------------------- explain
    def explain(self, lr: float | None = None, weight_decay: float | None = None,
                eps: float | None = None, *, mode: str | None = None, max_rows: int | None = None) -> str:
        """A table with one row per tensor: role, width multipliers (m_in,
        m_out), depth multiplier (m_L), init std, forward multiplier, lr, wd
        and eps (absolute when the base value is given, else as a multiplier
        of the base value), followed by the plan's notes."""
        mode = mode or self.mode
        head = (f"proxytune plan: recipe={self.recipe} optimizer={self.optimizer_name} mode={mode} "
                f"alignment={self.alignment} weight_decay={self.weight_decay_policy}")
        cols = ["tensor", "role", "shape", "m_in", "m_out", "m_L", "init std", "mult", "lr", "wd", "eps"]
        rows = []
        unit = get_recipe(self.recipe).unit

        def rel(base: float | None, mult: float) -> str:
            return f"x{mult:.4g}" if base is None else f"{base * mult:.3g}"

        dion = get_optimizer(self.optimizer_name).family == "dion"
        matrix_mark = "/dion" if dion else "/muon"
        for name, tp in self.tensors.items():
            sc = tp.scale(mode)
            mult = sc.multiplier
            wd_txt = "0 (no decay)" if tp.no_decay else rel(weight_decay, sc.wd)
            if unit and not tp.no_decay:  # independent decay: the group's wd is wd / its lr
                wd_txt = ("wd / lr" if weight_decay is None or lr is None
                          else f"{weight_decay / (lr * sc.lr):.3g}" if sc.lr > 0 else "0")
            eps_txt = "-" if not get_optimizer(self.optimizer_name).has_eps else rel(eps, sc.eps)
            if dion and tp.muon:  # the column-normalization eps: its own base value, not AdamW's eps
                eps_txt = rel(None if eps is None else DION_MATRIX_EPS, sc.eps)
            role = (tp.role + ("*" if tp.branch_output else "") + ("?" if tp.role_source == "guess" else "")
                    + ("~" if tp.branch_source == "structure" else "") + (matrix_mark if tp.muon else ""))
            init_txt = (f"{tp.base_std * sc.init:.3g}" if tp.base_std > 0
                        else "const" if sc.init == 1 else f"const x{sc.init:.3g}")
            rows.append([
                name, role, "x".join(map(str, tp.shape)), f"{tp.m_in:.3g}", f"{tp.m_out:.3g}",
                f"{tp.depth:.3g}", init_txt, f"{mult:.3g}", rel(lr, sc.lr), wd_txt, eps_txt,
            ])
        shown = rows if max_rows is None or len(rows) <= max_rows else rows[:max_rows]
        widths = [max(len(c), *(len(r[i]) for r in shown)) if shown else len(c) for i, c in enumerate(cols)]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        lines = [head, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in shown]
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more tensors")
        lines += self._explain_legend(dion)
        return "\n".join(lines)

    def _explain_legend(self, dion: bool) -> list[str]:
        """The lines under :meth:`explain`'s table: the columns' legend, what the optimizer's columns mean, u-muP's
        backward scales, the named multipliers, the plan's notes and the forward-pass state."""
        lines: list[str] = []
        lines.append("role* = residual-branch output; ? = role guessed from the shape (the forward pass did not show "
                     "how the tensor is used: check it); ~ = branch output guessed from the module structure; lr/wd/eps "
                     "shown as multipliers of the base value unless base values were given.")
        if get_optimizer(self.optimizer_name).eps_power == 2:
            lines.append(f"{self.optimizer_name}: the eps column is the damping (matrix_eps, base 1e-6 unless eps= "
                         "is given) added to the statistics L = sum G G^T and R = sum G^T G; it follows the "
                         "gradient's scale squared times the tensor's size.")
        if dion:
            lines.append(f"{self.optimizer_name}: role/dion = Dion's matrix step (rank-r power iteration with error "
                         "feedback, scaled by sqrt(fan_out/fan_in); its lr from muon_lr= when given; its eps is "
                         f"the column normalization's, base {DION_MATRIX_EPS:g}); every other row steps with AdamW "
                         "(Adam's rows and eps).")
        if get_recipe(self.recipe).unit:
            lines.append("u-mup: init std, mult and lr are absolute (u-muP's rules at this tensor's own shape; the "
                         "base value is the global lr, optimal near 1). Forward: every mult above is in the forward "
                         "pass, as a parametrization (weights) or an input hook (a tied readout). Backward: "
                         "separate scales keep gradients near unit (listed below; per-tensor constants for a "
                         "fixed batch shape, which Adam does not see). Folded: nothing. Weight decay: wd per step at the peak LR, for every "
                         "decayed tensor (its group's decay is wd / lr).")
            bwd = [f"{r['module']}: logits' gradient x tokens*V/sqrt(V-1), V={r['vocab']}" if r["kind"] == "logits"
                   else f"{r['module']}: input gradient x{r['factor']:.3g}" for r in self.backward]
            extra = [f"{n}: x{tp.grad_scale:.3g}" for n, tp in self.tensors.items() if tp.grad_scale != 1.0]
            lines.append("u-mup backward scales: every weight's gradient x tokens^-1/2 (embedding tables: "
                         "sqrt(rows / tokens))" + (f", and further: {'; '.join(extra[:4])}"
                                                   + (f"; and {len(extra) - 4} more" if len(extra) > 4 else "")
                                                   if extra else "")
                         + (f"; on modules: {'; '.join(bwd[:4])}"
                            + (f"; and {len(bwd) - 4} more" if len(bwd) > 4 else "") if bwd else ""))
        lines.append(f"named multipliers (set at the base shape, included in the columns above; the recipe "
                     f"carries them to this shape): {self.multipliers.describe()}")
        for tp in self.tensors.values():
            for n in tp.notes:
                lines.append(f"note: {tp.name}: {n}")
        for n in self.notes:
            lines.append(f"note: {n}")
        state = self.forward_state()
        if state:
            lines.append("forward-pass state not stored in the weights (after loading a checkpoint, call "
                         "plan.apply(model, reinit=False)): " + "; ".join(state[:4])
                         + (f"; and {len(state) - 4} more" if len(state) > 4 else ""))
        return lines


def _merge_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        key = tuple(sorted((k, repr(v)) for k, v in g.items() if k not in ("params", "name", "role")))
        if key not in merged:
            merged[key] = {k: v for k, v in g.items() if k not in ("params", "name", "role")}
            merged[key].update(params=[], names=[])
        merged[key]["params"] += g["params"]
        merged[key]["names"].append(g["name"])
    return list(merged.values())


def _check_positive(what: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise PlanError(f"{what} must be a finite number > 0, got {value!r}")


def _base_module_name(name: str, pattern: re.Pattern, base_counts: dict[str, int]) -> str:
    m = pattern.search(name + ".")
    if not m:
        return name
    key = name[: m.start(1)]
    n = base_counts.get(key)
    if not n:
        return name
    return name[: m.start(1)] + str(int(m.group(1)) % n) + name[m.end(1):]


def _attention_sites(target: nn.Module, base: nn.Module, pattern: re.Pattern, adapters: Sequence[AttentionAdapter],
                     traced: Sequence[AttentionCall] = (), target_traced: Sequence[AttentionCall] = (),
                     trace: Any = None) -> tuple[list[tuple[AttentionAdapter, AttentionSite]], list[str]]:
    """The attention modules and how their logit factor is applied: the adapters first (in order), then, for
    a module none of them handles, where the traced forward pass of the base says its query comes from."""
    counts = _stack_counts(base, pattern)
    calls = {c.module: c for c in traced}
    t_calls = {c.module: c for c in target_traced}
    t_params = _named_params(target)
    b_params = _named_params(base)
    sites, unhandled = [], []
    for name, mod in target.named_modules():
        name = canonical_name(name)
        bname = _base_module_name(name, pattern, counts)
        try:
            bmod = base.get_submodule(bname) if name else base
        except AttributeError:
            continue
        for ad in adapters:
            site = ad.match(name, mod, bmod)
            if site is not None and site.query_params and calls.get(bname) is not None \
                    and calls[bname].query_normed:
                continue  # QK-norm: a factor folded into the query projection would be normalized away
            if site is not None:
                sites.append((ad, site))
                break
        else:
            if any(name.startswith(s.module + ".") for _, s in sites):
                continue
            traced_site = _traced_site(name, mod, bname, calls.get(bname), t_params, b_params, t_calls.get(name),
                                       trace)
            if traced_site is not None:
                sites.append(traced_site)
            elif looks_like_attention(mod) or bname in calls:
                hd, bhd = head_dim_of(mod), head_dim_of(bmod)
                if bname in calls and name in t_calls:  # the trace saw it: its real head dims
                    hd, bhd = t_calls[name].head_dim, calls[bname].head_dim
                unhandled.append((name, hd, bhd))
    # a wrapper around a handled attention module (BERT's BertAttention around its `self`) is handled too
    unhandled = [u for u in unhandled if not any(s.module.startswith(u[0] + ".") for _, s in sites)]
    return sites, unhandled


def _stack_counts(base: nn.Module, pattern: re.Pattern) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, _ in base.named_modules():
        m = pattern.search(n + ".")
        if m:
            key = n[: m.start(1)]
            counts[key] = max(counts.get(key, 0), int(m.group(1)) + 1)
    return counts


def _native_scales(site: AttentionSite, base_calls: dict[str, AttentionCall], target_calls: dict[str, AttentionCall],
                   base_name: str) -> tuple[float, float] | None:
    """The scale the model's own forward applies to ``q . k`` at the base and at the target (from the traces),
    or None when a trace did not show it."""
    b, t = base_calls.get(base_name), target_calls.get(site.module)
    if b is None or t is None or b.scale is None or t.scale is None or b.scale <= 0 or t.scale <= 0:
        return None
    return b.scale, t.scale


def _traced_site(name: str, mod: nn.Module, bname: str, call: AttentionCall | None, t_params: dict[str, Any],
                 b_params: dict[str, Any], t_call: AttentionCall | None = None, trace: Any = None,
                 ) -> tuple[AttentionAdapter, AttentionSite] | None:
    """An attention site from the trace: the query is a whole projection inside the module (fold the factor into
    it) or rows of a fused one (a rows multiplier). The head dims are the ones the traces saw."""
    if call is None or call.query is None or call.query_normed:
        return None
    qparam, rows = call.query
    prefix = bname + "." if bname else ""
    if not qparam.startswith(prefix) or qparam not in b_params:
        return None
    rel = qparam[len(prefix):]
    layer = rel.rpartition(".")[0]
    hd = t_call.head_dim if t_call is not None else head_dim_of(mod)
    if hd is None:
        return None
    name_prefix = name + "." if name else ""
    if f"{name_prefix}{rel}" not in t_params:
        return None
    # the projection's weight and bias (a layer), or the raw matrix itself
    own = [f"{layer}.{p}" for p in ("weight", "bias") if f"{name_prefix}{layer}.{p}" in t_params] if layer else [rel]
    if not own:
        return None
    if rows is None:
        return QueryProjection(), AttentionSite(name, "query-projection", hd, call.head_dim,
                                                query_params=[f"{name_prefix}{r}" for r in own])
    lay = trace.layout(qparam) if trace is not None else None
    out_dim = lay[2] if lay is not None and lay[0] == "matmul" and lay[2] is not None else 0
    t_out, b_out = t_params[f"{name_prefix}{rel}"].shape[out_dim], b_params[qparam].shape[out_dim]
    if (rows[0] * t_out) % b_out or (rows[1] * t_out) % b_out:
        return None
    t_rows = [rows[0] * t_out // b_out, rows[1] * t_out // b_out]
    return QueryRows(), AttentionSite(name, "query-rows", hd, call.head_dim, rows=t_rows, row_params=own,
                                      rows_dim=out_dim)


@dataclass(frozen=True)
class _PlanRequest:
    """The choices of one :func:`parameterize` call (see its docstring). Once checked
    (:func:`_checked_request`), ``multipliers`` is a :class:`Multipliers` and ``mode`` is the one the plan
    uses."""

    recipe: str
    optimizer: str
    mode: str
    alignment: str
    weight_decay: str
    muon_scale: str
    roles: dict[str, str] | None
    layouts: dict[str, str] | None
    block_pattern: str | None
    branch_outputs: Iterable[str] | None
    tied: str
    attention: Sequence[AttentionAdapter] | None
    decay_vectors: bool
    multipliers: Multipliers | dict[str, Any] | None
    seq_len: int | None
    forward: ForwardSpec | None
    readout: str

    @property
    def rec(self) -> Any:
        return get_recipe(self.recipe)

    @property
    def named(self) -> Multipliers:
        """The named multipliers (a :class:`Multipliers` once the request is checked)."""
        return self.multipliers  # type: ignore[return-value]


def _checked_request(req: _PlanRequest, target: Any, base: Any) -> tuple[_PlanRequest, list[str]]:
    """Phase: check every choice (ValueError, or PlanError), resolve the multipliers and the mode (a
    unit-scaled recipe keeps its scales in the forward pass). Returns the checked request and the first notes."""
    rec = get_recipe(req.recipe)
    spec = get_optimizer(req.optimizer)
    try:
        named = (req.multipliers if isinstance(req.multipliers, Multipliers)
                 else Multipliers.from_dict(req.multipliers))
    except (TypeError, ValueError) as exc:
        raise PlanError(f"multipliers: {exc}") from None
    check_choice("mode", req.mode, MODES)
    check_choice("alignment", req.alignment, ALIGNMENT_CHOICES)
    check_choice("weight-decay policy", req.weight_decay, WD_POLICIES)
    check_choice("muon scale", req.muon_scale, MUON_SCALES)
    if not isinstance(target, nn.Module) or not isinstance(base, nn.Module):
        raise PlanError("target and base must both be torch.nn.Module instances")
    notes: list[str] = []
    if rec.unit and (spec.family != "adam" or spec.alignment):
        raise PlanError(f"{req.recipe}'s LR table is for Adam-family optimizers (adam, adamw, adam-atan2); "
                        f"{req.optimizer} would need other rules")
    if spec.alignment and spec.alignment != req.alignment and rec.per_layer_lr:
        notes.append(f"{req.optimizer} uses the {spec.alignment!r} alignment column of the LR exponents whatever "
                     f"alignment= says (docs/parameterizations.md section {18 if spec.family == 'dion' else 17})")
    if spec.family == "dion" and req.muon_scale != "spectral":
        notes.append(f"muon_scale={req.muon_scale!r} is Muon's: Dion's matrices step with the paper's scale "
                     "sqrt(fan_out / fan_in) whatever it says")
    mode = req.mode
    if rec.unit and mode == "folded":
        mode = "explicit"
        notes.append(f"{req.recipe} keeps its scales in the forward pass (that is what keeps low-precision tensors "
                     "in range): mode is explicit")
    return replace(req, multipliers=named, mode=mode), notes


def _analysis(target: nn.Module, base: nn.Module, req: _PlanRequest, notes: list[str]) -> Any:
    """Phase: compare the target with the base, tensor by tensor (:func:`proxytune.shapes.analyze_model`)."""
    branch_outputs = req.branch_outputs
    analysis = analyze_model(target, base, roles=req.roles, layouts=req.layouts, block_pattern=req.block_pattern,
                             branch_outputs=list(branch_outputs) if branch_outputs is not None else None,
                             tied=req.tied, forward=req.forward, readout=req.readout, seq_len=req.seq_len)
    shapes = analysis.tensors
    notes += analysis.notes
    if req.rec.unit and any(s.functional_readout is not None for s in shapes):
        raise PlanError(f"{req.recipe} needs the readout's backward scale on a module: tensor "
                        f"{next(s.name for s in shapes if s.functional_readout is not None)!r} is also used as a functional "
                        "readout; give the model an nn.Linear head (tied to the table if you like)")
    return analysis


@dataclass(frozen=True)
class _PlanContext:
    """What the plan of every tensor reads: the checked request, its recipe and optimizer, the parameters of the
    target and the base, the target's modules, and what the earlier phases found: the attention-logit factor of
    each query tensor (``q_factor``) and the query tensors carrying the named attention multiplier
    (``named_query``), the model's own forward factors (``own``, see :func:`_own_factors`), the attention
    modules, the MLP activation inputs and the u-muP context (None for other recipes)."""

    req: _PlanRequest
    rec: Any
    spec: Any
    target: nn.Module
    t_params: dict[str, nn.Parameter]
    base_params: dict[str, nn.Parameter]
    t_modules: dict[str, nn.Module]
    q_factor: dict[str, float]
    named_query: set[str]
    own: dict[str, tuple[float, float]]
    attn_modules: list[str]
    act_inputs: set[str]
    unit: dict[str, Any] | None


def _plan_context(target: nn.Module, base: nn.Module, req: _PlanRequest, analysis: Any,
                  attention: tuple[dict[str, float], set[str]], attn_records: list[dict[str, Any]],
                  notes: list[str]) -> _PlanContext:
    """Phase: what every tensor's plan needs besides its shape (``attention``: the query factors and the
    query tensors carrying the named attention multiplier, from :func:`_attention_plan`)."""
    shapes = analysis.tensors
    rec, named = req.rec, req.named
    # Constant factors of the model's own forward that change with its shape (Gemma's sqrt(hidden) on the
    # embeddings, T5's d_model^-1/2 before the readout) already apply part of a rule: the plan divides them out.
    own = _own_factors(analysis.factors, shapes, notes)
    base_params = _named_params(base)
    t_params = _named_params(target)
    t_modules = canonical_modules(target)
    attn_modules = [r["module"] for r in attn_records]
    act_inputs, act_kind = _activation_inputs(shapes, t_modules, target)
    if named.activation != 1.0 and not act_inputs:
        raise PlanError(f"activation multiplier {named.activation:g}: no MLP input projection found (looked for "
                        f"{', '.join(GATE_NAMES + UP_NAMES)} modules inside blocks)")
    unit = (_unit_context(rec, shapes, target, t_modules, attn_modules, act_kind, named, notes, req.seq_len)
            if rec.unit else None)
    if unit is not None:
        unit["head_dim"] = {r["module"]: r["site"]["head_dim"] for r in attn_records}
    q_factor, named_query = attention
    return _PlanContext(req=req, rec=rec, spec=get_optimizer(req.optimizer), target=target, t_params=t_params,
                        base_params=base_params, t_modules=t_modules, q_factor=q_factor, named_query=named_query,
                        own=own, attn_modules=attn_modules, act_inputs=act_inputs, unit=unit)


def _new_plan(ctx: _PlanContext, tensors: dict[str, TensorPlan], attn_records: list[dict[str, Any]],
              notes: list[str]) -> Plan:
    """Phase: the plan of the tensors and attentions, with u-muP's residual and backward scales."""
    req = ctx.req
    plan = Plan(recipe=req.recipe, optimizer_name=req.optimizer, mode=req.mode, alignment=req.alignment,
                weight_decay_policy=req.weight_decay, muon_scale_mode=req.muon_scale, tensors=tensors,
                attention=attn_records, notes=notes, multipliers=req.named)
    if ctx.unit is not None:
        plan.residual = ctx.unit["residual"]
        plan.backward = _unit_backward(tensors, ctx.target, ctx.t_modules, notes, ctx.unit)
    return plan


def parameterize(
    target: nn.Module, base: nn.Module, recipe: str = "mup", optimizer: str = "adamw", *, mode: str = "folded",
    alignment: str = "full", weight_decay: str = "independent", muon_scale: str = "spectral",
    roles: dict[str, str] | None = None, layouts: dict[str, str] | None = None, block_pattern: str | None = None,
    branch_outputs: Iterable[str] | None = None, tied: str = "embedding",
    attention: Sequence[AttentionAdapter] | None = None, decay_vectors: bool = False,
    multipliers: Multipliers | dict[str, Any] | None = None, seq_len: int | None = None,
    forward: ForwardSpec | None = None, readout: str = "auto", apply: bool = True,
) -> Plan:
    """Plan (and by default apply) a parameterization of ``target`` relative to ``base``.

    Args:
        target: the model to train (may be on ``meta``; then only the plan is built).
        base: the same model code at the proxy shape where HPs are tuned. On
            ``meta`` it is free to build; a materialized base also gives its
            exact init statistics (else they are inferred from the target's
            own init, see ``explain``).
        recipe: ``sp``, ``ntk``, ``mup``, ``mf``, ``sp-perlayer``, ``depth-mup``, ``completep``.
        optimizer: ``sgd``, ``adam``, ``adamw``, ``adam-atan2``, ``adafactor``, ``muon``, ``soap``, ``shampoo``
            (these two from pytorch-optimizer, the ``matrix`` extra), ``dion``.
        mode: ``folded`` (default: multipliers absorbed into init/lr/eps/wd, the
            forward pass untouched) or ``explicit`` (multipliers in the forward
            pass, as the papers write them).
        alignment: ``full`` or ``none``: which column of Everett et al.'s LR
            exponent table to use.
        weight_decay: ``independent`` (``lr x wd`` constant), ``sqrt-width``
            (Fan et al. 2025) or ``none``.
        muon_scale: ``spectral`` (update scale ``sqrt(max(1, fan_out/fan_in))``)
            or ``rms`` (``0.2 sqrt(max(fan_in, fan_out))``, matches AdamW's RMS).
        roles: glob -> role overrides, e.g. ``{"lm_head.weight": "readout"}``.
        layouts: glob -> ``"out_in"`` / ``"in_out"`` for modules proxytune
            does not know.
        block_pattern: regex whose group 1 is the block index.
        branch_outputs: globs naming residual-branch output tensors.
        tied: policy for a weight tied between embedding and readout:
            ``embedding`` (default; the readout use gets a forward multiplier,
            as the mup package does), ``readout``, or ``error``.
        attention: extra attention adapters tried before the built-in ones.
        decay_vectors: also apply weight decay to 0-D/1-D tensors (biases,
            gains); off by default, as in most LM training code.
        multipliers: named constants tuned at the base shape
            (:class:`proxytune.Multipliers`, or its dict form): per-role LR and
            init multipliers, the output, embedding and attention-logit
            multipliers. The recipe's rules carry them to the target; at the
            base shape they are the only change from the model's own init and
            the base HPs.
        seq_len: the sequence length of the training data (u-muP's attention output scale; the length of
            the example input of the traced forward pass).
        forward: how to call the model and read its logits (:class:`proxytune.forward.ForwardSpec`), for the
            one forward pass of the base that shows how each tensor is used.
        readout: ``auto`` (a model without a readout tensor is refused) or ``none`` (its output is not
            produced by a weight matrix).
        apply: re-initialize ``target`` and install multipliers now.

    Many parameters because: each is an independent, documented choice of the public call (a sweep file's
    and the command line's options map onto them); internally they travel as one ``_PlanRequest``.
    """
    req, notes = _checked_request(_PlanRequest(
        recipe=recipe, optimizer=optimizer, mode=mode, alignment=alignment, weight_decay=weight_decay,
        muon_scale=muon_scale, roles=roles, layouts=layouts, block_pattern=block_pattern,
        branch_outputs=branch_outputs, tied=tied, attention=attention, decay_vectors=decay_vectors,
        multipliers=multipliers, seq_len=seq_len, forward=forward, readout=readout), target, base)
    analysis = _analysis(target, base, req, notes)
    pattern = re.compile(analysis.block_pattern)
    sites, attn_records, q_factor, named_query = _attention_plan(
        target, base, analysis, pattern, req.rec, req.recipe, req.named, list(req.attention or ()), notes)
    _check_branches(analysis, req.rec, req.recipe, notes)
    ctx = _plan_context(target, base, req, analysis, (q_factor, named_query), attn_records, notes)
    tensors = {s.name: _plan_tensor(s, ctx) for s in analysis.tensors}
    transfer_down = any(s.m_in < 1 or s.m_out < 1 or s.depth < 1 for s in analysis.tensors)
    notes += _closing_notes(tensors, attn_records, req.mode, transfer_down)
    plan = _new_plan(ctx, tensors, attn_records, notes)
    plan._adapters = [ad for ad, _ in sites]
    if apply and not any(p.is_meta for p in target.parameters()):
        plan.apply(target)
    plan._model = target
    return plan



def _attention_plan(target: nn.Module, base: nn.Module, analysis: Any, pattern: re.Pattern, rec: Any, recipe: str,
                    named: Multipliers, user_adapters: list[AttentionAdapter], notes: list[str],
                    ) -> tuple[list, list[dict[str, Any]], dict[str, float], set[str]]:
    """Phase: the attention-logit factor of every attention module, and where it goes. Returns the sites, their
    records (saved with the plan), the factor folded into each query tensor, and the query tensors that carry the
    named attention multiplier."""
    adapters = user_adapters + list(DEFAULT_ADAPTERS)
    base_traced = analysis.trace.attention if analysis.trace is not None else ()
    target_traced = analysis.target_trace.attention if analysis.target_trace is not None else ()
    sites, unhandled = _attention_sites(target, base, pattern, adapters, base_traced, target_traced, analysis.trace)
    attn_records: list[dict[str, Any]] = []
    q_factor: dict[str, float] = {}
    named_query: set[str] = set()  # query tensors that carry the named attention multiplier
    if named.attention != 1.0 and not sites:
        raise PlanError(f"attention multiplier {named.attention:g}: no attention module found to apply it to "
                        "(see proxytune.nn.attention for the modules proxytune recognizes, or pass attention=[...])")
    base_calls = {c.module: c for c in base_traced}
    target_calls = {c.module: c for c in target_traced}
    counts = _stack_counts(base, pattern)
    for ad, site in sites:
        # The recipe's logits scale is relative to SP's 1/sqrt(d_head): muP's 1/d_head is (d/d0)^-1/2 more. The
        # model's own forward applies some scale too (SDPA's default d^-1/2, an attribute, none at all for T5,
        # which folds it into its init); the factor makes up the difference, from the traces where they show it.
        native = _native_scales(site, base_calls, target_calls, _base_module_name(site.module, pattern, counts))
        if rec.unit:  # u-muP is absolute: 1/d_head at every shape
            factor = site.head_dim ** -1.0 / (native[1] if native else site.head_dim ** -0.5)
        else:
            factor = (site.head_dim / site.base_head_dim) ** (rec.attn_exponent - 0.5)
            factor *= (native[0] / native[1]) if native else (site.head_dim / site.base_head_dim) ** 0.5
        for qn in site.query_params:
            q_factor[qn] = factor
        if named.attention != 1.0:
            # A separate query projection takes the constant as a per-tensor multiplier (folded, so trials
            # that differ in it still batch); otherwise the adapter applies it with the recipe's factor.
            query = site.query_params or query_params_of(site.module, _submodule(target, site.module))
            if query:
                named_query.update(query)
            else:
                factor *= named.attention
        attn_records.append({"module": site.module, "adapter": ad.name, "factor": factor,
                             "site": asdict(site), **_adapter_ref(ad)})
        if factor != 1.0:
            notes.append(f"attention {site.module!r}: head dim {site.base_head_dim} -> {site.head_dim}, "
                         f"logits x{factor:.4g} via {ad.name}")
    if rec.attn_exponent != 0:
        for name, hd, bhd in unhandled:
            if hd is not None and bhd is not None and hd != bhd:
                raise PlanError(
                    f"attention module {name!r} ({type(_submodule(target, name)).__name__}) changes head dim "
                    f"{bhd} -> {hd}; {recipe} needs its logits scaled by ({hd}/{bhd})^{rec.attn_exponent:g}, and "
                    "no adapter found where its scale is set (a fused query projection, a scale baked into its "
                    "forward). Give the module an attribute its forward passes as "
                    "F.scaled_dot_product_attention(scale=...) and name it: "
                    "parameterize(..., attention=[proxytune.nn.attention.ScaleAttribute('my_scale')]); or use a "
                    "separate query projection named q_proj; or write an adapter (proxytune.nn.attention."
                    "AttentionAdapter); or keep the head dim fixed and grow the number of heads.")
            if hd is None and any(s.m_in != 1 or s.m_out != 1 for s in analysis.tensors):
                notes.append(f"{name!r} looks like attention but its head dim is unknown: if it changes, "
                             "pass an attention adapter so the logits get the 1/d_head rule")
    return sites, attn_records, q_factor, named_query


def _check_branches(analysis: Any, rec: Any, recipe: str, notes: list[str]) -> None:
    """Phase: branch outputs must exist where depth rules apply, in every sub-module that ends a branch."""
    shapes = analysis.tensors
    if analysis.branch_gaps:
        if rec.depth_alpha is not None or rec.unit:
            raise PlanError(f"{recipe} scales every residual branch with depth, but " + "; ".join(analysis.branch_gaps[:3])
                            + ". Pass branch_outputs=[...] (globs for the last matrix and bias of every residual "
                            "branch; model: {branch_outputs: [...]} in a sweep file, --branch-output on the command "
                            "line)")
        notes += [f"residual branches: {g}" for g in analysis.branch_gaps[:3]]
    if rec.depth_alpha is not None:
        blocks_with_depth = {s.block for s in shapes if s.block is not None and s.depth != 1.0}
        with_branch = {s.block for s in shapes if s.branch_output}
        lacking = sorted(blocks_with_depth - with_branch)
        if lacking:
            raise PlanError(
                f"{recipe} scales residual branches with depth, but no branch-output tensor was found in "
                f"block(s) {', '.join(lacking[:4])}; pass branch_outputs=['*.attn.out.*', '*.mlp.down.*'] "
                "(globs for the last matrix and bias of each residual branch)")


def _closing_notes(tensors: dict[str, TensorPlan], attn_records: list[dict[str, Any]], mode: str,
                   transfer_down: bool) -> list[str]:
    """Phase: what the plan as a whole should tell its reader (base statistics, forward multipliers kept)."""
    notes: list[str] = []
    if transfer_down:
        notes.append("the base is larger than the target in width or depth: transferring down "
                     "(allowed; the rules are the same, read them as multipliers < 1)")
    if any(tp.init_source.startswith("target") and tp.init_source != "target (same shape as base)"
           for tp in tensors.values()):
        notes.append("base is on 'meta': base init std inferred from the target's own init (torch's "
                     "default fan-in init is recognized; other inits are assumed width-independent). "
                     "Pass a materialized base for exact base statistics.")
    elif any(tp.init_source == "target (same shape as base)" for tp in tensors.values()) and \
            any(tp.depth != 1.0 for tp in tensors.values()):
        notes.append("base is on 'meta': tensors whose shape does not change keep the target's own init, which "
                     "some models scale with their own depth (GPT-2's residual projections); pass a "
                     "materialized base to start from the base's init instead")
    if mode == "folded" and any(tp.readout_multiplier != 1 for tp in tensors.values()):
        notes.append("a tied embedding/readout weight keeps a forward multiplier on its readout use "
                     "(it cannot be folded into a shared tensor)")
    if any(r["adapter"] == "torch-mha" and r["factor"] != 1 for r in attn_records):
        notes.append("nn.MultiheadAttention fuses q/k/v: its query rows get a weight multiplier in both modes")
    for r in attn_records:
        if r["adapter"] == "query-rows" and r["factor"] != 1:
            rows = r["site"]["rows"]
            notes.append(f"attention {r['module']!r}: its query is rows {rows[0]}..{rows[1]} of the fused projection "
                         f"{(r['site']['row_params'][0].rpartition('.')[0] or r['site']['row_params'][0])!r} (found by "
                         "the traced forward pass): those rows get a weight multiplier in both modes")
    return notes


def _plan_tensor(s: TensorShape, ctx: _PlanContext) -> TensorPlan:
    """One tensor's plan. ``ctx.own`` holds the model's own forward factors relative to the base, on the
    tensor's use for its role and on its readout use (a tied table)."""
    req, rec, named = ctx.req, ctx.rec, ctx.req.named
    q_factor = ctx.q_factor.get(s.name, 1.0)
    branch = _branch_kind(s.name, ctx.attn_modules)
    # hidden matrices take the optimizer's matrix step (Muon's, with its own LR rule; Dion's, with its rows)
    matrix_step = (req.optimizer == "muon" or ctx.spec.family == "dion") and s.role == "hidden" \
        and len(s.shape) >= 2
    muon_matrix = matrix_step and req.optimizer == "muon"
    own_role, own_readout = ctx.own.get(s.name, (1.0, 1.0))
    named_forward = named.forward_for(s.role, query=s.name in ctx.named_query,
                                      branch=branch if s.branch_output else None,
                                      act_input=s.name in ctx.act_inputs) / own_role
    notes = list(s.notes)
    # a functional tie: the readout use cannot take a multiplier of its own, so the table carries it and the
    # lookup divides it back out
    lookup_multiplier = 1.0
    if s.functional_readout is not None and s.tied_readout is None and s.role == "embedding":
        r = _tied_readout_multiplier(s, rec, named, named_forward, own_readout)
        named_forward *= r
        lookup_multiplier = 1.0 / r
        if r != 1.0:
            notes.append(f"its readout use is a product in the forward of {s.functional_readout or 'the model'!r}: "
                         f"the tensor carries the readout multiplier x{r:.4g} and the lookup in {s.lookup_module!r} "
                         f"is multiplied by x{lookup_multiplier:.4g}")
    if ctx.unit is not None:
        return _plan_unit_tensor(s, rec, ctx.spec, ctx.t_params, named_forward * q_factor, named, branch, ctx.unit,
                                 req.decay_vectors, notes)
    base_numel = math.prod(s.base_shape)
    tctx = TensorContext(role=s.role, width=s.width, depth=s.depth,
                         size=math.prod(s.shape) / base_numel if base_numel else 1.0, in_block=s.block is not None,
                         branch_output=s.branch_output, attn_factor=q_factor, muon_matrix=muon_matrix,
                         named_forward=named_forward,
                         named_init=named.init_for(s.role), named_lr=named.lr_for(s.role))
    explicit, folded = tensor_scales(rec, ctx.spec, tctx, alignment=req.alignment, muon_scale=req.muon_scale,
                                     wd_policy=req.weight_decay)
    base_std, source = _base_std(s, ctx)
    muon_scale_value = 1.0
    fi, fo = s.fan_in, s.fan_out
    if muon_matrix:
        muon_scale_value = (math.sqrt(max(1.0, fo / fi)) if req.muon_scale == "spectral"
                            else 0.2 * math.sqrt(max(fi, fo)))
    elif matrix_step:
        muon_scale_value = math.sqrt(fo / fi)  # Dion's (Ahn et al. 2025)
    readout_multiplier = 1.0
    if s.tied_readout is not None:
        readout_multiplier = _tied_readout_multiplier(s, rec, named, named_forward, own_readout)
    return TensorPlan(
        name=s.name, role=s.role, shape=list(s.shape), base_shape=list(s.base_shape), layout=s.layout,
        fan_in=s.fan_in, fan_out=s.fan_out, m_in=s.m_in, m_out=s.m_out, width=s.width, depth=s.depth,
        block=s.block, branch_output=s.branch_output, base_std=base_std, init_source=source,
        explicit=explicit, folded=folded, aliases=s.aliases, readout_use=s.tied_readout,
        readout_multiplier=readout_multiplier, attn_factor=q_factor, muon=matrix_step,
        muon_scale=muon_scale_value, no_decay=(len(s.shape) < 2 and not req.decay_vectors), notes=notes,
        role_source=s.role_source, branch_source=s.branch_source,
        lookup_module=s.lookup_module, lookup_multiplier=lookup_multiplier)


def _base_std(s: TensorShape, ctx: _PlanContext) -> tuple[float, str]:
    """The base init std of a tensor and where it comes from: measured on the base when it is materialized,
    else inferred from the target's own init."""
    tp_ = ctx.t_params[s.name]
    bp = ctx.base_params[s.base_name]
    mod_name, _, attr = s.name.rpartition(".")
    module = ctx.t_modules.get(mod_name, ctx.target) if mod_name else ctx.target
    if not bp.is_meta:
        # even when the shapes agree: the target's own init may depend on its size in ways the rules replace
        # (e.g. GPT-2 scales its residual projections by its own depth; a readout bias by its fan-in)
        return _std(bp), "base"
    if tuple(s.shape) == tuple(s.base_shape) and not tp_.is_meta:
        return _std(tp_), "target (same shape as base)"
    if tp_.is_meta:
        raise PlanError(f"both target and base are on 'meta': tensor {s.name!r} has no init statistics; "
                        "materialize the base (it is small) or the target")
    own = _std(tp_)
    fan_t = _torch_fan_in(module, attr, s.shape)
    fan_b = None
    if fan_t:
        # a bias shares its weight's fan-in: read the base weight's shape
        wname = s.base_name[: -len(attr)] + "weight" if attr == "bias" else s.base_name
        wb = ctx.base_params.get(wname)
        fan_b = _torch_fan_in(module, "weight", tuple(wb.shape)) if wb is not None else None
    ref = _torch_default_std(fan_t)
    if ref and own > 0 and abs(own / ref - 1) < 0.05 and fan_b:
        return 1.0 / math.sqrt(3.0 * fan_b), "target (torch default fan-in init)"
    return own, "target (assumed width-independent)"


def _tied_readout_multiplier(s: TensorShape, rec, named: Multipliers, table_forward: float,
                             own_readout: float) -> float:
    """The forward multiplier a tied table's readout use needs on top of what the table itself carries
    (``table_forward``: the named embedding multiplier and the compensation of the model's own factors)."""
    r = 1.0
    if rec.tied_readout_multiplier:
        a_e, b_e = AB[rec.abc]["embedding"]
        a_r, b_r = AB[rec.abc]["readout"]
        # folded readout init exponent minus the embedding's: mup -> 1/m_in
        r = float(s.m_out) ** float(-((a_r + b_r) - (a_e + b_e)))
    # the shared tensor carries the embedding's forward multiplier; its readout use needs the output one instead
    return r * named.output / own_readout / table_forward


def _own_factors(factors: Sequence[FactorRatio], shapes: Sequence[TensorShape],
                 notes: list[str]) -> dict[str, tuple[float, float]]:
    """Per tensor, the model's own forward factors relative to the base: (on its role's use, on its readout
    use). A factor whose value at the target could not be read is left alone, with a note."""
    by_name = {s.name: s for s in shapes}
    out: dict[str, list[float]] = {}
    for f in factors:
        s = by_name.get(f.tensor)
        if s is None:
            continue
        where = "its lookup" if f.where == "embedding" else "the readout's input" if f.where == "readout-input" \
            else "the logits"
        ratio = f.ratio
        if ratio is None:
            notes.append(f"the model's forward multiplies {where} ({f.tensor!r}) by {f.source} in {f.module or 'the model'!r}, "
                         f"x{f.base:.4g} at the base; its value at the target could not be read, so the plan does not "
                         "compensate it: if it changes with width, coord-check will show it" if f.base is not None else
                         f"the model's forward multiplies {where} ({f.tensor!r}) by {f.source}; its value could not be "
                         "read")
            continue
        entry = out.setdefault(f.tensor, [1.0, 1.0])
        readout_use = f.where != "embedding"
        if readout_use and s.role != "readout":
            entry[1] *= ratio  # the readout use of a tied table
        else:
            entry[0] *= ratio
        if abs(ratio - 1.0) < 1e-9:
            notes.append(f"the model's forward multiplies {where} ({f.tensor!r}) by {f.source} (x{f.base:.4g}, the same "
                         "at base and target): nothing to compensate")
        else:
            notes.append(f"the model's forward multiplies {where} ({f.tensor!r}) by {f.source} in "
                         f"{f.module or 'the model'!r}: x{f.base:.4g} at the base, x{f.target:.4g} at the target; the "
                         f"plan divides that tensor's multiplier by the ratio {ratio:.4g} (absorbed)")
    return {k: (v[0], v[1]) for k, v in out.items()}

# ------------------------------------------------------------------ residual branches, activations, u-muP
#: a block attribute (two floats: attention, MLP) that multiplies the stream after each residual add
RESIDUAL_ATTR = "residual_scales"

#: leaf names of an MLP's pre-activation projections: the gate of a gated MLP, else its input projection
GATE_NAMES: tuple[str, ...] = ("gate", "gate_proj", "wi_0")
UP_NAMES: tuple[str, ...] = ("fc", "c_fc", "fc1", "up_proj", "wi", "w1", "dense_h_to_4h", "lin1")


#: leaf names of query and key projections (u-muP's backward scale for them)
QK_NAMES: tuple[str, ...] = ("q_proj", "k_proj", "query", "key", "q", "k", "wq", "wk")


def _branch_kind(name: str, attn_modules: Sequence[str]) -> str:
    """``"attn"`` for a tensor inside an attention module proxytune found, else ``"mlp"``."""
    return "attn" if any(name.startswith(m + ".") for m in attn_modules) else "mlp"


def _activation_inputs(shapes: Sequence[TensorShape], modules: dict[str, nn.Module],
                       target: nn.Module) -> tuple[set[str], str | None]:
    """The in-block tensors that compute an MLP's pre-activation (the gate where there is one), and the
    activation's kind when the model says it (an MLP's ``kind``, a config's ``hidden_act``)."""
    by_parent: dict[str, dict[str, list[str]]] = {}
    for s in shapes:
        if s.block is None or s.role not in ("hidden", "vector"):
            continue
        mod = s.name.rpartition(".")[0]
        parent, _, leaf = mod.rpartition(".")
        if leaf in GATE_NAMES or leaf in UP_NAMES or mod.endswith("intermediate.dense"):
            by_parent.setdefault(parent, {}).setdefault(leaf, []).append(s.name)
    found: set[str] = set()
    kind: str | None = None
    for parent, leaves in by_parent.items():
        gates = [n for leaf, ns in leaves.items() if leaf in GATE_NAMES for n in ns]
        found.update(gates or [n for ns in leaves.values() for n in ns])
        own = getattr(modules.get(parent), "kind", None)
        if isinstance(own, str):
            kind = own
        elif gates:
            kind = "swiglu"
    if kind is None and found:
        cfg = getattr(target, "config", None)
        act = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
        kind = act if isinstance(act, str) else None
    return found, kind


def _model_seq_len(target: nn.Module) -> int | None:
    for obj in (target, getattr(target, "config", None)):
        for attr in ("seq_len", "max_position_embeddings", "n_positions", "n_ctx"):
            v = getattr(obj, attr, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _unit_context(rec, shapes: Sequence[TensorShape], target: nn.Module, modules: dict[str, nn.Module],
                  attn_modules: Sequence[str],
                  act_kind: str | None, named: Multipliers, notes: list[str],
                  seq_len: int | None = None) -> dict[str, Any]:
    """What u-muP's per-tensor rules need from the whole model: the number of blocks, the attention output
    scale and the activation's unit scale (with a note for what could not be known)."""

    n_blocks = len({s.block for s in shapes if s.block is not None}) or 1
    attn_out = 1.0
    if attn_modules:
        seq = seq_len or _model_seq_len(target)
        if seq is None:
            notes.append("u-mup: the sequence length is unknown (no seq_len, max_position_embeddings or n_positions "
                         "on the model or its config): the attention output is not rescaled")
        else:
            attn_out = causal_attention_output_scale(seq)
            notes.append(f"u-mup: attention outputs x{attn_out:.3g} = sqrt(s / H_s), s = {seq}: unit RMS under "
                         "uniform causal attention (u-muP's logits start near uniform)")
    act = act_bwd = 1.0
    if act_kind is not None and (act_kind in ACTIVATIONS or act_kind in ("swiglu", "silu_glu")):
        act = activation_scale(act_kind, named.activation)
        act_bwd = activation_grad_scale(act_kind, named.activation)
        notes.append(f"u-mup: {act_kind} outputs x{act:.3g} (unit RMS at a unit Gaussian input x act_mult "
                     f"{named.activation:g}), applied on the MLP's output projection")
    elif any(s.branch_output for s in shapes):
        notes.append(f"u-mup: the MLP's activation ({act_kind or 'unknown'}) has no known unit scale: its output "
                     "is not rescaled")
    blocks = sorted({s.block for s in shapes if s.block is not None}, key=_block_order)
    tau_form = bool(blocks) and all(hasattr(modules.get(b), RESIDUAL_ATTR) for b in blocks)
    out: dict[str, Any] = {"n_blocks": n_blocks, "attn_out": attn_out, "act": act, "act_bwd": act_bwd,
                           "branch": {}, "residual": [], "attn_modules": list(attn_modules)}
    w_attn, w_mlp = branch_weights(n_blocks, named.residual, named.residual_attn_ratio)
    if tau_form:

        taus = residual_taus(n_blocks, named.residual, named.residual_attn_ratio)
        for i, b in enumerate(blocks):
            t_attn, t_mlp = taus[2 * i], taus[2 * i + 1]
            # the branch's multiplier is tau; named_forward already holds its alpha, so divide it out
            # tau / alpha, with alpha = w sqrt(n_blocks)
            out["branch"][b] = {"attn": t_attn / (w_attn * math.sqrt(n_blocks)),
                                "mlp": t_mlp / (w_mlp * math.sqrt(n_blocks))}
            out["residual"].append({"module": b, "scales": [1 / math.sqrt(1 + t_attn ** 2),
                                                            1 / math.sqrt(1 + t_mlp ** 2)]})
        notes.append(f"u-mup: {n_blocks} blocks with a {RESIDUAL_ATTR} attribute: the normalized residual "
                     f"(x + tau f(x)) / sqrt(1 + tau^2), tau from {taus[0]:.3g} (first branch) to {taus[-1]:.3g}")
    else:
        notes.append(f"u-mup: {n_blocks} blocks; residual branches x{w_attn:.3g} (attention) and x{w_mlp:.3g} "
                     "(MLP): u-muP's tau rule written as a plain residual sum, the same network for a pre-norm "
                     f"model (a block with a {RESIDUAL_ATTR} attribute gets the normalized form)")
    return out


def _block_order(b: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in b.split("."))


def _plan_unit_tensor(s: TensorShape, rec, spec, tparams: dict[str, nn.Parameter], named_forward: float,
                      named: Multipliers, branch: str | None, unit: dict[str, Any], decay_vectors: bool,
                      notes: list[str]) -> TensorPlan:
    """One tensor under u-muP: absolute init, forward multiplier and LR (:mod:`proxytune.rules.umup`)."""

    n = unit["n_blocks"]
    in_block = s.block is not None
    fwd = unit_forward(s.role, s.fan_in) * named_forward
    if s.branch_output:
        # named_forward already holds the branch's alpha; the tau rule's 1/sqrt(n_blocks) (or, in the
        # normalized form, tau / alpha) and the unit scale of what the branch computes (attention averaging,
        # the activation) complete it
        kind = "attn" if branch == "attn" else "mlp"
        depth_factor = unit["branch"][s.block][kind] if s.block in unit["branch"] else n ** -0.5
        fwd *= depth_factor * (unit["attn_out"] if kind == "attn" else unit["act"])
    matrix = len(s.shape) >= 2
    is_bias = s.name.rsplit(".", 1)[-1] == "bias"
    # a branch output's input is what the branch computed before its unit correction: RMS 1 / correction
    grad_scale = (unit["attn_out"] if branch == "attn" else unit["act"]) if s.branch_output and matrix else 1.0
    mod, _, _ = s.name.rpartition(".")
    owner, _, leaf = mod.rpartition(".")
    if matrix and branch == "attn" and leaf in QK_NAMES and owner in unit.get("head_dim", {}):
        # uniform attention passes a logit gradient ~ d_head^-1/2 to q and k (the values' gradient is unit)
        grad_scale = math.sqrt(unit["head_dim"][owner])
    if matrix:
        base_std, init, source = 1.0, named.init_for(s.role), "u-mup: unit init N(0, 1)"
    elif is_bias:
        base_std, init, source = 1.0, 0.0, "u-mup: zero bias"
    else:
        base_std, init, source = 0.0, 1.0, "u-mup: the model's own (unit gains)"
    lr = unit_lr(s.role, s.fan_in, s.fan_out, n, in_block) * named.lr_for(s.role)
    explicit = Scale(multiplier=fwd, init=init, lr=lr, wd=1.0, eps=1.0)
    folded = fold(explicit, spec.lr_power, wd_power=spec.wd_fold_power)
    readout_multiplier = 1.0
    if s.tied_readout is not None:
        # the shared tensor is the embedding (forward 1); its readout use needs u-muP's 1/fan_in
        readout_multiplier = named.output / named.embedding / s.fan_out
    return TensorPlan(
        name=s.name, role=s.role, shape=list(s.shape), base_shape=list(s.base_shape), layout=s.layout,
        fan_in=s.fan_in, fan_out=s.fan_out, m_in=s.m_in, m_out=s.m_out, width=s.width, depth=s.depth,
        block=s.block, branch_output=s.branch_output, base_std=base_std, init_source=source,
        explicit=explicit, folded=folded, aliases=s.aliases, readout_use=s.tied_readout,
        readout_multiplier=readout_multiplier, attn_factor=1.0, no_decay=(not matrix and not decay_vectors),
        notes=notes, grad_scale=grad_scale)


def _unit_backward(tensors: dict[str, TensorPlan], target: nn.Module, modules: dict[str, nn.Module],
                   notes: list[str], unit: dict[str, Any]) -> list[dict[str, Any]]:
    """u-muP's backward scales on modules: the logits' gradient and the readout's input gradient made unit;
    per residual branch, the gradient entering it at its output layer set to what a unit-scaled backward
    gives (``fan_out^-1/2`` through that layer, times the backward scale of what the branch computes: uniform
    causal attention's, or the activation derivative's), and the inverse factor put back where the branch
    leaves the stream (the input of the norm before it). Inside the branch gradients are then near unit
    scale, and the stream's gradient stays the true one."""
    out: list[dict[str, Any]] = []
    for tp in tensors.values():
        if tp.role != "readout" or len(tp.shape) < 2 or tp.readout_use is not None:
            continue
        mod = tp.name.rpartition(".")[0]
        a = tp.explicit.multiplier
        out.append({"module": mod, "kind": "logits", "vocab": tp.fan_out})
        out.append({"module": mod, "kind": "input", "factor": tp.fan_out ** -0.5 / a})
    if any(tp.readout_use is not None for tp in tensors.values()):
        notes.append("u-mup: a tied embedding/readout weight: the logits' and readout's backward scales are not "
                     "installed (its gradient is the sum of two uses)")
    # branch outputs, and the norm that feeds each branch (paired in order within the block)
    by_block: dict[str, list[TensorPlan]] = {}
    for tp in tensors.values():
        if tp.branch_output and len(tp.shape) >= 2 and tp.block is not None:
            by_block.setdefault(tp.block, []).append(tp)
    unpaired = []
    for block, outs in by_block.items():
        norms = [n for n, m in modules.items() if n.startswith(block + ".") and n.count(".") == block.count(".") + 1
                 and "norm" in type(m).__name__.lower()]
        for i, tp in enumerate(outs):
            kind = _branch_kind(tp.name, unit["attn_modules"])
            bwd = unit["attn_out"] if kind == "attn" else unit["act_bwd"]
            factor = tp.fan_out ** -0.5 * bwd / tp.explicit.multiplier
            mod = tp.name.rpartition(".")[0]
            if len(norms) == len(outs):
                out.append({"module": mod, "kind": "input", "factor": factor})
                out.append({"module": norms[i], "kind": "input", "factor": 1.0 / factor})
            else:
                unpaired.append(block)
    if unpaired:
        notes.append(f"u-mup: in {', '.join(sorted(set(unpaired))[:3])} the norms do not pair one to one with the "
                     "residual branches: gradients inside those branches keep the branch's forward factor")
    return out


def _adapter_ref(adapter: AttentionAdapter) -> dict[str, Any]:
    """What a saved plan records of ``adapter`` (beside its ``name``): its class, as a label for messages (a
    loaded plan never imports it), and its declared settings (``STATE_FIELDS``), checked, and nothing else."""
    cls = type(adapter)
    return {"adapter_class": f"{cls.__module__}:{cls.__qualname__}",
            "adapter_state": _declared_state(adapter, f"attention adapter {adapter.name!r}")}
