"""The sweep file: one pydantic schema, read from YAML.

Example (``sweep.yaml``)::

    name: width-transfer
    model: gpt                      # or mypkg.models:build, ./mymodel.py:build, or a mapping
                                    #   {builder, options, roles, block_pattern, ...}: proxytune.modelspec
    data: stdlib                    # or a text file / .bin token file
    recipe: mup
    optimizer: adamw
    base: {width: 32, depth: 2}     # the shape the HPs refer to
    axes:
      width: [32, 64, 128]
      log2_lr: {start: -10, stop: -4, step: 1}
      seed: [0, 1]
    train: {steps: 300, batch_size: 16, seq_len: 64, warmup: 0.1}
    strategy: {kind: grid}          # or list (with points: [...]), random, tpe, halving, ...
    executor: {kind: local, workers: 2, threads: 1, batch: 8}
    storage: null                   # runs/<name>/trials.journal, or postgresql://...

Axis names are TrainConfig fields (``width``, ``depth``, ``lr``,
``weight_decay``, ``init_scale``, ``batch_size``, ``steps``, ``seed``...),
``log2_<field>`` for a field swept in octaves, ``role_lr.<role>`` /
``role_init.<role>`` for per-role constants (``log2_role_lr.<role>`` in
octaves), ``output_mult``, ``embedding_mult``, ``attn_mult``, ``residual_mult``,
``residual_attn_ratio``, ``act_mult`` for the named forward multipliers (u-muP's
named HPs; its ``loss_softmax_mult`` is ``output_mult``). Values are a list, a
``{start, stop, step}`` range (grid), or ``{low, high}`` bounds (random/TPE).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from typing_extensions import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import PlanError
from ..modelspec import ModelStructure, split_model_section
from ..train.config import ROLES, TrainConfig
from .program import COMMAND_FIELDS, ProgramConfig
from .tracking import TrackingConfig

#: limits that no real sweep reaches; beyond them a typo would enumerate millions of points
MAX_AXIS_POINTS = 10_000
MAX_GRID_POINTS = 100_000
MAX_AXIS_VALUE = 1e12
MAX_LOG2 = 100

STRATEGIES = ("grid", "list", "random", "tpe", "halving", "hyperband", "telescoping")
EXECUTORS = ("local", "inline", "ray")
# Fields set by the sweep itself, not by ``train:``.
_OWNED = ("model", "model_options", "model_structure", "data", "data_options", "recipe", "optimizer", "base_width",
          "base_depth")


class SweepConfigError(ValueError):
    """A sweep file that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """``{start, stop, step}``: an inclusive grid; ``{low, high}``: bounds for random/TPE sampling."""

    start: float | None = None
    stop: float | None = None
    step: float | None = None
    low: float | None = None
    high: float | None = None

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_form(self) -> Range:
        grid = (self.start, self.stop, self.step)
        bounds = (self.low, self.high)
        for v in (*grid, *bounds):
            if v is not None and abs(v) > MAX_AXIS_VALUE:
                raise ValueError(f"{v:g} is too large for an axis value (|value| <= {MAX_AXIS_VALUE:g})")
        if all(v is not None for v in grid) and all(v is None for v in bounds):
            if not self.step > 0 or self.stop < self.start:
                raise ValueError("a range needs step > 0 and stop >= start")
            n = (self.stop - self.start) / self.step + 1
            if n > MAX_AXIS_POINTS:
                raise ValueError(f"{{start: {self.start:g}, stop: {self.stop:g}, step: {self.step:g}}} has {n:.3g} "
                                 f"points; an axis may have at most {MAX_AXIS_POINTS} (raise the step)")
            return self
        if all(v is not None for v in bounds) and all(v is None for v in grid):
            if not self.high > self.low:
                raise ValueError("bounds need high > low")
            return self
        raise ValueError("give either {start, stop, step} (a grid) or {low, high} (sampling bounds)")

    def values(self) -> list[float]:
        if self.start is None:
            raise ValueError("{low, high} bounds have no grid values; use start/stop/step for grid strategies")
        n = int(math.floor((self.stop - self.start) / self.step + 1e-9)) + 1
        return [round(self.start + i * self.step, 10) for i in range(n)]


class StrategyConfig(_Strict):
    kind: Literal["grid", "list", "random", "tpe", "halving", "hyperband", "telescoping"] = "grid"
    n_trials: int | None = Field(None, gt=0, description="trials to run (random, tpe, halving, hyperband)")
    seed: int = 0
    min_resource: int | None = Field(None, gt=0, description="halving/hyperband: eval steps before the first cut")
    reduction_factor: int = Field(3, ge=2, description="halving/hyperband: keep 1 / reduction_factor per rung")
    shrink: float = Field(4.0, gt=1, description="telescoping: grid points shrink by shrink^(1/n_hps) per doubling")
    min_points: int = Field(3, ge=1, description="telescoping: never fewer points per HP than this")
    scale_axis: str = Field("width", description="telescoping: the axis that grows stage by stage")
    refine: bool = Field(True, description="grid: after the grid, one pass at half spacing around each size's "
                                           "optimum whose interval is wider than the grid step")
    refine_axis: str = Field("log2_lr", description="grid: the HP axis that the refinement pass refines")


class ExecutorConfig(_Strict):
    kind: Literal["local", "inline", "ray"] = Field(
        "local", description="local: worker processes; inline: one worker in this process (tiny sweeps, "
                             "debugging, notebooks); ray: Ray tasks")
    workers: int = Field(1, gt=0)
    threads: int = Field(1, gt=0, description="torch threads per worker")
    batch: int = Field(1, gt=0, description="trials trained together in one worker (1 = off)")
    lease_seconds: float = Field(60.0, gt=1, description="a running trial whose heartbeat is older is re-queued")
    max_attempts: int = Field(3, ge=1, description="a point whose worker dies this many times while running it "
                                                   "(killed, out of memory) is stored as failed, not re-queued")
    reconnect_timeout: float = Field(600.0, gt=0, le=7 * 24 * 3600,
                                     description="a database storage (postgresql://...) that stops answering is "
                                                 "waited for this many seconds, reconnecting, before the sweep stops")
    address: str | None = Field(None, description="ray: cluster address (None: start ray locally)")
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs per task")


class FileConfig(_Strict):
    """A config read from a YAML file: unknown keys (at the top or in a section) name the closest valid key."""

    _what: ClassVar[str] = "sweep"  # in messages: "sweep file", "unknown sweep key"
    _error: ClassVar[type[ValueError]] = ValueError
    _sections: ClassVar[dict[str, type[BaseModel]]] = {}  # nested models, for their unknown-key suggestions

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        path = Path(path)
        if not path.is_file():
            raise cls._error(f"{cls._what} file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise cls._error(f"{path}: not a UTF-8 text file (byte {exc.start} is {exc.object[exc.start]:#04x})") \
                from None
        except yaml.YAMLError as exc:
            raise cls._error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        except OSError as exc:
            raise cls._error(f"{path}: cannot read it: {exc.strerror}") from None
        binary = _binary_keys(data)
        if binary:
            raise cls._error(f"{path}: {binary[0]}: a YAML binary value (!!binary) is not accepted; write text")
        if not isinstance(data, dict):
            raise cls._error(f"{path}: expected a mapping of {cls._what} settings at the top level")
        if "model_structure" in cls.model_fields:
            try:  # the builder file, when it is one, is relative to this file's folder
                data = split_model_section(data, folder=path.resolve().parent)
            except PlanError as exc:
                raise cls._error(f"{path}: {exc}") from None
        return cls.from_dict(cls._relative_to(data, path.parent), source=str(path))

    @classmethod
    def _relative_to(cls, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        """Settings whose paths are relative to the file's folder, made absolute (none by default)."""
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        source = source or f"{cls._what} config"
        if "model_structure" in cls.model_fields and isinstance(data.get("model"), dict):
            try:
                data = split_model_section(data)
            except PlanError as exc:
                raise cls._error(f"{source}: {exc}") from None
        bad = [_unknown(cls._what, k, list(cls.model_fields)) for k in data if k not in cls.model_fields]
        if bad:
            raise cls._error(f"{source}: " + "; ".join(bad))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise cls._error(f"{source}: " + _format(exc, cls._sections)) from None


class SweepConfig(FileConfig):
    """A whole sweep: what to train, over which axes, how, and where to store it."""

    _what: ClassVar[str] = "sweep"
    _error: ClassVar[type[ValueError]] = SweepConfigError
    _sections: ClassVar[dict[str, type[BaseModel]]] = {"strategy": StrategyConfig, "executor": ExecutorConfig,
                                                       "program": ProgramConfig, "tracking": TrackingConfig}

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    program: ProgramConfig | None = Field(None, description="the user's own training code (a function or a "
                                                            "command) instead of the built-in trainer")
    model: str = "gpt"
    model_options: dict[str, Any] = Field(default_factory=dict)
    model_structure: ModelStructure = Field(default_factory=ModelStructure,
                                            description="how proxytune reads the model (from a model: mapping)")
    data: str = "stdlib"
    data_options: dict[str, Any] = Field(default_factory=dict)
    recipe: str = "mup"
    optimizer: str = "adamw"
    base: dict[str, int] = Field(default_factory=dict, description="{width: .., depth: ..} of the base shape")
    axes: dict[str, list[Any] | Range] = Field(default_factory=dict)
    points: list[dict[str, Any]] | None = Field(
        None, description="strategy 'list': exactly these points (each sets every axis); axes may be omitted")
    train: dict[str, Any] = Field(default_factory=dict, description="fixed TrainConfig fields")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    storage: str | None = Field(None, description="None: a local file under runs_dir/name; or postgresql://...")
    runs_dir: str = "runs"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig,
                                     description="experiment trackers that get every finished trial")

    @classmethod
    def _relative_to(cls, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        return data_relative_to(program_relative_to(data, folder), folder)

    @field_validator("program")
    @classmethod
    def _program(cls, v: ProgramConfig | None) -> ProgramConfig | None:
        return program_absolute(v)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return absolute_storage(v)

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        return absolute_data(v)

    @field_validator("data_options")
    @classmethod
    def _data_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        if isinstance(v.get("val_path"), str):
            v = {**v, "val_path": absolute_data(v["val_path"])}
        return v

    @field_validator("base")
    @classmethod
    def _base(cls, v: dict[str, int]) -> dict[str, int]:
        return check_base(v)

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_train(v, _OWNED, "at the top level of the sweep file")

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[Any] | Range], info: ValidationInfo) -> dict[str, list[Any] | Range]:
        program = info.data.get("program")
        extra = list(program.params) if program is not None else []
        for name, spec in v.items():
            field_name(name, extra)  # raises with a suggestion
            if isinstance(spec, list) and not spec:
                raise ValueError(f"axis {name!r} has no values")
            values = spec if isinstance(spec, list) else [x for x in (spec.start, spec.stop, spec.low, spec.high)
                                                          if x is not None]
            for x in values:
                if isinstance(x, (bytes, bytearray)):
                    raise ValueError(f"axis {name!r}: binary values are not accepted")
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"axis {name!r}: {x} is not a finite number")
                if name.startswith("log2_") and (isinstance(x, bool) or not isinstance(x, (int, float))
                                                 or abs(x) > MAX_LOG2):
                    raise ValueError(f"axis {name!r}: {x!r} must be a number of octaves within +-{MAX_LOG2}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        kind = self.strategy.kind
        if kind == "list":
            self._check_points()
        elif self.points is not None:
            raise ValueError(f"points are for strategy 'list', not {kind!r}; remove them or set strategy.kind: list")
        if kind in ("grid", "telescoping"):
            for name, spec in self.axes.items():
                if isinstance(spec, Range) and spec.start is None:
                    raise ValueError(f"axis {name!r}: strategy {kind} needs a list or {{start, stop, step}}")
        if kind in ("random", "tpe", "halving", "hyperband") and not self.strategy.n_trials:
            raise ValueError(f"strategy {kind} needs strategy.n_trials")
        if kind == "telescoping":
            if self.strategy.scale_axis not in self.axes or not isinstance(self.axes[self.strategy.scale_axis], list):
                raise ValueError(f"telescoping grows axis {self.strategy.scale_axis!r}: list its values under axes")
        if self.program is not None:
            self._check_program()
        if kind in ("grid", "telescoping"):
            size = math.prod(len(axis_values_of(spec)) for spec in self.axes.values())
            if size > MAX_GRID_POINTS:
                raise ValueError(f"the grid has {size:,} points; at most {MAX_GRID_POINTS:,} (fewer axis values, or "
                                 "strategy random/tpe with n_trials)")
        # Every point must make a valid TrainConfig: check the first one, and every value of every axis, now.
        base_config(self)
        if self.program is None:
            first = first_point(self)
            for axis, spec in self.axes.items():
                for value in axis_values_of(spec) if not (isinstance(spec, Range) and spec.start is None) else []:
                    try:
                        TrainConfig(**apply_point(base_fields(self), {**first, axis: value}))
                    except ValidationError as exc:
                        raise ValueError(f"axis {axis!r} value {value!r}: {_format(exc)}") from None
        return self

    def _check_program(self) -> None:
        """A program builds its own model and reads its own data; it runs one trial at a time."""
        check_program_leaves_model(self)
        if self.executor.batch != 1:
            raise ValueError("executor.batch: a program runs one trial at a time; set batch: 1")
        names = set(self.axes) | set(self.program.params) | set(self.train) | set(COMMAND_FIELDS)
        for axis in self.axes:
            names.add(axis[5:] if axis.startswith("log2_") else axis)
        for name in self.program.placeholders():
            if name not in names and not name.startswith(("role_lr.", "role_init.")):
                raise ValueError(_unknown("program.command placeholder", name, sorted(names)))

    def _check_points(self) -> None:
        """Strategy 'list': points present, each setting the same valid axes; axes derived when omitted."""
        if not self.points:
            raise ValueError("strategy 'list' needs a non-empty points list")
        names = list(self.points[0])
        for i, point in enumerate(self.points):
            if set(point) != set(names):
                raise ValueError(f"points[{i}] sets {sorted(point)}, points[0] sets {sorted(names)}: every point "
                                 "must set the same axes")
        for name in names:
            field_name(name, list(self.program.params) if self.program else [])  # raises with a suggestion
        if not self.axes:
            self.axes = {n: sorted({p[n] for p in self.points}, key=lambda v: (isinstance(v, str), v))
                         for n in names}
        elif set(self.axes) != set(names):
            raise ValueError(f"the points set {sorted(names)} but axes lists {sorted(self.axes)}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def storage_url(self) -> str:
        """The Optuna storage: an explicit URL, or the sweep's own journal file."""
        return self.storage or str(self.run_dir / "trials.journal")

    def identity(self) -> dict[str, Any]:
        """What stored trials depend on: everything but axes, points, strategy, executor, storage, trackers and
        where the program is run from."""
        out = self.model_dump(mode="json", exclude={"axes", "points", "strategy", "executor", "storage",
                                                    "runs_dir", "tracking"})
        return structure_identity(program_identity(out))


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


def axis_values_of(spec: list[Any] | Range) -> list[Any]:
    """An axis's values (a list, or a grid range; bounds have none)."""
    if isinstance(spec, list):
        return list(spec)
    return spec.values() if spec.start is not None else [spec.low, spec.high]


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
                "residual_mult", "residual_attn_ratio", "act_mult")


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
