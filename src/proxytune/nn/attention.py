"""Attention logit scale: muP uses ``q.k / d_head`` where SP uses
``q.k / sqrt(d_head)`` (Tensor Programs V). Relative to the base this is a
factor ``(d_head / base_d_head)^-1/2`` on the logits, which is 1 when width
grows by adding heads at a fixed head dim.

An *adapter* finds attention modules and applies that factor. Four ship, tried in this order:

- :class:`ScaleAttribute`: the module keeps its scale in an attribute
  (default ``attn_scale``, ``None`` meaning ``1/sqrt(head_dim)``) that its
  forward passes to ``F.scaled_dot_product_attention(scale=...)``. Setting a
  constant is free, in both modes.
- :class:`MultiheadAttention`: ``torch.nn.MultiheadAttention``; its query
  projection is fused with key and value, so the factor is applied to the
  query rows of ``in_proj_weight``/``in_proj_bias`` by a weight multiplier.
- :class:`QueryProjection`: a separate query projection child (``q_proj``,
  ``query``, ``q``, ``wq``, ``to_q``, ``c_q``); the factor is folded into its
  weight and bias like any other multiplier.
- :class:`ScalingAttribute`: Hugging Face attention modules with a fused
  query projection (GPT-2): their float ``scaling`` attribute is multiplied
  (``inv_norm_factor`` for BLOOM's ``baddbmm``).

When none of them matches a module, the traced forward pass of the base says
where the attention's query comes from: a whole projection of any name (the
factor is folded into it, as :class:`QueryProjection` does) or the query rows
of a fused projection that is split after one matmul (:class:`QueryRows`).

Write your own by subclassing :class:`AttentionAdapter`: ``match`` returns an
:class:`AttentionSite` for a module it handles (or None), ``install`` changes
the module for a given factor. A saved plan records an adapter by its ``name``
and the settings it declares in ``STATE_FIELDS``, never as code to import: a
loaded plan finds the built-in adapters by name (:data:`BUILTIN_ADAPTERS`) and
takes any other from its caller (``Plan.load(path, attention=[MyAdapter()])``).
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from torch import nn

from ..errors import PlanError
from .multipliers import add_multiplier

_HEAD_ATTRS = ("num_heads", "n_head", "n_heads", "num_attention_heads", "nheads", "n_heads_q")
# the head dim itself: ours and most models, BERT/RoBERTa/ViT (`attention_head_size`), T5 (`key_value_proj_dim`,
# which may differ from d_model / n_heads)
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim")
_EMBED_ATTRS = ("embed_dim", "n_embd", "hidden_size", "d_model", "dim", "width")


def head_dim_of(module: nn.Module) -> int | None:
    """The module's head dim from common attribute names, or None."""
    for a in _HEAD_DIM_ATTRS:
        hd = getattr(module, a, None)
        if isinstance(hd, int) and not isinstance(hd, bool) and hd > 0:
            return hd
    heads = next((getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
    embed = next((getattr(module, a) for a in _EMBED_ATTRS if isinstance(getattr(module, a, None), int)), None)
    if heads and embed:
        return embed // heads
    return None


def looks_like_attention(module: nn.Module) -> bool:
    """Heuristic used only to warn or refuse: class name or head-count attribute."""
    cls = type(module).__name__.lower()
    return "attention" in cls or "attn" in cls or any(hasattr(module, a) for a in _HEAD_ATTRS)


@dataclass
class AttentionSite:
    """One attention module and how its logit factor is applied."""

    module: str
    adapter: str
    head_dim: int
    base_head_dim: int
    query_params: list[str] = field(default_factory=list)
    value: float | None = None  # ScaleAttribute: the absolute scale to set
    rows: list[int] | None = None  # QueryRows: the query's rows [start, stop) of a fused projection's output
    row_params: list[str] = field(default_factory=list)  # QueryRows: that projection's weight (and bias), relative
    rows_dim: int = 0  # QueryRows: the weight's output dimension (1 for a raw (in, out) matrix used as x @ W)


class AttributeName(str):
    """A ``STATE_FIELDS`` type: the name of an attribute the adapter sets on the attention module (one that
    already holds a number or None). Only a plain public identifier is accepted (no ``_``-prefixed or dunder
    name, no keyword), so a saved plan cannot point an adapter at a module's internals."""


def is_attribute_name(value: Any) -> bool:
    """Whether ``value`` is acceptable as an :class:`AttributeName`."""
    return (isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)
            and not value.startswith("_"))


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               type(None): "null", AttributeName: "a public attribute name (an identifier not starting with '_')"}


def _state_value_ok(value: Any, kind: type) -> bool:
    if kind is AttributeName:
        return is_attribute_name(value)
    if kind is float:  # JSON writes 2.0 as 2.0 but a hand-written plan may say 2
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_adapter_state(adapter_cls: type, state: Any, where: str = "adapter_state") -> dict[str, Any]:
    """``state`` checked against ``adapter_cls.STATE_FIELDS``: a mapping of declared fields only, each of its
    declared type (a type or a tuple of types). Returns it as a dict; raises :class:`PlanError` naming the field
    (``where`` is prefixed to it) otherwise."""
    if not isinstance(state, Mapping):
        raise PlanError(f"{where}: expected an object of the adapter's settings, got {type(state).__name__}")
    declared: Mapping[str, Any] = getattr(adapter_cls, "STATE_FIELDS", {})
    unknown = sorted(map(str, set(state) - set(declared)))
    if unknown:
        valid = ", ".join(declared) or "none"
        raise PlanError(f"{where}.{unknown[0]}: {adapter_cls.__name__} declares no such field (its STATE_FIELDS: "
                        f"{valid})")
    for key, value in state.items():
        kinds = declared[key] if isinstance(declared[key], tuple) else (declared[key],)
        if not any(_state_value_ok(value, k) for k in kinds):
            want = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)
            raise PlanError(f"{where}.{key}: expected {want}, got {value!r:.80}")
    return dict(state)


class AttentionAdapter:
    """Base class: find attention modules and apply the logit factor.

    ``STATE_FIELDS`` declares the settings a saved plan records (``{"attr": AttributeName}`` for an attribute
    the adapter sets; ``str``, ``int``, ``float``, ``bool`` or ``type(None)``, or a tuple of them, otherwise):
    :func:`proxytune.plan.parameterize` saves those attributes of the adapter and nothing else, and a loaded
    plan refuses settings the adapter's class does not declare. A built-in adapter is rebuilt from them as
    ``cls(**state)``."""

    name = "adapter"
    STATE_FIELDS: ClassVar[Mapping[str, Any]] = {}

    def match(self, name: str, module: nn.Module, base_module: nn.Module) -> AttentionSite | None:
        raise NotImplementedError

    def install(self, module: nn.Module, site: AttentionSite, factor: float) -> None:
        """Apply ``factor`` to ``module`` (no-op for folded query projections)."""


class ScaleAttribute(AttentionAdapter):
    """Modules with a scale attribute used as the SDPA ``scale`` argument."""

    name = "scale-attribute"
    STATE_FIELDS: ClassVar[Mapping[str, Any]] = {"attr": AttributeName}

    def __init__(self, attr: str = "attn_scale") -> None:
        if not is_attribute_name(attr):
            raise PlanError(f"{type(self).__name__}: attr must be a public attribute name (an identifier not "
                            f"starting with '_'), got {attr!r}")
        self.attr = attr

    def match(self, name, module, base_module):
        if not hasattr(module, self.attr):
            return None
        hd, bhd = head_dim_of(module), head_dim_of(base_module)
        if hd is None or bhd is None:
            return None
        current = getattr(module, self.attr)
        return AttentionSite(name, self.name, hd, bhd,
                             value=float(current) if current is not None else 1.0 / math.sqrt(hd))

    def install(self, module, site, factor):
        setattr(module, self.attr, site.value * factor)


class MultiheadAttention(AttentionAdapter):
    """``torch.nn.MultiheadAttention``: scale the query rows of the fused projection."""

    name = "torch-mha"

    def match(self, name, module, base_module):
        if not isinstance(module, nn.MultiheadAttention):
            return None
        return AttentionSite(name, self.name, module.head_dim, base_module.head_dim)

    def install(self, module, site, factor):
        e = module.embed_dim
        if module._qkv_same_embed_dim:
            add_multiplier(module, "in_proj_weight", factor, rows=(0, e))
        else:
            add_multiplier(module, "q_proj_weight", factor)
        if module.in_proj_bias is not None:
            add_multiplier(module, "in_proj_bias", factor, rows=(0, e))


QUERY_NAMES: tuple[str, ...] = ("q_proj", "query", "q", "wq", "to_q", "c_q")


def query_params_of(name: str, module: nn.Module, names: tuple[str, ...] = QUERY_NAMES) -> list[str]:
    """Names of the weight and bias of ``module``'s separate query projection child (``[]`` when none):
    scaling them scales the attention logits."""
    child = next((c for c in names if isinstance(getattr(module, c, None), nn.Module)), None)
    if child is None:
        return []
    prefix = f"{name}.{child}" if name else child
    return [f"{prefix}.{p}" for p, t in getattr(module, child).named_parameters(recurse=False) if t is not None]


class QueryProjection(AttentionAdapter):
    """A separate query projection child: fold the factor into its weight and bias."""

    name = "query-projection"

    def __init__(self, names: tuple[str, ...] = QUERY_NAMES) -> None:
        self.names = names

    def match(self, name, module, base_module):
        params = query_params_of(name, module, self.names)
        if not params:
            return None
        hd, bhd = head_dim_of(module), head_dim_of(base_module)
        if hd is None or bhd is None:
            return None
        return AttentionSite(name, self.name, hd, bhd, query_params=params)


class ScalingAttribute(ScaleAttribute):
    """Hugging Face attention modules (GPT-2 and most ``transformers`` models): a float ``scaling``
    attribute, already ``head_dim^-1/2``, that the forward passes to every attention implementation.
    Used when the query projection is fused (GPT-2's ``c_attn``); a separate query projection is
    preferred, since folding the factor into it leaves the module untouched."""

    name = "hf-scaling"

    def __init__(self, attr: str = "scaling") -> None:
        super().__init__(attr)

    def match(self, name, module, base_module):
        if not isinstance(getattr(module, self.attr, None), float):
            return None
        return super().match(name, module, base_module)


class QueryRows(AttentionAdapter):
    """The query rows of a fused q/k/v projection (nanoGPT's ``c_attn``, split into q, k and v after one matmul),
    found by the traced forward pass rather than by name: the factor multiplies those rows of the projection's
    weight and bias (a weight multiplier in both modes, as for ``nn.MultiheadAttention``). Its sites come from
    :func:`proxytune.plan.parameterize`'s trace; ``match`` finds none by itself."""

    name = "query-rows"

    def match(self, name, module, base_module):
        return None

    def install(self, module, site, factor):
        for rel in site.row_params:
            owner_name, _, attr = rel.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            dim = site.rows_dim if getattr(owner, attr).ndim > 1 else 0
            add_multiplier(owner, attr, factor, rows=(site.rows[0], site.rows[1]), dim=dim)


DEFAULT_ADAPTERS: tuple[AttentionAdapter, ...] = (ScaleAttribute(), MultiheadAttention(), QueryProjection(),
                                                  ScalingAttribute(), ScalingAttribute("inv_norm_factor"))

#: the built-in adapter classes by ``name``: all a loaded plan rebuilds by itself (anything else its caller passes)
BUILTIN_ADAPTERS: dict[str, type[AttentionAdapter]] = {
    cls.name: cls for cls in (ScaleAttribute, MultiheadAttention, QueryProjection, ScalingAttribute, QueryRows)}
