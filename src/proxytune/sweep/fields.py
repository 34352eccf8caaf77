"""Pure helpers on a sweep's settings, below the schema that validates with them: axis names read as TrainConfig
fields, a point applied to the fixed fields, paths made absolute, a config's identity, readable messages.

They read configs (a :class:`~proxytune.sweep.schema.SweepConfig`, a tune file's config) by their fields and
import no schema, so :mod:`proxytune.sweep.schema` can call them from its validators.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..modelspec import ModelStructure
from ..train.config import ROLES, TrainConfig

if TYPE_CHECKING:
    from .schema import ProgramConfig, SweepConfig

# Fields set by the sweep itself, not by ``train:``.
_OWNED = ("model", "model_options", "model_structure", "data", "data_options", "recipe", "optimizer", "base_width",
          "base_depth")


def axis_values_of(spec: Any) -> list[Any]:
    """An axis's values (a list, or a grid range; bounds have none)."""
    if isinstance(spec, list):
        return list(spec)
    return spec.values() if spec.start is not None else [spec.low, spec.high]


def absolute_storage(v: str | None) -> str | None:
    """A journal path or ``sqlite:///relative.db`` made absolute, so the saved sweep finds the same store from any
    folder (and commands run elsewhere never create a stray empty database)."""
    if v is None or not v.strip():
        if v is not None:
            raise ValueError("storage is empty; leave it out (a journal file under runs_dir) or give a path or URL")
        return v
    if "://" not in v:
        return str(Path(v).expanduser().resolve())
    if v.startswith("sqlite:///") and not v.startswith("sqlite:////") and v != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(v[len("sqlite:///"):]).resolve())
    return v


def check_program_leaves_model(cfg: BaseModel) -> None:
    """A config with ``program:`` (a sweep or a tune file) must leave model and data to the program."""
    if getattr(cfg, "program", None) is None:
        return
    for key in ("model", "model_options", "model_structure", "data", "data_options"):
        if getattr(cfg, key) != type(cfg).model_fields[key].get_default(call_default_factory=True):
            raise ValueError(f"{key} is for the built-in trainer; a program builds its own model and reads its "
                             "own data (give it what it needs in program.params)")


def structure_identity(out: dict[str, Any]) -> dict[str, Any]:
    """A config's identity without a default model structure, so configs stored before it existed keep theirs."""
    if out.get("model_structure") == ModelStructure().model_dump(mode="json"):
        out.pop("model_structure")
    return out


def program_identity(out: dict[str, Any]) -> dict[str, Any]:
    """A config's identity with its program's run-time settings (folder, timeout) left out; without a
    program, no key at all, so configs stored before programs existed keep their identity."""
    if out.get("program") is None:
        out.pop("program", None)
    else:
        for key in ("cwd", "timeout", "kill_grace"):
            out["program"].pop(key, None)
    return out


#: data sources that are names, not files
DATA_NAMES = ("stdlib", "teacher")


def data_relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data:`` (and ``data_options.val_path``) of a config file: a relative file path is relative to the file's
    folder, like ``program.cwd``, so the sweep reads the same file whatever folder it is started or resumed from."""
    source = data.get("data")
    if isinstance(source, str) and source not in DATA_NAMES and source and not Path(source).expanduser().is_absolute():
        data = {**data, "data": str((folder / source).resolve())}
    options = data.get("data_options")
    val = options.get("val_path") if isinstance(options, dict) else None
    if isinstance(val, str) and val and not Path(val).expanduser().is_absolute():
        data = {**data, "data_options": {**options, "val_path": str((folder / val).resolve())}}
    return data


def absolute_data(source: str) -> str:
    """A data file path made absolute (from the current directory); the names in :data:`DATA_NAMES` as they are."""
    if source in DATA_NAMES or not source:
        return source
    return str(Path(source).expanduser().resolve())


def program_relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``program.cwd`` of a config file: relative to the file's folder, which is also the default."""
    program = data.get("program")
    if isinstance(program, dict):
        cwd = program.get("cwd")
        if cwd is None or (isinstance(cwd, str) and not Path(cwd).is_absolute()):
            data = {**data, "program": {**program, "cwd": str((folder / (cwd or ".")).resolve())}}
    return data


def program_absolute(v: ProgramConfig | None) -> ProgramConfig | None:
    """``program.cwd`` made absolute (from the current directory), so a saved copy works from anywhere."""
    if v is not None and (v.cwd is None or not Path(v.cwd).is_absolute()):
        v = v.model_copy(update={"cwd": str(Path(v.cwd or ".").resolve())})
    return v


_LOG2_FIELDS = ("lr", "weight_decay", "eps", "init_scale", "output_mult", "embedding_mult", "attn_mult",
                "residual_mult", "residual_attn_ratio", "act_mult", "muon_lr_ratio", "eps_mult")


def field_name(axis: str, extra: list[str] | None = None) -> str:
    """The TrainConfig field an axis sets (``log2_lr`` -> ``lr``, ``role_lr.readout`` and
    ``log2_role_lr.readout`` -> ``role_lr``); ``extra``: a program's own parameter names, also valid."""
    fields = [f for f in TrainConfig.model_fields if f not in _OWNED] + list(extra or [])
    name = axis[5:] if axis.startswith("log2_") else axis
    if name.startswith(("role_lr.", "role_init.")):
        field, role = name.split(".", 1)
        if role not in ROLES:
            raise ValueError(_unknown(f"{field} role", role, list(ROLES)))
        return field
    if name not in fields:
        valid = fields + [f"log2_{f}" for f in _LOG2_FIELDS] + [f"{k}.<role>" for k in ("role_lr", "role_init")]
        raise ValueError(_unknown("axis", axis, valid))
    return name


def apply_point(fields: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields with one sweep point's axis values applied (``log2_`` axes give ``2 ** value``)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fields.items()}
    for axis, value in point.items():
        log2 = axis.startswith("log2_")
        name = axis[5:] if log2 else axis
        if log2:
            value = 2.0 ** float(value)
        if name.startswith(("role_lr.", "role_init.")):
            field, role = name.split(".", 1)
            out[field] = {**out.get(field, {}), role: float(value)}
        else:
            out[name] = value
    return out


def base_fields(cfg: SweepConfig) -> dict[str, Any]:
    """TrainConfig fields shared by every point of the sweep."""
    fields = dict(cfg.train)
    fields.update(model=cfg.model, model_options=cfg.model_options, model_structure=cfg.model_structure,
                  data=cfg.data, data_options=cfg.data_options, recipe=cfg.recipe, optimizer=cfg.optimizer)
    if "width" in cfg.base:
        fields["base_width"] = cfg.base["width"]
    if "depth" in cfg.base:
        fields["base_depth"] = cfg.base["depth"]
    if cfg.executor.kind != "inline":  # an inline worker trains with the caller's thread count
        fields["threads"] = cfg.executor.threads
    return fields


def first_point(cfg: SweepConfig) -> dict[str, Any]:
    if cfg.points:
        return dict(cfg.points[0])
    point = {}
    for axis, spec in cfg.axes.items():
        if isinstance(spec, list):
            point[axis] = spec[0]
        elif spec.start is not None:
            point[axis] = spec.start
        else:
            point[axis] = spec.low
    return point


def base_config(cfg: SweepConfig) -> TrainConfig:
    """The TrainConfig of the sweep's first point (validates every fixed field; a program's own parameters
    are left out)."""
    fields = apply_point(base_fields(cfg), first_point(cfg))
    if cfg.program is not None:
        fields = {k: v for k, v in fields.items() if k in TrainConfig.model_fields}
        fields.setdefault("width", cfg.base.get("width", TrainConfig.model_fields["width"].default))
        fields.setdefault("depth", cfg.base.get("depth", TrainConfig.model_fields["depth"].default))
    return TrainConfig(**fields)


def check_base(v: dict[str, int]) -> dict[str, int]:
    """``base:`` holds ``width`` and ``depth`` only."""
    for key in v:
        if key not in ("width", "depth"):
            raise ValueError(_unknown("base", key, ["width", "depth"]))
    return v


def check_train(v: dict[str, Any], owned: tuple[str, ...], where: str) -> dict[str, Any]:
    """``train:`` holds TrainConfig fields other than ``owned`` (those are set ``where``)."""
    fields = [f for f in TrainConfig.model_fields if f not in owned]
    for key in v:
        if key in owned:
            raise ValueError(f"train.{key} is set {where}, not under train")
        if key not in fields:
            raise ValueError(_unknown("train", key, fields))
    return v


def _binary_keys(data: Any, where: str = "") -> list[str]:
    """Where ``data`` (parsed YAML) holds bytes (a ``!!binary`` tag)."""
    if isinstance(data, (bytes, bytearray)):
        return [where or "the file"]
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in _binary_keys(v, f"{where}.{key}" if where else str(key))]
    if isinstance(data, list):
        return [k for i, v in enumerate(data) for k in _binary_keys(v, f"{where}[{i}]")]
    return []


def _unknown(where: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"unknown {where} key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")


def _format(exc: ValidationError, sections: dict[str, type[BaseModel]] | None = None) -> str:
    """One readable clause per error; an unknown key in a section suggests the closest key of that section."""
    out: list[str] = []
    for e in exc.errors():
        if len(e["loc"]) >= 3 and e["loc"][0] == "axes" and str(e["loc"][2]).startswith(("list[", "function-after")):
            # one clause for an axis whose value is neither a list nor a range (pydantic tries both)
            clause = f"axes.{e['loc'][1]}: give a list of values, {{start, stop, step}} or {{low, high}}"
            if clause not in out:
                out.append(clause)
            continue
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = ".".join(str(x) for x in e["loc"][:-1])
            msg = "unknown key"
            model = (sections or {}).get(parent)
            if model is not None:
                msg = _unknown(parent, str(e["loc"][-1]), list(model.model_fields))
        out.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(out)
