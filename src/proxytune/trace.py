"""What a model's forward pass does with each parameter, read from one traced call.

Module types and names say how a tensor is *meant* to be used; the forward
pass says how it *is* used. One call of the model on a small example input,
under a :class:`torch.overrides.TorchFunctionMode` that sees every torch
function, records:

- **uses**: for every parameter, each operation that reads it and which of its
  dimensions meet the activation (``in``) and which the result carries
  (``out``): ``F.linear``, ``@``/``matmul``, ``einsum``, convolutions (a
  ``matmul`` use), ``F.embedding`` and indexing with an integer tensor (a
  ``lookup``), anything else (``other``);
- **the readout**: the parameter(s) whose product produces the model's output,
  found by walking back from the logits through shape-only and constant-factor
  operations (views, casts, dropout, a bias, ``x c``);
- **lookups of the input**: tables indexed by the model's input (token
  embeddings; a position table indexed by ``arange`` is a lookup too, but not
  of the input);
- **residual branches**: a product with a parameter whose result (through
  shape-only and constant-factor operations) is added to another activation:
  the end of a residual branch, with the modules that were running;
- **constant factors** in the forward: on a table's lookup (Gemma's
  ``sqrt(hidden)``), on the readout's input (T5's ``d_model^-1/2``) and on its
  output, with their values where they can be read.

Recording never changes what the forward computes; a forward that fails on
every example input gives a trace with ``error`` set, and the caller falls
back to the module structure.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .forward import DEFAULT_FORWARD, ForwardSpec

__all__ = ["Use", "Factor", "AttentionCall", "ForwardTrace", "trace_forward", "example_inputs"]

_RMSNORM = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()


@dataclass(frozen=True)
class Use:
    """One operation reading a parameter: ``kind`` is ``matmul``, ``lookup`` or ``other``; ``in_dims`` are the
    parameter's dimensions that meet the activation (contracted, or indexed for a lookup), ``out_dims`` the ones
    the result carries; ``module`` is the innermost module whose forward ran it."""

    kind: str
    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]
    module: str
    op: str


@dataclass(frozen=True)
class Factor:
    """A constant factor the forward applies: ``where`` is ``embedding`` (on a lookup of ``tensor``),
    ``readout-input`` or ``readout-output`` (around the readout ``tensor``). ``value`` is None when it could not
    be read (a buffer on the ``meta`` device); ``source`` says what it is."""

    where: str
    tensor: str
    value: float | None
    module: str
    source: str


@dataclass(frozen=True)
class AttentionCall:
    """One attention (a ``scaled_dot_product_attention`` call, or a softmax of ``q @ k^T``) in ``module``: the
    parameter each of q and k is a product of, with the rows of its output they keep (a fused qkv projection
    split), the head dim, the scale the forward applies to ``q . k`` (SDPA's ``scale``, default
    ``head_dim^-1/2``, or the constant factors before a softmax, 1 for T5, which folds its scale into the init;
    times constant factors on q's and k's way; None when it could not be read), and whether a normalization
    module runs on the query's way (QK-norm)."""

    module: str
    query: tuple[str, tuple[int, int] | None] | None
    key: tuple[str, tuple[int, int] | None] | None
    head_dim: int
    scale: float | None
    query_normed: bool = False


@dataclass
class ForwardTrace:
    """The result of :func:`trace_forward` (see the module docstring)."""

    uses: dict[str, list[Use]] = field(default_factory=dict)
    readout: list[str] = field(default_factory=list)
    input_lookups: list[str] = field(default_factory=list)
    branches: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    factors: list[Factor] = field(default_factory=list)
    attention: list[AttentionCall] = field(default_factory=list)
    input_kind: str = ""
    output_shape: tuple[int, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def layout(self, name: str) -> tuple[str, int | None, int | None] | None:
        """``(kind, in_dim, out_dim)`` of ``name``'s uses when they agree on a 2-D layout: ``("lookup", rows,
        width)`` for a table that is only looked up, ``("matmul", in, out)`` for a matrix only multiplied, None
        when the trace did not see it, saw only other uses, or saw disagreeing ones (a tie: see ``roles_of``)."""
        kinds = {(u.kind, u.in_dims, u.out_dims) for u in self.uses.get(name, []) if u.kind != "other"}
        if len(kinds) != 1:
            return None
        kind, ins, outs = next(iter(kinds))
        if len(ins) != 1 or len(outs) != 1:
            return None
        return kind, ins[0], outs[0]

    def use_kinds(self, name: str) -> set[str]:
        return {u.kind for u in self.uses.get(name, [])}


# ------------------------------------------------------------------------------------------------ recording
@dataclass(eq=False)
class _Origin:
    """Where an activation came from. ``kind``: ``input``, ``param`` (a view of a parameter; ``dims`` maps its
    dimensions to the parameter's, None where unknown), ``const`` (``scale`` is its value, None if unreadable),
    ``matmul`` / ``lookup`` (an op reading ``param``), ``through`` (a shape-only or constant-factor op on
    ``parents[0]``, ``scale`` its factor), ``add`` (of two activations) or ``op`` (anything else)."""

    kind: str
    parents: tuple["_Origin", ...] = ()
    param: str | None = None
    dims: tuple[int | None, ...] | None = None
    scale: float | None = 1.0
    source: str = ""
    module: str = ""
    of_input: bool = False
    gain: bool = False  # a "through" that multiplies by a parameter vector: no constant factor
    rows: tuple[int, int] | None = None  # a "through" that keeps rows [a, b) of the last dim (a split of a fused qkv)
    seq: int = -1  # creation order: an origin can only derive from ones created before it


_VIEWS = {"view", "reshape", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "permute", "contiguous", "flatten",
          "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "to", "float", "half", "bfloat16", "double",
          "type", "type_as", "clone", "detach", "view_as", "reshape_as", "narrow", "__getitem__", "movedim"}
_MULTI = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}
_THROUGH = {"dropout", "tanh", "alpha_dropout", "feature_alpha_dropout"}
_MATMULS = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__"}
_ADDMMS = {"addmm", "baddbmm", "addbmm"}
_MULS = {"mul", "__mul__", "__rmul__", "mul_", "multiply"}
_DIVS = {"div", "__truediv__", "div_", "true_divide", "divide"}
_ADDS = {"add", "__add__", "__radd__", "add_", "__iadd__"}
_CONSTS = {"tensor", "as_tensor", "scalar_tensor"}


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # a property such as Tensor.T
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _view_dims(name: str, dims: tuple[int | None, ...] | None, src: torch.Tensor, args: tuple, kwargs: dict,
               out: torch.Tensor) -> tuple[int | None, ...] | None:
    """How a view's dimensions map to the source's (None when it cannot be told)."""
    if dims is None:
        return None
    nd = src.ndim
    if name in ("to", "float", "half", "bfloat16", "double", "type", "type_as", "clone", "detach", "contiguous"):
        return dims
    if name in ("t", "T") and nd == 2:
        return (dims[1], dims[0])
    if name in ("mT", "T") and nd >= 2:
        return (*dims[:-2], dims[-1], dims[-2])
    if name in ("transpose", "swapaxes", "swapdims") and len(args) >= 3:
        a, b = args[1] % nd, args[2] % nd
        out_dims = list(dims)
        out_dims[a], out_dims[b] = out_dims[b], out_dims[a]
        return tuple(out_dims)
    if name == "permute":
        order = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return tuple(dims[i % nd] for i in order)
    if name in ("view", "reshape", "view_as", "reshape_as", "expand", "expand_as", "flatten", "unflatten"):
        return dims if tuple(out.shape) == tuple(src.shape) else None
    if name == "unsqueeze" and len(args) >= 2:
        k = args[1] % (nd + 1)
        return (*dims[:k], None, *dims[k:])
    if name == "narrow":
        return dims
    if name == "__getitem__":
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(i is Ellipsis or i is None or isinstance(i, torch.Tensor) for i in idx):
            return None
        kept = [d for i, d in zip(idx, dims) if isinstance(i, slice)] + list(dims[len(idx):])
        return tuple(kept) if len(kept) == out.ndim else None
    return None


def _einsum_dims(eq: str, operands: Sequence[torch.Tensor], k: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(contracted dims, kept dims) of operand ``k`` of an einsum."""
    eq = eq.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        return None
    term = terms[k]
    nd = operands[k].ndim
    if "..." in term:
        head, tail = term.split("...")
        letters = {c: i for i, c in enumerate(head)}
        letters.update({c: nd - len(tail) + i for i, c in enumerate(tail)})
    else:
        if len(term) != nd:
            return None
        letters = {c: i for i, c in enumerate(term)}
    ins = tuple(sorted(i for c, i in letters.items() if c not in rhs))
    outs = tuple(sorted(i for c, i in letters.items() if c in rhs))
    return ins, outs


@dataclass(frozen=True)
class _Call:
    """One torch function call as the recorder sees it: the op's name, its arguments and output, the innermost
    module running it and the origin of its first argument."""

    name: str
    args: tuple
    kwargs: dict
    out: Any
    module: str
    first: _Origin | None


class _Recorder(TorchFunctionMode):
    def __init__(self, params: dict[int, str], buffers: dict[int, tuple[str, nn.Module, str]],
                 norms: set[str] | None = None) -> None:
        super().__init__()
        self.params = params
        self.norms = norms or set()
        self.buffers = buffers
        self.origins: dict[int, _Origin] = {}
        self.keep: list[Any] = []  # every recorded tensor stays alive, so no id is reused during the call
        self.uses: dict[str, list[Use]] = {}
        self.branches: dict[str, list[tuple[str, ...]]] = {}
        self.stack: list[str] = []
        self.seq = 0
        self.attention: list[AttentionCall] = []

    # --------------------------------------------------------------- origins
    def origin(self, t: Any) -> _Origin | None:
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return _Origin("const", scale=float(t), source=f"{t:g}")
        if not isinstance(t, torch.Tensor):
            return None
        i = id(t)
        if i in self.params:
            return _Origin("param", param=self.params[i], dims=tuple(range(t.ndim)))
        o = self.origins.get(i)
        if o is not None:
            return o
        if i in self.buffers and t.numel() == 1:
            name, owner, attr = self.buffers[i]
            value = None if t.is_meta else float(t.detach().reshape(()).float())
            if value is None and isinstance(getattr(owner, "scalar_" + attr, None), (int, float)):
                value = float(getattr(owner, "scalar_" + attr))
            return _Origin("const", scale=value, source=f"buffer {name!r}")
        return None

    def _set(self, out: Any, origin: _Origin) -> None:
        if isinstance(out, torch.Tensor):
            self.seq += 1
            origin.seq = self.seq
            self.origins[id(out)] = origin
            self.keep.append(out)

    def _op(self, args: Sequence[Any], module: str) -> _Origin:
        """An origin for an op that is none of the recognized kinds, remembering its activation inputs."""
        parents = tuple(o for o in (self.origin(a) for a in _flat(args)) if self._activation(o))
        return _Origin("op", parents, module=module)  # type: ignore[arg-type]

    def _use(self, param: str, kind: str, ins: Sequence[int | None], outs: Sequence[int | None], op: str) -> None:
        if any(d is None for d in (*ins, *outs)):
            kind, ins, outs = "other", (), ()
        self.uses.setdefault(param, []).append(
            Use(kind, tuple(ins), tuple(outs), self.stack[-1] if self.stack else "", op))  # type: ignore[arg-type]

    def _other_uses(self, args: Sequence[Any], op: str) -> None:
        for a in _flat(args):
            o = self.origin(a)
            if o is not None and o.kind == "param":
                self._use(o.param, "other", (), (), op)  # type: ignore[arg-type]

    @staticmethod
    def _activation(o: _Origin | None) -> bool:
        return o is not None and o.kind not in ("param", "const")

    # -------------------------------------------------------------- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._record(_op_name(func), args, kwargs, out)
        except Exception:  # noqa: BLE001 - recording must never change or break the forward
            pass
        return out

    def _record(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Record one torch function call: the origin of its output, the parameters it reads and how, the
        attention it computes. The handlers are tried in order (:attr:`_HANDLERS`); the first that records the
        call ends it, and a call none of them records is an unrecognized op."""
        module = self.stack[-1] if self.stack else ""
        if name in _CONSTS and args and isinstance(args[0], (int, float)) and not isinstance(args[0], bool):
            self._set(out, _Origin("const", scale=float(args[0]), source=f"{args[0]:g}"))
            return
        call = _Call(name, args, kwargs, out, module, self.origin(args[0]) if args else None)
        for handler in self._HANDLERS:
            if handler(self, call):
                return
        self._on_other(call)

    def _on_view(self, c: _Call) -> bool:
        """A shape-only op: a parameter's view maps its dims, indexing a parameter by integers is a lookup."""
        name, args, first, out = c.name, c.args, c.first, c.out
        if not (name in _VIEWS and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)):
            return False
        if name == "__getitem__" and first is not None and first.kind == "param" and _int_index(args[1]):
            self._lookup(first, 0, args[1] if not isinstance(args[1], tuple) else args[1][0], out, name, c.module)
            return True
        if first is None:
            return True
        if first.kind == "param":
            self._set(out, _Origin("param", param=first.param,
                                   dims=_view_dims(name, first.dims, args[0], args, c.kwargs, out)))
        elif first.kind == "const":
            self._set(out, first)
        else:
            span = _slice_span(args[0], args[1]) if name == "__getitem__" and len(args) > 1 else None
            self._set(out, _Origin("through", (first,), module=c.module, rows=span))
        return True

    def _on_split(self, c: _Call) -> bool:
        """An activation split into parts (a fused qkv projection's output): each part keeps its rows."""
        if not (c.name in _MULTI and isinstance(c.out, (tuple, list)) and self._activation(c.first)):
            return False
        spans = _last_dim_spans(c.args[0], c.out, c.args, c.kwargs)
        for t, span in zip(c.out, spans or [None] * len(c.out)):
            self._set(t, _Origin("through", (c.first,), module=c.module, rows=span))
        return True

    def _on_attention(self, c: _Call) -> bool:
        """An attention (an SDPA call, or a softmax of a ``q k^T`` product) is recorded; the call itself goes on
        to the other handlers (False)."""
        name, args = c.name, c.args
        if name == "scaled_dot_product_attention" and len(args) >= 2:
            q, k = args[0], args[1]
            scale = c.kwargs.get("scale") if len(args) < 7 else args[6]
            qo, ko = self.origin(q), self.origin(k)
            scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
            self._attention(c.module, qo, ko, int(q.shape[-1]), scale)
        if name in ("softmax", "_softmax") and c.first is not None:
            qk = _qk_product(c.first)
            if qk is not None:
                self._attention(c.module, *qk)
        return False

    def _on_through(self, c: _Call) -> bool:
        """A shape-preserving op on an activation without a factor of its own (dropout, tanh)."""
        if not (c.name in _THROUGH and self._activation(c.first)):
            return False
        self._set(c.out, _Origin("through", (c.first,), module=c.module))
        return True

    def _on_linear(self, c: _Call) -> bool:
        """``F.linear``: a matmul use of its weight (dims: out, in), another use of its bias."""
        if c.name != "linear":
            return False
        args, kwargs = c.args, c.kwargs
        w = self.origin(args[1] if len(args) > 1 else kwargs.get("weight"))
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        self._other_uses([bias], c.name)
        if w is not None and w.kind == "param" and w.dims is not None and len(w.dims) == 2:
            self._use(w.param, "matmul", (w.dims[1],), (w.dims[0],), c.name)  # type: ignore[arg-type]
            self._set(c.out, _Origin("matmul", (c.first,) if c.first else (), param=w.param, module=c.module))
        else:
            self._set(c.out, self._op(args, c.module))
        return True

    def _on_matmul(self, c: _Call) -> bool:
        """A matrix product (``@``, ``mm``, ``addmm``...): a matmul use of the parameter on either side, else a
        product of two activations (attention logits, maybe)."""
        name, args, kwargs = c.name, c.args, c.kwargs
        if not (name in _MATMULS or name in _ADDMMS):
            return False
        if name in _MATMULS:
            a, b = args[0], args[1]
        else:  # addmm(input, mat1, mat2) / baddbmm(input, batch1, batch2), positional or by keyword
            a = kwargs.get("mat1", kwargs.get("batch1", args[1] if len(args) > 1 else None))
            b = kwargs.get("mat2", kwargs.get("batch2", args[2] if len(args) > 2 else None))
            self._other_uses([args[0]], name)
        oa, ob = self.origin(a), self.origin(b)
        if ob is not None and ob.kind == "param" and b.ndim >= 2 and ob.dims is not None:
            self._use(ob.param, "matmul", (ob.dims[-2],), (ob.dims[-1],), name)  # type: ignore[arg-type]
            self._set(c.out, _Origin("matmul", (oa,) if oa else (), param=ob.param, module=c.module))
        elif oa is not None and oa.kind == "param" and a.ndim >= 2 and oa.dims is not None:
            self._use(oa.param, "matmul", (oa.dims[-1],), (oa.dims[-2],), name)  # type: ignore[arg-type]
            self._set(c.out, _Origin("matmul", (ob,) if ob else (), param=oa.param, module=c.module))
        else:
            origin = self._op((a, b), c.module)
            if self._activation(oa) and self._activation(ob) and a.ndim >= 2:
                origin.source = f"qk:{a.shape[-1]}"  # a product of two activations: attention logits, maybe
                if name in _ADDMMS:  # BLOOM's alibi.baddbmm(q, k, alpha=1/sqrt(d)): the product's scale
                    alpha = kwargs.get("alpha", 1.0)
                    origin.scale = float(alpha) if isinstance(alpha, (int, float)) else None
            self._set(c.out, origin)
        return True

    def _on_einsum(self, c: _Call) -> bool:
        """``einsum``: a matmul use of the first parameter operand (dims from the equation)."""
        if c.name != "einsum":
            return False
        args, name = c.args, c.name
        eq = args[0]
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        found = None
        acts = []
        for k, t in enumerate(ops):
            o = self.origin(t)
            if o is not None and o.kind == "param" and found is None:
                dims = _einsum_dims(eq, ops, k)
                if dims is not None and o.dims is not None:
                    self._use(o.param, "matmul", tuple(o.dims[i] for i in dims[0]),  # type: ignore[arg-type]
                              tuple(o.dims[i] for i in dims[1]), name)
                    found = o.param
                else:
                    self._use(o.param, "other", (), (), name)  # type: ignore[arg-type]
            elif o is not None:
                acts.append(o)
        self._set(c.out, _Origin("matmul", tuple(acts), param=found, module=c.module) if found
                  else self._op(ops, c.module))
        return True

    def _on_lookup(self, c: _Call) -> bool:
        """``F.embedding`` / ``embedding_bag`` of a parameter table, ``index_select`` of a parameter."""
        name, args, first = c.name, c.args, c.first
        if name in ("embedding", "embedding_bag"):
            w = self.origin(args[1] if len(args) > 1 else c.kwargs.get("weight"))
            if w is not None and w.kind == "param":
                self._lookup(w, 0, args[0], c.out, name, c.module)
                return True
        if name == "index_select" and first is not None and first.kind == "param" and len(args) >= 3:
            self._lookup(first, args[1], args[2], c.out, name, c.module)
            return True
        return False

    def _on_conv(self, c: _Call) -> bool:
        """A convolution with a parameter kernel: a matmul use (in/out channels), another use of its bias."""
        name, args = c.name, c.args
        if not (name.startswith("conv") and len(args) > 1):
            return False
        w = self.origin(args[1])
        if w is not None and w.kind == "param" and w.dims is not None and w.dims[0] is not None:
            ins, outs = ((w.dims[0],), (w.dims[1],)) if "transpose" in name else ((w.dims[1],), (w.dims[0],))
            self._use(w.param, "matmul", ins, outs, name)  # type: ignore[arg-type]
            self._other_uses(args[2:3], name)
            self._set(c.out, _Origin("matmul", (c.first,) if c.first else (), param=w.param, module=c.module))
            return True
        return False

    def _on_scaling(self, c: _Call) -> bool:
        """A product or quotient: an activation times a constant (a factor), times a gain vector, or else an op."""
        name, args, first = c.name, c.args, c.first
        if not (name in _MULS or name in _DIVS):
            return False
        b = self.origin(args[1]) if len(args) > 1 else None
        for x, k in ((first, b), (b, first)):
            if self._activation(x) and k is not None and k.kind == "const":
                value = k.scale if name in _MULS or k.scale is None else (1.0 / k.scale if k.scale else None)
                if x is b and name in _DIVS:  # const / activation: not a factor
                    break
                self._set(c.out, _Origin("through", (x,), scale=value, source=k.source, module=c.module))
                return True
        for x, k in ((first, b), (b, first)):
            if self._activation(x) and k is not None and k.kind == "param" and k.dims is not None \
                    and len(k.dims) <= 1:
                # a gain vector (a norm's weight, a layer scale): shape-preserving, not a constant factor
                self._use(k.param, "other", (), (), name)  # type: ignore[arg-type]
                self._set(c.out, _Origin("through", (x,), module=c.module, gain=True))
                return True
        self._other_uses(args[:2], name)
        self._set(c.out, self._op(args[:2], c.module))
        return True

    def _on_add(self, c: _Call) -> bool:
        """A sum of two activations (a residual add, maybe ending a branch), or of an activation and a bias."""
        name, args, first = c.name, c.args, c.first
        if name not in _ADDS:
            return False
        b = self.origin(args[1]) if len(args) > 1 else None
        if self._activation(first) and self._activation(b):
            self._residual(first, b)  # type: ignore[arg-type]
            self._residual(b, first)  # type: ignore[arg-type]
            self._set(c.out, _Origin("add", (first, b), module=c.module))  # type: ignore[arg-type]
            return True
        for x, k in ((first, b), (b, first)):
            if self._activation(x) and k is not None and k.kind in ("param", "const"):
                if k.kind == "param":
                    self._use(k.param, "other", (), (), name)  # type: ignore[arg-type]
                self._set(c.out, _Origin("through", (x,), module=c.module))
                return True
        return False

    def _on_other(self, c: _Call) -> None:
        """Any other op: another use of each parameter it reads; its output is an op of its activations."""
        tensors = [*c.args, *c.kwargs.values()]
        self._other_uses(tensors, c.name)
        if isinstance(c.out, torch.Tensor):
            self._set(c.out, self._op(tensors, c.module))
        elif isinstance(c.out, (tuple, list)):
            origin = self._op(tensors, c.module)
            for t in c.out:
                self._set(t, origin)

    #: the handlers :meth:`_record` tries, in order
    _HANDLERS = (_on_view, _on_split, _on_attention, _on_through, _on_linear, _on_matmul, _on_einsum, _on_lookup,
                 _on_conv, _on_scaling, _on_add)

    def _attention(self, module: str, qo: _Origin | None, ko: _Origin | None, head_dim: int,
                   scale: float | None) -> None:
        """Record one attention: where q and k come from, and the whole scale the forward gives ``q . k`` (the
        scale of the product times constant factors on q's and k's way, as OPT's ``q_proj(x) * scaling``)."""
        for o in (qo, ko):
            if o is not None and scale is not None:
                _, factor = _walk(o)
                scale = None if factor is None else scale * factor
        self.attention.append(AttentionCall(module, _source(qo), _source(ko), head_dim, scale,
                                            query_normed=_normed(qo, self.norms)))

    def _lookup(self, w: _Origin, dim: int, index: Any, out: Any, op: str, module: str) -> None:
        if w.dims is not None and len(w.dims) >= 3 and dim == 0 and isinstance(out, torch.Tensor):
            # a stack of matrices (a mixture of experts' weights) gathered per token: still the matrices
            lead = out.ndim - (len(w.dims) - 1)
            if lead >= 0:
                self._set(out, _Origin("param", param=w.param, dims=(*([None] * lead), *w.dims[1:])))
                return
        if w.dims is None or len(w.dims) < 2:
            self._use(w.param, "other", (), (), op)  # type: ignore[arg-type]
            self._set(out, _Origin("op", module=module))
            return
        rows = w.dims[dim]
        rest = tuple(d for i, d in enumerate(w.dims) if i != dim)
        self._use(w.param, "lookup", (rows,), rest, op)  # type: ignore[arg-type]
        self._set(out, _Origin("lookup", param=w.param, module=module, of_input=_from_input(self.origin(index))))

    def _residual(self, branch: _Origin, other: _Origin) -> None:
        """``branch + other`` of two activations: a product with a parameter whose result reaches the add
        through shape-only and constant-factor ops ends a residual branch."""
        root, _ = _walk(branch)
        if root.kind == "matmul" and root.param is not None and not _derives_from(other, root):
            self.branches.setdefault(root.param, []).append(tuple(self.stack))


def _last_dim_spans(src: Any, out: Sequence[Any], args: tuple, kwargs: dict) -> list[tuple[int, int] | None] | None:
    """Row spans of a split / chunk along the last dimension (None when it is along another one)."""
    if not isinstance(src, torch.Tensor) or src.ndim == 0:
        return None
    dim = kwargs.get("dim", args[2] if len(args) > 2 and isinstance(args[2], int) else 0)
    if dim % src.ndim != src.ndim - 1:
        return None
    spans, start = [], 0
    for t in out:
        if not isinstance(t, torch.Tensor) or t.ndim != src.ndim:
            return None
        spans.append((start, start + t.shape[-1]))
        start += t.shape[-1]
    return spans


def _slice_span(src: Any, index: Any) -> tuple[int, int] | None:
    """The span of ``src[..., a:b]`` on the last dimension (None for any other index)."""
    if not isinstance(src, torch.Tensor) or src.ndim == 0:
        return None
    idx = index if isinstance(index, tuple) else (index,)
    if len(idx) == 2 and idx[0] is Ellipsis:
        last = idx[1]
    elif len(idx) == src.ndim and all(isinstance(i, slice) and i == slice(None) for i in idx[:-1]):
        last = idx[-1]
    else:
        return None
    if not isinstance(last, slice) or last.step not in (None, 1):
        return None
    a, b, _ = last.indices(src.shape[-1])
    return (a, b) if (a, b) != (0, src.shape[-1]) else None


def _source(o: _Origin | None) -> tuple[str, tuple[int, int] | None] | None:
    """The parameter whose product an activation is (through views, splits and constant factors), and the rows of
    its output it keeps (a split of a fused projection), or None."""
    rows = None
    while o is not None and o.kind == "through" and o.parents:
        if o.rows is not None:
            rows = o.rows if rows is None else (o.rows[0] + rows[0], o.rows[0] + rows[1])
        o = o.parents[0]
    if o is None or o.kind != "matmul" or o.param is None:
        return None
    return o.param, rows


def _normed(o: _Origin | None, norms: set[str], limit: int = 2000) -> bool:
    """Whether a normalization module ran on ``o``'s way from its projection (QK-norm): a factor folded into the
    projection would be divided out again."""
    todo, seen = ([o] if o is not None else []), 0
    while todo and seen < limit:
        x = todo.pop()
        seen += 1
        if x.module in norms:
            return True
        if x.kind == "matmul" and x.param is not None:
            continue
        todo.extend(x.parents)
    return False


def _qk_product(o: _Origin) -> tuple[_Origin, _Origin, int, float | None] | None:
    """The q and k of attention logits ``softmax(q @ k^T * scale + mask)``, the head dim and the constant
    factors between the product and the softmax (None when ``o`` is not that)."""
    todo, seen = [(o, 1.0)], 0
    while todo and seen < 64:
        x, scale = todo.pop()
        seen += 1
        while x.kind == "through" and x.parents:
            if not x.gain:
                scale = None if scale is None or x.scale is None else scale * x.scale
            x = x.parents[0]
        if x.kind == "op" and x.source.startswith("qk:") and len(x.parents) == 2:
            scale = None if scale is None or x.scale is None else scale * x.scale
            return x.parents[0], x.parents[1], int(x.source[3:]), scale
        if x.kind == "add":
            todo.extend((p, scale) for p in x.parents)
    return None


def _flat(args: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


def _derives_from(o: _Origin, target: _Origin, limit: int = 20_000) -> bool:
    """Whether ``o`` was computed from ``target`` (origins older than ``target`` are not searched)."""
    todo, seen = [o], set()
    while todo and len(seen) < limit:
        x = todo.pop()
        if x is target:
            return True
        if id(x) in seen or x.seq < target.seq:
            continue
        seen.add(id(x))
        todo.extend(x.parents)
    return False


def _int_index(index: Any) -> bool:
    first = index[0] if isinstance(index, tuple) and index else index
    return isinstance(first, torch.Tensor) and not first.is_floating_point() and first.dtype != torch.bool


def _walk(o: _Origin) -> tuple[_Origin, float | None]:
    """The first origin behind ``o`` that is not shape-only or a constant factor, and the product of the
    factors on the way (None when one of them could not be read)."""
    scale: float | None = 1.0
    seen = 0
    while o.kind == "through" and o.parents and seen < 10_000:
        if not o.gain:
            scale = None if scale is None or o.scale is None else scale * o.scale
        o = o.parents[0]
        seen += 1
    return o, scale


def _from_input(o: _Origin | None) -> bool:
    if o is None:
        return False
    root, _ = _walk(o)
    return root.kind == "input"


def _factor_module(o: _Origin) -> str:
    """The module of the constant-factor op nearest the root of ``o``'s chain."""
    module = o.module
    while o.kind == "through" and o.parents:
        if o.scale != 1.0 and not o.gain:
            module = o.module
        o = o.parents[0]
    return module


def _factor_sources(o: _Origin) -> list[str]:
    out = []
    while o.kind == "through" and o.parents:
        if o.scale != 1.0 and o.source and not o.gain:
            out.append(o.source)
        o = o.parents[0]
    return out


# --------------------------------------------------------------------------------------------- the trace
def example_inputs(model: nn.Module, kind: str = "auto", seq_len: int | None = None) -> list[tuple[str, Any]]:
    """Candidate example inputs ``(kind, x)`` for one traced call, most likely first."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    cfg = getattr(model, "config", None)
    tables = [m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    high = max(1, min(tables)) if tables else 2
    lengths = sorted({min(8, seq_len or 8), *([seq_len] if seq_len else [])})

    def tokens() -> list[tuple[str, Any]]:
        return [("tokens", torch.arange(2 * t, device=device).reshape(2, t) % min(high, 2)) for t in lengths]

    def image() -> list[tuple[str, Any]]:
        c = getattr(cfg, "num_channels", None) or next(
            (m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
        size = getattr(cfg, "image_size", None) or 32
        size = size[0] if isinstance(size, (tuple, list)) else size
        return [("image", torch.zeros(2, c, size, size, device=device))]

    def features() -> list[tuple[str, Any]]:
        first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
        d = first.in_features if first is not None else next((p.shape[-1] for p in params if p.ndim == 2), None)
        return [("features", torch.zeros(2, d, device=device))] if d else []

    makers = {"tokens": tokens, "image": image, "features": features}
    if kind != "auto":
        return makers[kind]()
    if getattr(model, "main_input_name", None) == "pixel_values":
        order = ("image", "tokens", "features")
    elif tables:
        order = ("tokens", "features", "image")
    else:
        order = ("features", "tokens", "image")
    return [c for k in order for c in makers[k]()]


@contextmanager
def _module_stack(model: nn.Module, names: dict[int, str], stack: list[str]) -> Iterator[None]:
    handles = []
    for mod in model.modules():
        name = names.get(id(mod))
        if name is None:
            continue

        def pre(_m, _a, name=name):
            stack.append(name)

        def post(_m, _a, _o, name=name):
            if stack and stack[-1] == name:
                stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def trace_forward(model: nn.Module, forward: ForwardSpec = DEFAULT_FORWARD, *, param_names: dict[int, str],
                  module_names: dict[int, str], seq_len: int | None = None) -> ForwardTrace:
    """Trace one forward call of ``model`` (see the module docstring).

    ``param_names`` maps ``id(parameter)`` to the name the caller keys tensors by (one per tied tensor),
    ``module_names`` ``id(module)`` to its name. The model is put in eval mode for the call and restored; no
    gradient is recorded; nothing of the model changes. A model on ``meta`` whose forward needs values (a
    mixture of experts' routing) is traced on a CPU copy of its structure when it is small."""
    trace = _trace(model, forward, param_names, module_names, seq_len)
    if trace.ok or not any(p.is_meta for p in model.parameters()):
        return trace
    n = sum(p.numel() for p in model.parameters())
    if n > 50_000_000:
        return trace
    copy_ = _cpu_copy(model)
    if copy_ is None:
        return trace
    copy_model, id_map = copy_
    names = {id_map[k]: v for k, v in param_names.items() if k in id_map}
    mods = {id(m2): module_names[id(m1)] for m1, m2 in zip(model.modules(), copy_model.modules())
            if id(m1) in module_names}
    second = _trace(copy_model, forward, names, mods, seq_len)
    return second if second.ok else trace


def _cpu_copy(model: nn.Module) -> tuple[nn.Module, dict[int, int]] | None:
    """A CPU copy of a ``meta`` model with small random weights (ties kept), and old -> new parameter ids."""
    try:
        clone = copy.deepcopy(model)
        olds = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
        clone = clone.to_empty(device="cpu")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in clone.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.02)
            for b in clone.buffers():
                b.zero_()
        news = [id(p) for _, p in clone.named_parameters(remove_duplicate=False)]
        return clone, dict(zip(olds, news))
    except Exception:  # noqa: BLE001 - a copy is a second chance, never required
        return None


def _trace(model: nn.Module, forward: ForwardSpec, param_names: dict[int, str], module_names: dict[int, str],
           seq_len: int | None) -> ForwardTrace:
    buffers: dict[int, tuple[str, nn.Module, str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, b in mod._buffers.items():
            if b is not None:
                buffers.setdefault(id(b), (f"{mod_name}.{attr}" if mod_name else attr, mod, attr))
    errors = []
    was_training = model.training
    # normalization layers: torch's, and any class named like one (Qwen3RMSNorm, T5LayerNorm), not a
    # "PostNormBlock"
    norms = {name for m in model.modules()
             if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, *_RMSNORM))
             or type(m).__name__.lower().endswith("norm")
             for name in [module_names.get(id(m))] if name}
    for kind, x in example_inputs(model, forward.input, seq_len):
        rec = _Recorder(param_names, buffers, norms)
        targets = x if kind == "tokens" else None
        model.eval()
        try:
            with torch.no_grad(), _module_stack(model, module_names, rec.stack):
                rec.origins[id(x)] = _Origin("input")
                rec.keep.append(x)
                with rec:
                    out = forward.call(model, x, targets)
                    logits = forward.logits(out)
        except Exception as exc:  # noqa: BLE001 - a failed example input: try the next one
            errors.append(f"{kind} {tuple(x.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        finally:
            model.train(was_training)
        return _result(rec, logits, kind)
    return ForwardTrace(error="; ".join(errors) or "no example input could be made")


def _result(rec: _Recorder, logits: torch.Tensor, kind: str) -> ForwardTrace:
    trace = ForwardTrace(uses=rec.uses, branches=rec.branches, input_kind=kind, output_shape=tuple(logits.shape),
                         attention=rec.attention)
    # the readout: products with a parameter reached from the output through shape-only, constant-factor and
    # add ops; the factors on the way are the readout's output factor
    start = rec.origin(logits)
    readouts: list[tuple[_Origin, float | None, list[str]]] = []
    todo = [start] if start is not None else []
    seen: set[int] = set()
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        root, scale = _walk(o)
        if root.kind == "matmul" and root.param is not None:
            readouts.append((root, scale, _factor_sources(o)))
        elif root.kind == "add":
            todo.extend(root.parents)
    for root, scale, sources in readouts:
        if root.param not in trace.readout:
            trace.readout.append(root.param)  # type: ignore[arg-type]
        if scale != 1.0:
            trace.factors.append(Factor("readout-output", root.param, scale, _factor_module(o),  # type: ignore[arg-type]
                                        " x ".join(sources) or "a constant"))
        if root.parents:
            _, in_scale = _walk(root.parents[0])
            if in_scale != 1.0:
                trace.factors.append(Factor("readout-input", root.param, in_scale, _factor_module(root.parents[0]),  # type: ignore[arg-type]
                                            " x ".join(_factor_sources(root.parents[0])) or "a constant"))
    # lookups of the input, and constant factors applied to a lookup's result before anything else
    lookups: dict[int, _Origin] = {}
    for o in rec.origins.values():
        root, _ = _walk(o)
        if root.kind == "lookup":
            lookups.setdefault(id(root), root)
    for o in lookups.values():
        if o.of_input and o.param not in trace.input_lookups:
            trace.input_lookups.append(o.param)  # type: ignore[arg-type]
    best: dict[int, tuple[float | None, _Origin, list[str]]] = {}
    for o in rec.origins.values():
        if o.kind != "through":
            continue
        root, scale = _walk(o)
        if root.kind != "lookup" or scale == 1.0:
            continue
        depth = len(_factor_sources(o))
        if id(root) not in best or depth > len(best[id(root)][2]):
            best[id(root)] = (scale, o, _factor_sources(o))
    per_table: dict[str, list[tuple[float | None, str, str]]] = {}
    for key, (scale, o, sources) in best.items():
        per_table.setdefault(lookups[key].param, []).append((scale, _factor_module(o), " x ".join(sources)))  # type: ignore[index]
    for table, found in per_table.items():
        scale, module, source = found[0]
        trace.factors.append(Factor("embedding", table, scale, module, source or "a constant"))
    return trace


def factor_value(trace: ForwardTrace, where: str, tensor: str) -> float | None:
    """The product of the factors of kind ``where`` on ``tensor`` (1 when there is none; None if unreadable)."""
    value: float | None = 1.0
    for f in trace.factors:
        if f.where == where and f.tensor == tensor:
            value = None if value is None or f.value is None or not math.isfinite(f.value) else value * f.value
    return value
