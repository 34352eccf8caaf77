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

import torch
from torch import nn

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
    "*mlp.experts.*.proj.*", "*experts.*.w2.*", "*experts.*.down_proj.*",
)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORMS = _NORMS + (nn.RMSNorm,)


class PlanError(ValueError):
    """A model/base pair or an option the rules cannot handle, with what to change."""


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


def structural_block_pattern(target: nn.Module, base: nn.Module) -> str | None:
    """A block pattern read from the module tree, or None when the tree shows no stack of blocks.

    A stack is a ``ModuleList`` or ``Sequential`` whose children are all of one class and either differ
    in number between target and base (what a depth change looks like) or are composite modules (blocks,
    not a list of plain layers). Only the outermost stacks count: T5's ``block.N.layer.M`` is a stack of
    blocks, each holding a list of sub-layers.
    """
    t_mods, b_mods = canonical_modules(target), canonical_modules(base)
    found: list[str] = []
    for name, mod in t_mods.items():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        children = list(mod.children())
        if len({type(c) for c in children}) != 1 or len(children) != len(mod):
            continue
        bmod = b_mods.get(name)
        if not isinstance(bmod, (nn.ModuleList, nn.Sequential)) or len(bmod) == 0:
            continue
        composite = any(True for _ in children[0].children())
        if len(mod) != len(bmod) or (composite and len(mod) >= 2):
            found.append(name)
    outer = [n for n in found if not any(n != o and (o == "" or n.startswith(o + ".")) for o in found)]
    if not outer:
        return None
    alts = "|".join(re.escape(n) + r"\." if n else "" for n in sorted(outer))
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


def analyze(
    target: nn.Module,
    base: nn.Module,
    *,
    roles: dict[str, str] | None = None,
    layouts: dict[str, str] | None = None,
    block_pattern: str | None = None,
    branch_outputs: tuple[str, ...] | list[str] | None = None,
    tied: str = "embedding",
) -> list[TensorShape]:
    """Compare ``target`` with ``base`` and return one :class:`TensorShape` per
    distinct parameter, in the target's parameter order.

    Raises :class:`PlanError` with the tensor name(s) and shapes when the pair
    cannot be matched.
    """
    from .rules.recipes import ROLES

    if roles:
        for pat, role in roles.items():
            if role not in ROLES:
                raise PlanError(f"roles[{pat!r}] = {role!r} is not a role; valid: {', '.join(ROLES)}")
    if tied not in ("embedding", "readout", "error"):
        raise PlanError(f"unknown tied-weight policy {tied!r}; valid: embedding, readout, error")
    pattern = re.compile(block_pattern or structural_block_pattern(target, base) or DEFAULT_BLOCK_PATTERN)
    branch_globs = tuple(branch_outputs) if branch_outputs is not None else DEFAULT_BRANCH_OUTPUTS

    t_entries = param_entries(target)
    b_entries = param_entries(base)
    t_names = [e.name for e in t_entries]
    b_by_name = {e.name: e for e in b_entries}

    # Depth: map every target block index onto the base's stack.
    t_blocks = _blocks(list(dict.fromkeys(t_names)), pattern)
    b_blocks = _blocks(list(b_by_name), pattern)
    n_t: dict[str, int] = defaultdict(int)
    n_b: dict[str, int] = defaultdict(int)
    for key, idx, _, _ in t_blocks.values():
        n_t[key] = max(n_t[key], idx + 1)
    for key, idx, _, _ in b_blocks.values():
        n_b[key] = max(n_b[key], idx + 1)

    def base_name_of(name: str) -> str:
        if name in t_blocks:
            key, idx, s, e = t_blocks[name]
            if n_b.get(key):
                return name[:s] + str(idx % n_b[key]) + name[e:]
        return name

    mapped = {n: base_name_of(n) for n in t_names}
    missing = sorted({mapped[n] for n in t_names} - set(b_by_name))
    extra = sorted(set(b_by_name) - set(mapped.values()))
    if missing or extra:
        digits = any(re.search(r"\.\d+\.", n) for n in missing + extra)
        if digits and not t_blocks:
            raise PlanError(
                "target and base differ in depth but no block pattern matches their parameter names "
                f"(e.g. {_list(missing + extra, 3)}); pass block_pattern= a regex whose group 1 is the "
                f"block index (default {DEFAULT_BLOCK_PATTERN!r})")
        msg = "target and base have different parameter names."
        if missing:
            msg += f" In the target but not the base: {_list(missing)}."
        if extra:
            msg += f" In the base but not the target: {_list(extra)}."
        msg += " Build the base with the same model code, changing only width and depth."
        raise PlanError(msg)

    # Layouts and raw per-dimension comparison.
    finite_sizes: set[int] = set()
    rows = []
    for e in t_entries:
        be = b_by_name[mapped[e.name]]
        ov = _match_glob(e.name, layouts)
        lay = module_layout(e.module, e.attr, e.param.ndim, ov)
        shp, bshp = tuple(e.param.shape), tuple(be.param.shape)
        if len(shp) != len(bshp):
            raise PlanError(f"tensor {e.name!r} has shape {shp} in the target but {bshp} in the base")
        diff = [i for i in range(len(shp)) if shp[i] != bshp[i]]
        finite = set()
        if lay.kind == "embedding":
            finite = {0}
            finite_sizes.add(bshp[0])
        elif lay.kind in ("conv", "conv_t"):
            finite = set(range(2, len(shp)))
        elif lay.kind == "nd":
            finite = set(range(len(shp) - 2))
        bad = sorted(set(diff) & finite)
        if bad:
            raise PlanError(
                f"tensor {e.name!r}: dimension {bad[0]} is a finite dimension (vocabulary, kernel or "
                f"batch of matrices) but differs: base {bshp}, target {shp}. Only width and depth may "
                "differ between base and target.")
        rows.append((e, be, lay, shp, bshp, diff))
    # Sizes that are a width in the base: a vector size of an embedding, an input size of a matrix. A base
    # width may equal the vocabulary size; then that size says nothing about a changed class count.
    base_widths = {bshp[lay.out_dim] for e, be, lay, shp, bshp, diff in rows if lay.kind == "embedding"}
    base_widths |= {bshp[lay.in_dim] for e, be, lay, shp, bshp, diff in rows
                    if lay.kind in ("out_in", "in_out") and not _raw_parameter(e.module, e.param.ndim)}
    for e, be, lay, shp, bshp, diff in rows:
        # An output that grows at a different rate than the input and has a
        # vocabulary's size is a readout whose class count changed.
        if lay.kind in ("out_in", "in_out") and lay.out_dim in diff and bshp[lay.out_dim] in finite_sizes \
                and bshp[lay.out_dim] not in base_widths \
                and shp[lay.out_dim] / bshp[lay.out_dim] != shp[lay.in_dim] / bshp[lay.in_dim]:
            raise PlanError(
                f"tensor {e.name!r}: its output size {bshp[lay.out_dim]} equals the base vocabulary size "
                f"and differs: base {bshp}, target {shp}. Vocabulary and class counts must be the same "
                "in base and target.")

    any_width = any(diff for *_, diff in rows)
    inferred: set[int] = set()
    inferred_in_block: set[int] = set()
    if not any_width:
        # No width change at all (base shape itself, or depth only): a size that
        # is the output of one matrix and the input of another is a width.
        ins, outs, emb_widths = set(), set(), set()
        for e, be, lay, shp, *_ in rows:
            if _raw_parameter(e.module, e.param.ndim):
                continue  # its layout is a guess: it must not decide what the width is
            if lay.kind == "embedding":
                emb_widths.add(shp[lay.out_dim])
            if lay.in_dim is not None and lay.kind != "embedding":
                ins.add(shp[lay.in_dim])
            if lay.out_dim is not None and lay.kind != "vector":
                outs.add(shp[lay.out_dim])
        # A table's row count may equal the width (GPT-2 with n_positions == n_embd): an embedding's vector
        # size is a width whatever else it equals.
        inferred = ((ins & outs) - finite_sizes) | emb_widths
        # Inside a block the sizes are the width, its multiples (GPT-2's 3 x n_embd fused qkv, the MLP's
        # 4 x n_embd, which may equal the vocabulary size) and head-sized fractions of it (grouped keys and
        # values); a size much smaller than the stream (a router's expert count) is not a width.
        stream = max(emb_widths) if emb_widths else (max(ins & outs) if ins & outs else 0)
        block_sizes = {shp[d] for e, be, lay, shp, *_ in rows if e.name in t_blocks
                       for d in (lay.in_dim, lay.out_dim) if d is not None and lay.kind != "embedding"}
        inferred_in_block = {n for n in block_sizes if 8 * n >= stream} | emb_widths

    def is_width(shp, bshp, dim, name: str = "") -> bool:
        if dim is None:
            return False
        if any_width:
            return shp[dim] != bshp[dim]
        return shp[dim] in (inferred_in_block if name in t_blocks else inferred)

    by_id: dict[int, list[tuple]] = {}
    order: list[int] = []
    for row in rows:
        pid = id(row[0].param)
        if pid not in by_id:
            by_id[pid] = []
            order.append(pid)
        by_id[pid].append(row)

    result: list[TensorShape] = []
    for pid in order:
        uses = []
        for e, be, lay, shp, bshp, diff in by_id[pid]:
            if _raw_parameter(e.module, e.param.ndim) and _match_glob(e.name, layouts) is None:
                last = len(shp) - 1
                if is_width(shp, bshp, last, e.name) and not any(is_width(shp, bshp, i, e.name) for i in range(last)):
                    lay = Layout("table", None, last, TABLE_NOTE.format(name=e.name))
            w_in = is_width(shp, bshp, lay.in_dim, e.name) and lay.kind != "embedding"
            w_out = is_width(shp, bshp, lay.out_dim, e.name)
            if (w_out and not any_width and e.name not in t_blocks and lay.kind in ("out_in", "in_out")
                    and shp[lay.out_dim] in finite_sizes):
                # no width change to read it from, and the output has an embedding's row count (a vocabulary
                # that happens to equal the width): outside the blocks that is a readout's class count
                w_out = False
            if lay.kind == "scalar":
                role = "scalar"
            elif lay.kind == "vector":
                role = "vector" if w_out else "scalar"
            elif lay.kind in ("embedding", "table"):
                role = "embedding"
            elif w_in and w_out:
                role = "hidden"
            elif w_out:
                role = "embedding"
            elif w_in:
                role = "readout"
            else:
                role = "scalar"
            forced = _match_glob(e.name, roles)
            uses.append((e, be, lay, shp, bshp, forced or role, forced is not None))
        e, be, lay, shp, bshp, role, forced = uses[0]
        notes = [lay.note] if lay.note else []
        tied_readout = None
        use_roles = {u[5] for u in uses}
        if len(uses) > 1 and not any(u[6] for u in uses) and len(use_roles) > 1:
            names = [u[0].name for u in uses]
            if use_roles == {"embedding", "readout"} and tied != "error":
                pick = [u for u in uses if u[5] == tied][0]
                other = [u for u in uses if u[5] != tied][0]
                e, be, lay, shp, bshp, role, forced = pick
                notes.append(f"tied with {other[0].name!r}: {tied} rules (tied={tied!r})")
                if tied == "embedding":
                    tied_readout = other[0].name
            else:
                raise PlanError(
                    f"tensor {names[0]!r} is tied to {_list(names[1:])} and its uses have different roles "
                    f"({', '.join(sorted(use_roles))}); pass roles={{{names[0]!r}: '<role>'}}, untie the "
                    "weights, or for embedding/readout ties use tied='embedding' (the default: embedding "
                    "rules plus a forward multiplier on the readout use) or tied='readout'.")
        elif len(uses) > 1:
            role = next((u[5] for u in uses if u[6]), role)
        if forced:
            notes.append("role from override")
        fi, fo = _fans(shp, lay)
        bfi, bfo = _fans(bshp, lay)
        m_in, m_out = fi / bfi, fo / bfo
        width = {"embedding": m_out, "vector": m_out, "hidden": m_in, "readout": m_in}.get(role, 1.0)
        block = None
        depth = 1.0
        if e.name in t_blocks:
            key, idx, *_ = t_blocks[e.name]
            block = f"{key}{idx}"
            depth = n_t[key] / n_b[key]
        branch = block is not None and (
            any(fnmatch.fnmatchcase(e.name, g) for g in branch_globs)
            or (isinstance(e.module, nn.modules.linear.NonDynamicallyQuantizableLinear)
                and e.module_name.endswith("out_proj")))
        result.append(TensorShape(
            name=e.name, aliases=[u[0].name for u in uses if u[0].name != e.name],
            shape=shp, base_name=be.name, base_shape=bshp, module_type=type(e.module).__name__,
            layout=lay.kind, fan_in=fi, fan_out=fo, base_fan_in=bfi, base_fan_out=bfo,
            role=role, width=width, m_in=m_in, m_out=m_out, block=block, depth=depth,
            branch_output=branch, tied_readout=tied_readout, notes=notes))
    if branch_outputs is None:
        _structural_branch_outputs(result)
    return result


# query, key and value projections read the stream; they never end a residual branch
_QKV_NAMES = {"q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj", "wq", "wk", "wv",
              "to_q", "to_k", "to_v", "qkv", "c_attn", "in_proj", "query_key_value", "Wqkv", "qkv_proj"}
STRUCTURAL_BRANCH_NOTE = ("residual-branch output found from the module structure (the last matrix of its "
                          "sub-module that writes a stream-sized output); override with branch_outputs=[...]")


def _structural_branch_outputs(result: list[TensorShape]) -> None:
    """Mark residual-branch outputs in blocks where no name pattern found one.

    In each block, the matrices are grouped by the module that holds their layer (an attention module, an
    MLP); in a group of two or more, the last one (in registration order) whose output has the stream's
    width and which is not a query/key/value projection ends a branch: an attention output projection,
    an MLP's down projection. Its bias goes with it.
    """
    emb = Counter(r.fan_out for r in result if r.layout in ("embedding", "table"))
    in_blocks = [r for r in result if r.block is not None and r.layout in ("out_in", "in_out")]
    if not in_blocks:
        return
    stream = emb.most_common(1)[0][0] if emb else Counter(r.fan_in for r in in_blocks).most_common(1)[0][0]
    done = {r.block for r in result if r.branch_output}
    groups: dict[tuple[str, str], list[TensorShape]] = defaultdict(list)
    for r in in_blocks:
        if r.block in done or not r.name.endswith(".weight"):
            continue
        layer = r.name[: -len(".weight")]
        groups[(r.block, layer.rpartition(".")[0])].append(r)
    chosen: set[str] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        ends = [r for r in members if r.fan_out == stream
                and r.name[: -len(".weight")].rpartition(".")[2] not in _QKV_NAMES]
        if ends:
            chosen.add(ends[-1].name[: -len(".weight")])
    for r in result:
        if r.block is not None and r.name.rpartition(".")[0] in chosen:
            r.branch_output = True
            r.notes.append(STRUCTURAL_BRANCH_NOTE)

