"""Compare a target model with its base (proxy) shape, tensor by tensor.

The result is, per parameter name: its layout (which dimension is fan-in and
which fan-out, from the module that owns it, never from dimension order
alone), its role (embedding, hidden, readout, vector, scalar), its width
multipliers, its block stack and depth multiplier, and whether it is a
residual-branch output. Nothing is stored on the tensors.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import PlanError
from .forward import DEFAULT_FORWARD, ForwardSpec
from .trace import ForwardTrace, factor_value, trace_forward
from .rules.recipes import ROLES

#: Default pattern for repeated blocks: a dotted name segment ``layers``,
#: ``blocks``, ``h`` or ``layer`` followed by the block index.
DEFAULT_BLOCK_PATTERN = r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)\."

#: Residual-branch outputs of common model families (glob on the full name).
DEFAULT_BRANCH_OUTPUTS: tuple[str, ...] = (
    "*attn.c_proj.*", "*attn.proj.*", "*attn.out_proj.*", "*attn.o_proj.*", "*attn.wo.*",
    "*attention.wo.*", "*attention.o_proj.*", "*attention.out_proj.*",
    "*attention.output.dense.*", "*attention.dense.*",
    "*mlp.c_proj.*", "*mlp.proj.*", "*mlp.down_proj.*", "*mlp.down.*", "*mlp.fc2.*",
    "*mlp.w2.*", "*mlp.dense_4h_to_h.*", "*feed_forward.w2.*", "*ffn.down.*", "*ffn.out.*",
    "*ffn.w2.*", "*.output.dense.*", "*.fc2.*",
    # T5: attention output `o`, feed-forward output `wo`
    "*SelfAttention.o.*", "*EncDecAttention.o.*", "*DenseReluDense.wo.*",
    # mixture-of-experts output projections (proxytune's moe, Mixtral, Qwen-MoE naming)
    "*mlp.experts.*.proj.*", "*experts.*.w2.*", "*experts.*.down_proj.*", "*experts.down_proj", "*experts.w2",
)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORMS = _NORMS + (nn.RMSNorm,)


def canonical_name(name: str) -> str:
    """Parameter name without wrapper prefixes: DDP's ``module.``, torch.compile's
    ``_orig_mod.``, and torch parametrizations' ``parametrizations.<attr>.original``."""
    name = re.sub(r"(^|\.)parametrizations\.([^.]+)\.original$", r"\1\2", name)
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


@dataclass
class _Entry:
    name: str
    param: torch.Tensor
    module: nn.Module
    module_name: str
    attr: str


def param_entries(model: nn.Module) -> list[_Entry]:
    """Every (name, parameter, owning module) including each alias of a tied weight."""
    out: list[_Entry] = []
    seen: set[tuple[int, str]] = set()
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is None:
                continue
            full = f"{mod_name}.{attr}" if mod_name else attr
            name = canonical_name(full)
            if (id(p), name) in seen:
                continue
            seen.add((id(p), name))
            owner, owner_name, owner_attr = mod, mod_name, attr
            m = re.match(r"^(.*?)\.?parametrizations\.([^.]+)$", mod_name)
            if m:  # the parametrized module is two levels up
                owner_name, owner_attr = m.group(1), m.group(2)
                owner = model.get_submodule(owner_name) if owner_name else model
            out.append(_Entry(name, p, owner, canonical_name(owner_name) if owner_name else "", owner_attr))
    return out


@dataclass
class Layout:
    """Which tensor dimension is fan-in / fan-out (None: not a matrix side)."""

    kind: str  # embedding | out_in | in_out | conv | conv_t | vector | scalar | nd
    in_dim: int | None
    out_dim: int | None
    note: str = ""


def module_layout(module: nn.Module, attr: str, ndim: int, override: str | None = None) -> Layout:
    """Fan-in / fan-out dimensions of ``module.<attr>`` from the module type."""
    if override is not None:
        if override not in ("out_in", "in_out"):
            raise PlanError(f"layout override {override!r} is not one of 'out_in', 'in_out'")
        return Layout(override, 1 if override == "out_in" else 0, 0 if override == "out_in" else 1,
                      "layout from override")
    if ndim == 0:
        return Layout("scalar", None, None)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and attr == "weight":
        return Layout("embedding", 0, 1)
    if ndim == 1:
        return Layout("vector", None, 0)
    if isinstance(module, nn.modules.conv._ConvNd) and attr == "weight":
        if module.transposed:
            return Layout("conv_t", 0, 1)
        return Layout("conv", 1, 0)
    if type(module).__name__ == "Conv1D" and attr == "weight" and ndim == 2:
        return Layout("in_out", 0, 1, "HF Conv1D: weight stored (in, out)")
    if isinstance(module, nn.MultiheadAttention):
        if attr in ("bias_k", "bias_v"):
            return Layout("vector", None, ndim - 1)
        return Layout("out_in", 1, 0)
    if isinstance(module, nn.Linear) and attr == "weight":
        return Layout("out_in", 1, 0)
    if ndim == 2:
        return Layout("out_in", 1, 0, f"layout of {type(module).__name__}.{attr} assumed (out, in)")
    return Layout("nd", ndim - 1, ndim - 2,
                  f"{ndim}-D tensor: last two dims taken as (out, in), leading dims as a batch")


_KNOWN_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)


def _raw_parameter(module: nn.Module, ndim: int) -> bool:
    """A 2-D or larger parameter held directly by a module that is not a known layer: a position table, a
    class token, or a weight the module's own forward uses; its layout is a guess until its shape is seen."""
    return ndim >= 2 and not isinstance(module, _KNOWN_LAYERS) and type(module).__name__ != "Conv1D"


TABLE_NOTE = ("raw parameter whose last dim is the width: treated as a table of embedding vectors (position "
              "table, class token); if it is a weight used as F.linear(x, W), pass roles={{{name!r}: 'readout'}}")


@dataclass
class TensorShape:
    """What the comparison found for one parameter (keyed by canonical name)."""

    name: str
    aliases: list[str]
    shape: tuple[int, ...]
    base_name: str
    base_shape: tuple[int, ...]
    module_type: str
    layout: str
    fan_in: int
    fan_out: int
    base_fan_in: int
    base_fan_out: int
    role: str
    width: float
    m_in: float
    m_out: float
    block: str | None = None
    depth: float = 1.0
    branch_output: bool = False
    tied_readout: str | None = None
    notes: list[str] = field(default_factory=list)
    #: where the role came from: ``override``, ``forward`` (the traced forward pass showed how the tensor is
    #: used), ``module`` (the owning module's type, no trace) or ``guess`` (a layout assumed from the shape)
    role_source: str = "module"
    #: a tied embedding/readout whose readout use is a functional product (``F.linear(x, table.weight)``, ``@``,
    #: an einsum): the module whose forward computes it, and the embedding module whose lookup reads the table
    functional_readout: str | None = None
    lookup_module: str | None = None
    #: where the branch-output mark came from: ``override``, ``forward``, ``name`` (a default pattern) or
    #: ``structure`` (the last stream-sized matrix of its sub-module)
    branch_source: str = ""


def _fans(shape: tuple[int, ...], lay: Layout) -> tuple[int, int]:
    if lay.kind == "scalar":
        return 1, 1
    if lay.kind == "table":  # rows of width-sized vectors, looked up or added: an embedding
        return math.prod(shape[:-1]), shape[-1]
    if lay.kind == "vector":
        return 1, shape[lay.out_dim]
    rest = math.prod(s for i, s in enumerate(shape) if i not in (lay.in_dim, lay.out_dim))
    if lay.kind == "nd":
        rest = 1  # leading dims are a batch of matrices, not receptive field
    return shape[lay.in_dim] * rest, shape[lay.out_dim]


def _match_glob(name: str, patterns: dict[str, str] | None) -> str | None:
    if not patterns:
        return None
    for pat, value in patterns.items():
        if fnmatch.fnmatchcase(name, pat):
            return value
    return None


def canonical_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule keyed by its canonical name (wrapper prefixes removed)."""
    return {canonical_name(n): m for n, m in model.named_modules()}


def _stacks(model: nn.Module) -> dict[tuple[str, str], list[str]]:
    """Every run of sibling modules of one class named ``<prefix><index>`` (a ``ModuleList``/``Sequential``'s
    ``0, 1, ...``, a ``ModuleDict``'s ``blk0, blk1, ...``, numbered attributes ``layers_0, layers_1, ...``):
    ``(parent, prefix) -> child names``."""
    out: dict[tuple[str, str], list[str]] = {}
    for name, mod in model.named_modules():
        groups: dict[str, list[str]] = defaultdict(list)
        for child_name, _child in mod.named_children():
            m = re.fullmatch(r"(.*?)(\d+)", child_name)
            if m:
                groups[m.group(1)].append(child_name)
        for prefix, names in groups.items():
            if len({type(getattr(mod, n)) for n in names}) == 1:
                out[(canonical_name(name) if name else "", prefix)] = names
    return out


def structural_block_pattern(target: nn.Module, base: nn.Module) -> str | None:
    """A block pattern read from the module tree, or None when the tree shows no stack of blocks.

    A stack is a run of sibling modules of one class named by an index: the children of a ``ModuleList`` or
    ``Sequential`` (``layers.0``), of a ``ModuleDict`` with numbered keys (``trunk.blk0``), or numbered
    attributes (``layers_0``). It counts when its length differs between target and base (what a depth change
    looks like) or when its members are composite modules (blocks, not a list of plain layers). Only the
    outermost stacks count: T5's ``block.N.layer.M`` is a stack of blocks, each holding a list of sub-layers.
    """
    t_stacks, b_stacks = _stacks(target), _stacks(base)
    found: list[tuple[str, str]] = []
    for key, names in t_stacks.items():
        bnames = b_stacks.get(key)
        if not bnames:
            continue
        parent, prefix = key
        mod = target.get_submodule(parent) if parent else target
        composite = any(True for _ in getattr(mod, names[0]).children())
        if len(names) != len(bnames) or (composite and len(names) >= 2):
            found.append(key)
    paths = {key: (f"{key[0]}.{key[1]}" if key[0] else key[1]) for key in found}
    outer = [k for k in found if not any(k != o and o[0] != k[0] and (o[0] == "" or k[0].startswith(paths[o]))
                                         for o in found)]
    if not outer:
        return None
    alts = "|".join(sorted(re.escape(f"{p}." if p else "") + re.escape(pre) for p, pre in outer))
    return rf"^(?:{alts})(\d+)\."


def _blocks(names: list[str], pattern: re.Pattern) -> dict[str, tuple[str, int, int, int]]:
    """name -> (stack key, index, span start, span end) for names inside a block."""
    out = {}
    for n in names:
        m = pattern.search(n)
        if m:
            out[n] = (n[: m.start(1)], int(m.group(1)), m.start(1), m.end(1))
    return out


def _list(names, k: int = 6) -> str:
    names = sorted(names)
    more = f" (and {len(names) - k} more)" if len(names) > k else ""
    return ", ".join(repr(n) for n in names[:k]) + more


# ------------------------------------------------------------------------------------------------ analysis
@dataclass
class ModelAnalysis:
    """What :func:`analyze_model` found: one :class:`TensorShape` per distinct parameter, the traced forward
    pass (None when it was not traced), the block pattern used, constant factors of the forward with their
    values at base and target (:class:`FactorRatio`), residual branches found for one sub-module of a block and
    not another, and notes."""

    tensors: list[TensorShape]
    trace: ForwardTrace | None
    block_pattern: str
    factors: list["FactorRatio"] = field(default_factory=list)
    #: the target's own trace (on ``meta`` when it is there), taken when the base's shows attention or factors
    target_trace: ForwardTrace | None = None
    branch_gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FactorRatio:
    """A constant factor of the model's own forward (see :class:`proxytune.trace.Factor`) at the base and the
    target; ``ratio`` is target / base (None when a value could not be read)."""

    where: str
    tensor: str
    base: float | None
    target: float | None
    module: str
    source: str

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.target is None or self.base == 0:
            return None
        return self.target / self.base


@dataclass
class _Use:
    """One use of a parameter: the alias entry it is reached through (its own module), or a functional use the
    trace saw in ``module`` (``entry`` is then the tensor's first entry)."""

    entry: _Entry
    layout: Layout
    source: str  # override | forward | module | guess
    functional: str | None = None  # the module of a functional use
    role: str = ""
    forced: bool = False


@dataclass
class _Row:
    """One distinct parameter of the target: its uses, its base counterpart and shapes."""

    entry: _Entry
    base: _Entry
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    uses: list[_Use]


def analyze(target: nn.Module, base: nn.Module, **kwargs) -> list[TensorShape]:
    """Compare ``target`` with ``base``: one :class:`TensorShape` per distinct parameter, in the target's
    parameter order (see :func:`analyze_model`, which also returns the trace and the forward's factors)."""
    return analyze_model(target, base, **kwargs).tensors


def analyze_model(
    target: nn.Module,
    base: nn.Module,
    *,
    roles: dict[str, str] | None = None,
    layouts: dict[str, str] | None = None,
    block_pattern: str | None = None,
    branch_outputs: tuple[str, ...] | list[str] | None = None,
    tied: str = "embedding",
    forward: ForwardSpec | None = None,
    trace: bool = True,
    readout: str = "auto",
    seq_len: int | None = None,
) -> ModelAnalysis:
    """Compare ``target`` with ``base``, tensor by tensor.

    The phases: map the target's blocks onto the base's (depth); trace one forward pass of the base (what each
    tensor is used for, the readout, residual branches, constant factors); give each use of a tensor a layout
    (an override, else the owning module's type, else the trace, else a guess from the shape); find which sizes
    are widths; give each tensor its role (a tie of an embedding and a readout use follows ``tied``); mark
    residual-branch outputs per sub-module of each block.

    ``readout``: ``auto`` (a model with no readout tensor is refused), or ``none`` (the model's output is not
    produced by a weight matrix, e.g. an encoder returning features). Raises :class:`PlanError` with the tensor
    name(s) and shapes when the pair cannot be matched.

    Many parameters because: each is an independent, documented option of the public call (``parameterize``
    and a model description pass them by name), and each goes straight to the one phase that reads it (the
    layouts to the layout phase, the roles and the tie policy to the role phase, the forward and sequence
    length to the trace), so no phase takes them all.
    """

    if roles:
        for pat, role in roles.items():
            if role not in ROLES:
                raise PlanError(f"roles[{pat!r}] = {role!r} is not a role; valid: {', '.join(ROLES)}")
    if tied not in ("embedding", "readout", "error"):
        raise PlanError(f"unknown tied-weight policy {tied!r}; valid: embedding, readout, error")
    if readout not in ("auto", "none"):
        raise PlanError(f"readout={readout!r}: expected 'auto' or 'none'")
    block_pattern = block_pattern or structural_block_pattern(target, base) or DEFAULT_BLOCK_PATTERN
    try:
        pattern = re.compile(block_pattern)
    except re.error as exc:
        raise PlanError(f"block_pattern {block_pattern!r} is not a regular expression: {exc}") from None
    if pattern.groups < 1:
        raise PlanError(f"block_pattern {block_pattern!r} needs a group capturing the block index, e.g. "
                        r"'(?:^|\.)layers\.(\d+)\.'")
    forward = forward or DEFAULT_FORWARD

    t_entries, b_entries = param_entries(target), param_entries(base)
    depth = _DepthMap([e.name for e in t_entries], [e.name for e in b_entries], pattern)
    b_by_name = {e.name: e for e in b_entries}
    _check_names(depth, [e.name for e in t_entries], b_by_name, block_pattern)

    ftrace = _trace(base, forward, seq_len) if trace else None
    rows = _rows(t_entries, b_by_name, depth, layouts, ftrace)
    finite_sizes = _check_finite_dims(rows)
    widths = _WidthSizes(rows, finite_sizes, depth)
    tensors = [_tensor_shape(row, widths, roles, tied, depth) for row in rows]
    notes: list[str] = []
    _check_readout(tensors, ftrace, readout, roles, notes)
    gaps = _mark_branches(tensors, branch_outputs, ftrace, depth)
    t_trace = None
    if ftrace is not None and ftrace.ok and (ftrace.factors or ftrace.attention):
        t_trace = ftrace if target is base else _trace(target, forward, seq_len)
    factors = _factors(ftrace, t_trace, tensors) if t_trace is not None else []
    if ftrace is not None and not ftrace.ok:
        notes.append(f"the forward pass could not be traced ({ftrace.error}); roles come from the module types "
                     "and shapes alone (marked ? in explain): check them, or describe the model's input "
                     "(model: {input: tokens | image | features}) so proxytune can call it")
    return ModelAnalysis(tensors=tensors, trace=ftrace, block_pattern=block_pattern, factors=factors,
                         target_trace=t_trace, branch_gaps=gaps, notes=notes)


# ------------------------------------------------------------------------------------------ phase: depth
class _DepthMap:
    """Target block index -> the base block it maps to (``i mod base_depth``, per stack)."""

    def __init__(self, t_names: list[str], b_names: list[str], pattern: re.Pattern) -> None:
        self.t_blocks = _blocks(list(dict.fromkeys(t_names)), pattern)
        self.b_blocks = _blocks(list(dict.fromkeys(b_names)), pattern)
        self.n_t: dict[str, int] = defaultdict(int)
        self.n_b: dict[str, int] = defaultdict(int)
        for key, idx, _, _ in self.t_blocks.values():
            self.n_t[key] = max(self.n_t[key], idx + 1)
        for key, idx, _, _ in self.b_blocks.values():
            self.n_b[key] = max(self.n_b[key], idx + 1)

    def base_name(self, name: str) -> str:
        if name in self.t_blocks:
            key, idx, s, e = self.t_blocks[name]
            if self.n_b.get(key):
                return name[:s] + str(idx % self.n_b[key]) + name[e:]
        return name

    def block(self, name: str) -> tuple[str | None, float]:
        """The block a target tensor is in (``stack<index>``) and its depth multiplier."""
        if name not in self.t_blocks:
            return None, 1.0
        key, idx, *_ = self.t_blocks[name]
        return f"{key}{idx}", self.n_t[key] / self.n_b[key]


def _check_names(depth: _DepthMap, t_names: list[str], b_by_name: dict[str, _Entry], block_pattern: str) -> None:
    mapped = {depth.base_name(n) for n in t_names}
    missing = sorted(mapped - set(b_by_name))
    extra = sorted(set(b_by_name) - mapped)
    if not missing and not extra:
        return
    undigit = lambda n: re.sub(r"\d+", "#", n)  # noqa: E731
    if {undigit(n) for n in missing} == {undigit(n) for n in extra} or \
            (not missing or not extra) and all(re.search(r"\d", n) for n in missing + extra):
        raise PlanError(
            "target and base differ in depth (their parameter names differ only in block numbers: "
            f"{_list(missing + extra, 3)}), but no block pattern finds the blocks (tried {block_pattern!r}); pass "
            "block_pattern= a regex whose group 1 is the block index, e.g. r'^trunk\\.blk(\\d+)\\.' "
            "(model: {block_pattern: ...} in a sweep file, --block-pattern on the command line)")
    msg = "target and base have different parameter names."
    if missing:
        msg += f" In the target but not the base: {_list(missing)}."
    if extra:
        msg += f" In the base but not the target: {_list(extra)}."
    msg += " Build the base with the same model code, changing only width and depth."
    raise PlanError(msg)


# -------------------------------------------------------------------------------------------- phase: trace
def _trace(model: nn.Module, forward: ForwardSpec, seq_len: int | None) -> ForwardTrace:
    param_names: dict[int, str] = {}
    for e in param_entries(model):
        param_names.setdefault(id(e.param), e.name)
    module_names = {id(m): canonical_name(n) for n, m in model.named_modules()}
    return trace_forward(model, forward, param_names=param_names, module_names=module_names, seq_len=seq_len)


# ------------------------------------------------------------------------------------------ phase: layouts
def _trace_layout(ftrace: ForwardTrace | None, name: str, ndim: int) -> Layout | None:
    lay = ftrace.layout(name) if ftrace is not None and ftrace.ok else None
    if lay is None:
        return None
    kind, i, o = lay
    if kind == "lookup":
        return Layout("embedding", i, o, "layout from the forward pass: a table looked up by index")
    if ndim == 2:
        return Layout("out_in" if (i, o) == (1, 0) else "in_out", i, o, "")
    return Layout("nd", i, o, f"{ndim}-D tensor multiplied on dims in={i}, out={o} (forward pass); the others "
                               "are a batch of matrices")


def _rows(t_entries: list[_Entry], b_by_name: dict[str, _Entry], depth: _DepthMap, layouts: dict[str, str] | None,
          ftrace: ForwardTrace | None) -> list[_Row]:
    """Group the entries of each parameter and give every use a layout."""
    by_id: dict[int, list[_Entry]] = {}
    for e in t_entries:
        by_id.setdefault(id(e.param), []).append(e)
    rows = []
    for entries in by_id.values():
        first = entries[0]
        be = b_by_name[depth.base_name(first.name)]
        shp, bshp = tuple(first.param.shape), tuple(be.param.shape)
        if len(shp) != len(bshp):
            raise PlanError(f"tensor {first.name!r} has shape {shp} in the target but {bshp} in the base")
        traced = _trace_layout(ftrace, be.name, first.param.ndim)
        uses = []
        for e in entries:
            ov = _match_glob(e.name, layouts)
            if ov is not None:
                uses.append(_Use(e, module_layout(e.module, e.attr, e.param.ndim, ov), "override"))
            elif traced is not None and (_raw_parameter(e.module, e.param.ndim) or (
                    (traced.kind == "embedding") != (module_layout(e.module, e.attr, e.param.ndim).kind == "embedding"))):
                # a raw parameter, or a layer used otherwise than its type says (a table only multiplied)
                uses.append(_Use(e, traced, "forward"))
            else:
                lay = module_layout(e.module, e.attr, e.param.ndim)
                known = not _raw_parameter(e.module, e.param.ndim) and "assumed" not in lay.note
                source = ("forward" if ftrace is not None and ftrace.ok and be.name in ftrace.uses else "module") \
                    if known or lay.kind in ("scalar", "vector") else "guess"
                uses.append(_Use(e, lay, source))
        if ftrace is not None and ftrace.ok and not any(u.source == "override" for u in uses):
            if all(_raw_parameter(e.module, e.param.ndim) for e in entries) and traced is None:
                # a raw parameter with uses of different kinds (looked up and multiplied): each use is one
                uses = _raw_uses(ftrace, be.name, first) or uses
            else:
                own = {depth.base_name(e.name).rpartition(".")[0] for e in entries}
                uses += _functional_uses(ftrace, be.name, first, own)
        rows.append(_Row(first, be, shp, bshp, uses))
    return rows


def _functional_uses(ftrace: ForwardTrace, base_name: str, first: _Entry, own: set[str]) -> list[_Use]:
    """Products the trace saw outside the tensor's own modules (``own``, base names): a table reused as
    ``F.linear(x, table.weight)``, ``x @ table.weight.T`` or in an einsum."""
    out: list[_Use] = []
    kinds = {(u.kind, u.in_dims, u.out_dims) for u in ftrace.uses.get(base_name, []) if u.kind != "other"}
    for u in ftrace.uses.get(base_name, []):
        if u.kind != "matmul" or len(u.in_dims) != 1 or len(u.out_dims) != 1 or len(kinds) < 2:
            continue
        if u.module in own:
            continue
        i, o = u.in_dims[0], u.out_dims[0]
        lay = Layout("out_in" if (i, o) == (1, 0) else "in_out", i, o, "")
        if not any(x.functional == u.module for x in out):
            out.append(_Use(first, lay, "forward", functional=u.module))
    return out


def _raw_uses(ftrace: ForwardTrace, base_name: str, first: _Entry) -> list[_Use]:
    """The distinct uses the trace saw of a raw parameter (no layer of its own): a lookup, and products."""
    out: list[_Use] = []
    seen = set()
    for u in ftrace.uses.get(base_name, []):
        if u.kind == "other" or len(u.in_dims) != 1 or len(u.out_dims) != 1 or (u.kind, u.in_dims, u.out_dims) in seen:
            continue
        seen.add((u.kind, u.in_dims, u.out_dims))
        i, o = u.in_dims[0], u.out_dims[0]
        if u.kind == "lookup":
            out.append(_Use(first, Layout("embedding", i, o, "layout from the forward pass: a table looked up by "
                                                             "index"), "forward"))
        else:
            lay = Layout("out_in" if (i, o) == (1, 0) else "in_out", i, o, "")
            out.append(_Use(first, lay, "forward", functional=u.module))
    return out if len(out) >= 2 else []


def _check_finite_dims(rows: list[_Row]) -> set[int]:
    """Refuse a changed vocabulary, kernel or class count; return the vocabulary sizes (embedding rows)."""
    finite_sizes: set[int] = set()
    for row in rows:
        shp, bshp = row.shape, row.base_shape
        diff = {i for i in range(len(shp)) if shp[i] != bshp[i]}
        for u in row.uses:
            lay = u.layout
            finite: set[int] = set()
            if lay.kind == "embedding":
                finite = {lay.in_dim}  # type: ignore[arg-type]
                finite_sizes.add(bshp[lay.in_dim])  # type: ignore[index]
            elif lay.kind in ("conv", "conv_t"):
                finite = set(range(2, len(shp)))
            elif lay.kind == "nd":
                finite = set(range(len(shp))) - {lay.in_dim, lay.out_dim}
            bad = sorted(diff & finite)
            if bad:
                raise PlanError(
                    f"tensor {row.entry.name!r}: dimension {bad[0]} is a finite dimension (vocabulary, kernel or "
                    f"batch of matrices) but differs: base {bshp}, target {shp}. Only width and depth may "
                    "differ between base and target.")
    base_widths = {r.base_shape[u.layout.out_dim] for r in rows for u in r.uses if u.layout.kind == "embedding"}
    base_widths |= {r.base_shape[u.layout.in_dim] for r in rows for u in r.uses
                    if u.layout.kind in ("out_in", "in_out") and u.source != "guess"}
    for r in rows:
        shp, bshp = r.shape, r.base_shape
        for u in r.uses:
            lay = u.layout
            # an output that grows at a different rate than the input and has a vocabulary's size is a readout
            # whose class count changed
            if lay.kind in ("out_in", "in_out") and shp[lay.out_dim] != bshp[lay.out_dim] \
                    and bshp[lay.out_dim] in finite_sizes and bshp[lay.out_dim] not in base_widths \
                    and shp[lay.out_dim] / bshp[lay.out_dim] != shp[lay.in_dim] / bshp[lay.in_dim]:
                raise PlanError(
                    f"tensor {r.entry.name!r}: its output size {bshp[lay.out_dim]} equals the base vocabulary size "
                    f"and differs: base {bshp}, target {shp}. Vocabulary and class counts must be the same "
                    "in base and target.")
    return finite_sizes


# -------------------------------------------------------------------------------------------- phase: widths
class _WidthSizes:
    """Which dimension sizes are widths: those that differ from the base, or, when nothing differs (a
    depth-only pair, the base itself), those the module structure shows to be widths."""

    def __init__(self, rows: list[_Row], finite_sizes: set[int], depth: _DepthMap) -> None:
        self.depth = depth
        self.finite_sizes = finite_sizes
        self.any_width = any(r.shape != r.base_shape for r in rows)
        self.inferred: set[int] = set()
        self.inferred_in_block: set[int] = set()
        if self.any_width:
            return
        # a size that is the output of one matrix and the input of another is a width
        ins, outs, emb_widths = set(), set(), set()
        for r in rows:
            for u in r.uses:
                lay, shp = u.layout, r.shape
                if u.source == "guess":
                    continue  # its layout is a guess: it must not decide what the width is
                if lay.kind == "embedding":
                    emb_widths.add(shp[lay.out_dim])
                if lay.in_dim is not None and lay.kind != "embedding":
                    ins.add(shp[lay.in_dim])
                if lay.out_dim is not None and lay.kind != "vector":
                    outs.add(shp[lay.out_dim])
        # a table's row count may equal the width (GPT-2 with n_positions == n_embd): an embedding's vector
        # size is a width whatever else it equals
        self.inferred = ((ins & outs) - finite_sizes) | emb_widths
        # inside a block the sizes are the width, its multiples (a fused qkv, the MLP's 4 x width, which may
        # equal the vocabulary size) and head-sized fractions of it (grouped keys and values); a size much
        # smaller than the stream (a router's expert count) is not a width
        stream = max(emb_widths) if emb_widths else (max(ins & outs) if ins & outs else 0)
        block_sizes = {r.shape[d] for r in rows if r.entry.name in depth.t_blocks for u in r.uses
                       for d in (u.layout.in_dim, u.layout.out_dim) if d is not None and u.layout.kind != "embedding"}
        self.inferred_in_block = {n for n in block_sizes if 8 * n >= stream} | emb_widths

    def is_width(self, row: _Row, dim: int | None) -> bool:
        if dim is None:
            return False
        if self.any_width:
            return row.shape[dim] != row.base_shape[dim]
        sizes = self.inferred_in_block if row.entry.name in self.depth.t_blocks else self.inferred
        return row.shape[dim] in sizes


# --------------------------------------------------------------------------------------------- phase: roles
def _use_role(row: _Row, u: _Use, widths: _WidthSizes) -> str:
    lay = u.layout
    shp = row.shape
    if u.source == "guess" and _raw_parameter(u.entry.module, len(shp)):
        last = len(shp) - 1
        if widths.is_width(row, last) and not any(widths.is_width(row, i) for i in range(last)):
            u.layout = lay = Layout("table", None, last, TABLE_NOTE.format(name=u.entry.name))
    w_in = widths.is_width(row, lay.in_dim) and lay.kind != "embedding"
    w_out = widths.is_width(row, lay.out_dim)
    if (w_out and not widths.any_width and row.entry.name not in widths.depth.t_blocks
            and lay.kind in ("out_in", "in_out") and shp[lay.out_dim] in widths.finite_sizes):
        # no width change to read it from, and the output has an embedding's row count (a vocabulary that
        # happens to equal the width): outside the blocks that is a readout's class count
        w_out = False
    if lay.kind == "scalar":
        return "scalar"
    if lay.kind == "vector":
        return "vector" if w_out else "scalar"
    if lay.kind in ("embedding", "table"):
        return "embedding"
    if w_in and w_out:
        return "hidden"
    if w_out:
        return "embedding"
    if w_in:
        return "readout"
    return "scalar"


def _tensor_shape(row: _Row, widths: _WidthSizes, roles: dict[str, str] | None, tied: str,
                  depth: _DepthMap) -> TensorShape:
    for u in row.uses:
        forced = _match_glob(u.entry.name, roles) if u.functional is None else None
        u.role, u.forced = (forced, True) if forced else (_use_role(row, u, widths), False)
    pick = row.uses[0]
    notes = [pick.layout.note] if pick.layout.note else []
    tied_readout = functional = lookup_module = None
    use_roles = {u.role for u in row.uses}
    names = list(dict.fromkeys(u.entry.name for u in row.uses))
    if len(row.uses) > 1 and not any(u.forced for u in row.uses) and len(use_roles) > 1:
        if use_roles == {"embedding", "readout"} and tied != "error":
            pick = next(u for u in row.uses if u.role == tied)
            other = next(u for u in row.uses if u.role != tied)
            where = repr(other.entry.name) if other.functional is None else \
                f"a product in the forward of {other.functional or 'the model'!r}"
            notes.append(f"tied with {where}: {tied} rules (tied={tied!r})")
            if tied == "embedding":
                if other.functional is None:
                    tied_readout = other.entry.name
                elif isinstance(pick.entry.module, (nn.Embedding, nn.EmbeddingBag)):
                    functional = other.functional
                    lookup_module = pick.entry.module_name
                else:
                    raise PlanError(
                        f"tensor {names[0]!r} is looked up and used as the readout, neither through a module of its "
                        "own: proxytune cannot give the readout use its multiplier without changing the lookup. Keep "
                        "the table in an nn.Embedding (its lookup then takes the correction), give the readout an "
                        "nn.Linear sharing the weight, or pass tied='readout' (readout rules for the table)")
        else:
            raise PlanError(
                f"tensor {names[0]!r} is used with different roles ({', '.join(sorted(use_roles))})"
                + (f" through {_list(names[1:])}" if len(names) > 1 else " in the forward pass")
                + f"; pass roles={{{names[0]!r}: '<role>'}}, untie the weights, or for embedding/readout ties use "
                "tied='embedding' (the default: embedding rules plus a forward multiplier on the readout use) or "
                "tied='readout'.")
    elif len(row.uses) > 1:
        pick = next((u for u in row.uses if u.forced), pick)
    role, lay, source = pick.role, pick.layout, ("override" if pick.forced else pick.source)
    if pick.forced:
        notes.append("role from override")
    elif source == "guess":
        notes.append("role guessed from the shape (the forward pass did not show how this tensor is used)")
    e, be = row.entry, row.base
    fi, fo = _fans(row.shape, lay)
    bfi, bfo = _fans(row.base_shape, lay)
    m_in, m_out = fi / bfi, fo / bfo
    width = {"embedding": m_out, "vector": m_out, "hidden": m_in, "readout": m_in}.get(role, 1.0)
    block, dmult = depth.block(e.name)
    return TensorShape(
        name=e.name, aliases=[n for n in names if n != e.name], shape=row.shape, base_name=be.name,
        base_shape=row.base_shape, module_type=type(e.module).__name__, layout=lay.kind, fan_in=fi, fan_out=fo,
        base_fan_in=bfi, base_fan_out=bfo, role=role, width=width, m_in=m_in, m_out=m_out, block=block,
        depth=dmult, tied_readout=tied_readout, notes=notes, role_source=source, functional_readout=functional,
        lookup_module=lookup_module)


def _check_readout(tensors: list[TensorShape], ftrace: ForwardTrace | None, readout: str,
                   roles: dict[str, str] | None, notes: list[str]) -> None:
    """A model whose output comes from a weight must have a readout; the trace's readout must be planned as one."""
    has = any(t.role == "readout" or t.tied_readout is not None or t.functional_readout is not None for t in tensors)
    if readout == "none":
        if has:
            notes.append("readout='none' was given, but the plan has a readout tensor: "
                         + ", ".join(t.name for t in tensors if t.role == "readout"))
        return
    traced = [t for t in tensors if ftrace is not None and ftrace.ok and t.base_name in ftrace.readout]
    for t in traced:
        if t.role not in ("readout",) and not (t.tied_readout is not None or t.functional_readout is not None) and t.role_source != "override":
            raise PlanError(
                f"tensor {t.name!r} produces the model's output (the traced forward pass), but its shape makes it "
                f"{t.role!r} (shape {t.shape}, base {t.base_shape}): a readout's output size (vocabulary, classes) "
                "must be the same in base and target. If the model's output is meant to be its features (an "
                "encoder), pass readout='none'; to keep this role, pass roles={"
                f"{t.name!r}: '{t.role}'}}")
    if has:
        return
    where = ("the traced forward pass found no weight producing the output" if ftrace is not None and ftrace.ok
             else "no tensor's shape and module make it a readout")
    raise PlanError(
        f"no readout found ({where}): the readout is the weight whose product gives the logits (an nn.Linear head, "
        "a table reused as F.linear(x, table.weight), an einsum). Pass roles={'<name>': 'readout'} naming it "
        "(model: {roles: {...}} in a sweep file, --role NAME=readout on the command line), or readout='none' if "
        "the model's output is not produced by a weight matrix (an encoder returning features)")


# ------------------------------------------------------------------------------------------ phase: branches
def _mark_branches(tensors: list[TensorShape], globs: Sequence[str] | None, ftrace: ForwardTrace | None,
                   depth: _DepthMap) -> list[str]:
    """Mark residual-branch outputs; returns the blocks where one sub-module has a branch output and another,
    which writes a stream-sized output, has none."""
    in_blocks = [t for t in tensors if t.block is not None]
    if not in_blocks:
        return []
    if globs is not None:
        for t in in_blocks:
            if any(fnmatch.fnmatchcase(t.name, g) for g in globs):
                t.branch_output, t.branch_source = True, "override"
        return []
    traced = ftrace is not None and ftrace.ok
    if traced:
        layers = {t.base_name.rpartition(".")[0] for t in tensors if t.base_name in ftrace.branches}  # type: ignore[union-attr]
        for t in in_blocks:
            if t.base_name in ftrace.branches or (t.base_name.rpartition(".")[0] in layers  # type: ignore[union-attr]
                                                   and t.name.endswith(".bias") and t.layout == "vector"):
                t.branch_output, t.branch_source = True, "forward"
    stream = _stream_width(tensors)
    gaps: list[str] = []
    for block, groups in _sub_modules(in_blocks).items():
        found = {g for g, members in groups.items() if any(t.branch_output for t in members)}
        for g, members in groups.items():
            if g in found:
                continue
            mats = [t for t in members if t.layout in ("out_in", "in_out", "nd") and t.fan_out == stream
                    and t.role == "hidden" and _leaf(t) not in _QKV_NAMES]
            if not mats:
                continue
            # nothing from the trace here (an MoE's weighted sum, an untraced model): names, then structure
            by_name = [t for t in members if any(fnmatch.fnmatchcase(t.name, gl) for gl in DEFAULT_BRANCH_OUTPUTS)
                       or (t.module_type == "NonDynamicallyQuantizableLinear" and _leaf(t) == "out_proj")]
            if by_name:
                for t in by_name:
                    t.branch_output, t.branch_source = True, "name"
                    t.notes.append("residual-branch output from its name (the traced forward pass did not show it)"
                                   if traced else "residual-branch output from its name")
                found.add(g)
                continue
            if not traced and len([t for t in members if t.layout in ("out_in", "in_out")]) >= 2:
                end = mats[-1]
                layer = end.name.rpartition(".")[0]
                for t in members:
                    if t.name.rpartition(".")[0] == layer:
                        t.branch_output, t.branch_source = True, "structure"
                        t.notes.append(STRUCTURAL_BRANCH_NOTE)
                found.add(g)
                continue
            if found and g not in found:
                gaps.append(f"{block}: a residual branch output was found in {_list(sorted(found), 2)} but not in "
                            f"{g or 'the block itself'!r} (its stream-sized matrices: {_list([t.name for t in mats], 2)})")
    return gaps


def _leaf(t: TensorShape) -> str:
    return t.name.rpartition(".")[0].rpartition(".")[2]


def _stream_width(tensors: list[TensorShape]) -> int:
    emb = Counter(t.fan_out for t in tensors if t.layout in ("embedding", "table"))
    if emb:
        return emb.most_common(1)[0][0]
    fans = Counter(t.fan_in for t in tensors if t.block is not None and t.layout in ("out_in", "in_out"))
    return fans.most_common(1)[0][0] if fans else 0


def _sub_modules(in_blocks: list[TensorShape]) -> dict[str, dict[str, list[TensorShape]]]:
    """Per block, its tensors grouped by the sub-module of the block that holds them (an attention module, an
    MLP; ``layer.N`` for a list of sub-layers as in T5; ``""`` for tensors of layers directly in the block)."""
    out: dict[str, dict[str, list[TensorShape]]] = {}
    for t in in_blocks:
        rel = t.name[len(t.block) + 1:]  # type: ignore[arg-type]
        parts = rel.split(".")[:-2]  # drop the layer and the attribute
        key = ".".join(parts[:2]) if len(parts) >= 2 and parts[1].isdigit() else (parts[0] if parts else "")
        out.setdefault(t.block, {}).setdefault(key, []).append(t)  # type: ignore[arg-type]
    return out


# query, key and value projections read the stream; they never end a residual branch
_QKV_NAMES = {"q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj", "wq", "wk", "wv",
              "to_q", "to_k", "to_v", "qkv", "c_attn", "in_proj", "query_key_value", "Wqkv", "qkv_proj"}
STRUCTURAL_BRANCH_NOTE = ("residual-branch output found from the module structure (the last matrix of its "
                          "sub-module that writes a stream-sized output); override with branch_outputs=[...]")


# ------------------------------------------------------------------------------------------ phase: factors
def _factors(ftrace: ForwardTrace, t_trace: ForwardTrace, tensors: list[TensorShape]) -> list[FactorRatio]:
    """The forward's constant factors at the base (from its trace) and at the target (its own trace, on
    ``meta`` when it is there: constants the code writes are read, buffers only where a float copy exists)."""
    by_base = {t.base_name: t.name for t in tensors}
    out = []
    for f in ftrace.factors:
        name = by_base.get(f.tensor, f.tensor)
        value = factor_value(t_trace, f.where, name) if t_trace.ok else None
        out.append(FactorRatio(f.where, name, factor_value(ftrace, f.where, f.tensor), value, f.module, f.source))
    return out
