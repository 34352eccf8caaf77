"""One description of a model, used by every command: how to build it and how proxytune should read it.

In a sweep or tune file, ``model:`` is a builder name or this mapping::

    model:
      builder: ./mymodel.py:build        # gpt | pkg.module:function | path/to/file.py:function
      options: {vocab: 50304}            # builder keyword arguments
      roles: {"lexicon.weight": embedding}   # glob -> role, where the forward pass cannot tell
      block_pattern: '^trunk\\.blk(\\d+)\\.' # regex, group 1 = block index (found by itself for
                                         #   ModuleList, Sequential, numbered ModuleDict keys and attributes)
      branch_outputs: ["*.attn.proj.*", "*.mlp.down.*"]   # residual-branch outputs (found by the forward pass)
      attention: [scale-attribute:my_scale]   # how to reach the attention logit scale (see below)
      targets_arg: targets               # the forward's targets argument (nanoGPT), passed with the targets
      output: logits                     # key, attribute or index of the logits in the forward's output
      input: tokens                      # tokens | image | features | auto
      tied: embedding                    # policy for a table tied to the readout: embedding | readout | error
      readout: auto                      # auto | none (the output is not produced by a weight matrix)
      layouts: {"*.w_in": in_out}        # tensors stored (in, out) in a module proxytune does not know

The command line takes the same: ``--model`` (a builder, or a YAML file with
this mapping or a ``model:`` section), ``--option``, ``--role``,
``--block-pattern``, ``--branch-output``, ``--attention``, ``--targets-arg``,
``--output``, ``--input``, ``--readout``.

Attention adapters are named, not imported from data: ``scale-attribute:ATTR``
(a module attribute passed as SDPA's ``scale``), ``hf-scaling:ATTR`` (a float
attribute already ``head_dim^-1/2``), ``query-projection:NAME[,NAME]`` (the
child holding the query projection), or ``pkg.module:Class`` (your own
:class:`proxytune.nn.attention.AttentionAdapter`, built with no arguments;
imported because you named it, like the builder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PlanError
from .forward import ForwardSpec
from .builders import import_module
from .nn.attention import AttentionAdapter, QueryProjection, ScaleAttribute, ScalingAttribute

ROLE_NAMES = ("embedding", "hidden", "readout", "vector", "scalar")
_STRUCTURE_KEYS = ("roles", "layouts", "block_pattern", "branch_outputs", "tied", "attention", "targets_arg",
                   "output", "input", "readout")


class ModelStructure(BaseModel):
    """How proxytune reads a model beyond its builder and options (every field optional; see the module
    docstring). Plain data: it names adapters, it never holds code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[str, str] = Field(default_factory=dict, description="glob -> role overrides")
    layouts: dict[str, Literal["out_in", "in_out"]] = Field(default_factory=dict,
                                                            description="glob -> layout of unknown modules")
    block_pattern: str | None = Field(None, description="regex whose group 1 is the block index")
    branch_outputs: list[str] | None = Field(None, description="globs of residual-branch output tensors")
    tied: Literal["embedding", "readout", "error"] = "embedding"
    attention: list[str] = Field(default_factory=list, description="attention adapters, tried before the built-in")
    targets_arg: str | None = Field(None, description="the forward's keyword argument for the targets")
    output: str | int | None = Field(None, description="key, attribute or index of the logits in the output")
    input: Literal["auto", "tokens", "image", "features"] = "auto"
    readout: Literal["auto", "none"] = "auto"

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: dict[str, str]) -> dict[str, str]:
        for pat, role in v.items():
            if role not in ROLE_NAMES:
                raise ValueError(f"roles[{pat!r}] = {role!r} is not a role; valid: {', '.join(ROLE_NAMES)}")
        return v

    @field_validator("block_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        import re

        if v is not None:
            try:
                if re.compile(v).groups < 1:
                    raise ValueError(f"block_pattern {v!r} needs a group capturing the block index")
            except re.error as exc:
                raise ValueError(f"block_pattern {v!r} is not a regular expression: {exc}") from None
        return v

    @field_validator("attention")
    @classmethod
    def _attention(cls, v: list[str]) -> list[str]:
        for spec in v:
            kind, _, arg = spec.partition(":")
            if kind not in _BUILTIN_ADAPTERS and not (arg and "." not in arg and kind):
                raise ValueError(f"attention adapter {spec!r}: expected one of "
                                 f"{', '.join(k + ':...' for k in _BUILTIN_ADAPTERS)} or 'pkg.module:Class'")
        return v

    def is_default(self) -> bool:
        return self == ModelStructure()

    def forward(self) -> ForwardSpec:
        """How to call the model and read its logits."""
        return ForwardSpec(output=self.output, targets_arg=self.targets_arg, input=self.input)

    def plan_kwargs(self, roles: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`proxytune.parameterize` (``roles`` given elsewhere win over this one's)."""
        merged = {**self.roles, **(roles or {})}
        return {"roles": merged or None, "layouts": dict(self.layouts) or None, "block_pattern": self.block_pattern,
                "branch_outputs": list(self.branch_outputs) if self.branch_outputs is not None else None,
                "tied": self.tied, "attention": attention_adapters(self.attention) or None,
                "forward": self.forward(), "readout": self.readout}

    def describe(self) -> str:
        """The fields that differ from the defaults, for a report line."""
        d = self.model_dump(exclude_defaults=True)
        return ", ".join(f"{k}={v!r}" for k, v in d.items()) or "defaults"


class ModelSpec(ModelStructure):
    """A model: its builder and options plus how proxytune reads it (:class:`ModelStructure`)."""

    builder: str = "gpt"
    options: dict[str, Any] = Field(default_factory=dict, description="builder keyword arguments")

    def structure(self) -> ModelStructure:
        return ModelStructure(**self.model_dump(include=set(_STRUCTURE_KEYS)))

    @classmethod
    def from_value(cls, value: Any, *, folder: Path | None = None) -> "ModelSpec":
        """A spec from a builder string, a mapping, or a YAML file holding a mapping (or a ``model:`` section).
        A relative ``path/file.py:fn`` builder is made absolute against ``folder`` (a config file's)."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str) and value.endswith((".yaml", ".yml")) and ":" not in value:
            path = Path(value)
            try:
                data = yaml.safe_load(path.read_text())
            except FileNotFoundError:
                raise PlanError(f"model file {value!r} does not exist") from None
            except (OSError, yaml.YAMLError) as exc:
                raise PlanError(f"model file {value!r} cannot be read: {exc}") from None
            if isinstance(data, dict) and isinstance(data.get("model"), (dict, str)):
                data = data["model"]
            return cls.from_value(data, folder=path.resolve().parent)
        if isinstance(value, str):
            value = {"builder": value}
        if not isinstance(value, dict):
            raise PlanError(f"model: expected a builder name or a mapping, got {type(value).__name__}")
        try:
            spec = cls.model_validate(value)
        except ValidationError as exc:
            raise PlanError("model: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                if e["type"] != "extra_forbidden" else f"unknown key {e['loc'][-1]!r} (valid: "
                f"{', '.join(cls.model_fields)})" for e in exc.errors())) from None
        if folder is not None:
            spec = spec.model_copy(update={"builder": absolute_builder(spec.builder, folder)})
        return spec


def split_model_section(data: dict[str, Any], *, folder: Path | None = None,
                        structure_key: str = "model_structure") -> dict[str, Any]:
    """A config mapping whose ``model:`` is a mapping, rewritten into ``model`` (the builder), ``model_options``
    and ``<structure_key>`` (with the roles); a plain builder string is left as it is (made absolute when it is
    a relative file path)."""
    model = data.get("model")
    if isinstance(model, str) and folder is not None:
        return {**data, "model": absolute_builder(model, folder)}
    if not isinstance(model, dict):
        return data
    spec = ModelSpec.from_value(model, folder=folder)
    out = dict(data)
    for key, given in (("model_options", spec.options), (structure_key, spec.structure())):
        if key in data and data[key] not in ({}, None):
            raise PlanError(f"{key} is given twice: inside model: and at the top level; keep one")
    out.update(model=spec.builder, model_options=dict(spec.options), **{structure_key: spec.structure()})
    return out


def absolute_builder(builder: str, folder: Path) -> str:
    """``path/file.py:fn`` relative to ``folder`` made absolute (other builders unchanged)."""
    path, sep, fn = builder.rpartition(":")
    if sep and path.endswith(".py") and not Path(path).is_absolute():
        return f"{(folder / path).resolve()}:{fn}"
    if sep and "/" not in path and path and not path.endswith(".py") and (folder / (path.replace(".", "/") + ".py")).exists() \
            and folder.resolve() != Path.cwd().resolve():
        # pkg.module next to the config file: the file, so any folder (and any worker) finds it
        return f"{(folder / (path.replace('.', '/') + '.py')).resolve()}:{fn}"
    return builder


_BUILTIN_ADAPTERS = ("scale-attribute", "hf-scaling", "query-projection")


def attention_adapters(specs: list[str]) -> list[Any]:
    """Adapter objects for named adapter specs (see the module docstring)."""

    out: list[Any] = []
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind == "scale-attribute":
            out.append(ScaleAttribute(arg or "attn_scale"))
        elif kind == "hf-scaling":
            out.append(ScalingAttribute(arg or "scaling"))
        elif kind == "query-projection":
            out.append(QueryProjection(tuple(n for n in arg.split(",") if n)) if arg else QueryProjection())
        else:

            mod = import_module(kind, what=f"attention adapter {spec!r}")
            cls = getattr(mod, arg, None)
            if not (isinstance(cls, type) and issubclass(cls, AttentionAdapter)):
                raise PlanError(f"attention adapter {spec!r}: {arg!r} in {kind!r} is not an AttentionAdapter subclass")
            out.append(cls())
    return out
