"""The schemas of ``sweep/``, at the bottom of the package: the sweep file and its sections, read from YAML.

Runtime modules (program, tracking, the store, the worker, the runner) import these; this module imports none of
them. What a validator needs beyond the fields themselves is either pure and below (:mod:`.fields`,
:mod:`.errors`) or reached through a hook filled from above: :data:`STRATEGY_REGISTRY`, the strategy kinds,
which :mod:`proxytune.sweep.strategy` registers (one class per kind).

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

import math
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from typing_extensions import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import PlanError
from ..modelspec import ModelStructure, split_model_section
from ..train.config import TrainConfig
from .errors import SweepConfigError
from .fields import (_OWNED, _binary_keys, _format, _unknown, absolute_data, absolute_storage, apply_point,
                     axis_values_of, base_config, base_fields, check_base, check_program_leaves_model, check_train,
                     data_relative_to, field_name, first_point, program_absolute, program_identity,
                     program_relative_to, structure_identity)

#: limits that no real sweep reaches; beyond them a typo would enumerate millions of points
MAX_AXIS_POINTS = 10_000
MAX_GRID_POINTS = 100_000
MAX_AXIS_VALUE = 1e12
MAX_LOG2 = 100

EXECUTORS = ("local", "inline", "ray")


# ---------------------------------------------------------------------------- strategies (the hook)
class StrategyRules(Protocol):
    """What the schema asks of a strategy kind: the checks of a sweep's settings for it (raising ValueError with
    the message). The whole protocol, and every kind, is :class:`proxytune.sweep.strategy.Strategy`."""

    def check(self, cfg: SweepConfig) -> None: ...

    def check_size(self, cfg: SweepConfig) -> None: ...


#: The strategy registry, kind -> Strategy, in the order messages list the kinds. It lives here so the schema
#: reads it without importing the strategies (which import the schema); :mod:`proxytune.sweep.strategy` fills
#: it, one entry per Strategy class, when ``proxytune.sweep`` is imported (before any sweep file is read).
STRATEGY_REGISTRY: dict[str, StrategyRules] = {}


# ---------------------------------------------------------------------------- program
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
#: placeholders every command may use beside the axes and params
COMMAND_FIELDS = ("trial", "trial_dir", "width", "depth", "base_width", "base_depth", "recipe", "optimizer", "sweep",
                  "python")


class ProgramConfig(BaseModel):
    """``program:`` in a sweep file: the user's training code that runs each trial."""

    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(None, description="'module:function' or 'path/to/file.py:function'; "
                                                   "called as function(trial) -> final validation loss")
    command: list[str] | None = Field(None, description="argv of a program run once per trial; '{lr}', "
                                                        "'{width}'... are filled from the point")
    params: dict[str, Any] = Field(default_factory=dict, description="fixed values handed to the program in "
                                                                     "trial.params; axes may sweep these names")
    timeout: float | None = Field(None, gt=0, description="seconds a trial may run; then it is stopped and "
                                                          "stored as failed")
    cwd: str | None = Field(None, description="where the command runs and the function's module is found "
                                              "(default: the folder of the sweep file)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of a command")
    kill_grace: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL when a command is "
                                                      "stopped")

    @model_validator(mode="after")
    def _one_kind(self) -> ProgramConfig:
        if (self.function is None) == (self.command is None):
            raise ValueError("give exactly one of program.function ('module:function') or program.command "
                             "(a list of arguments)")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"program.function {self.function!r}: expected 'module:function' or "
                             "'path/to/file.py:function'")
        if self.command is not None and (not self.command or not all(isinstance(a, str) and a
                                                                     for a in self.command)):
            raise ValueError("program.command must be a non-empty list of non-empty strings")
        for name in self.params:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"program.params key {name!r} is not a valid name (letters, digits, '_')")
        return self

    @property
    def kind(self) -> str:
        return "function" if self.function is not None else "command"

    def placeholders(self) -> list[str]:
        return [m for arg in self.command or [] for m in _PLACEHOLDER.findall(arg)]


# ---------------------------------------------------------------------------- tracking
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")


class TrackingConfig(BaseModel):
    """``tracking:`` in a sweep file."""

    model_config = ConfigDict(extra="forbid")

    tensorboard: bool | str = Field(
        False, description="true: event files under <run_dir>/tensorboard; a directory: under <dir>/<sweep name>")
    mlflow: bool | str = Field(
        False, description="true: an SQLite database <run_dir>/mlflow.db; a tracking URI (http://, sqlite:///, "
                           "databricks...) used as is; a directory: MLflow's file store there")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the sweep's name)")

    @field_validator("tensorboard", mode="before")
    @classmethod
    def _tensorboard(cls, v: Any) -> Any:
        return _switch_or_place(v, "a directory")

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow(cls, v: Any) -> Any:
        return _switch_or_place(v, "a tracking URI (http://..., sqlite:///...) or a directory")

    @field_validator("experiment", mode="before")
    @classmethod
    def _experiment(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"give an MLflow experiment name, or leave it out for the sweep's name; got {v!r}")
        return v.strip()


def _switch_or_place(v: Any, place: str) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        text = v.strip()
        if not text:
            raise ValueError(f"give true, false or {place}, not an empty string")
        if text.lower() in _BOOL_WORDS:
            raise ValueError(f"{v!r} is text here: write true or false without quotes, or give {place}")
        return text
    raise ValueError(f"give true, false or {place}, not {v!r}")


# ---------------------------------------------------------------------------- the sweep file
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
    kind: str = Field("grid", description="one of the registered strategies (STRATEGY_REGISTRY): grid, list, random, "
                                          "tpe, halving, hyperband, telescoping")
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

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        if isinstance(v, str) and v in STRATEGY_REGISTRY:
            return v
        # worded as pydantic words a Literal's error, which this field was before strategies were registered
        names = [repr(name) for name in STRATEGY_REGISTRY]
        raise ValueError("Input should be " + (f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1
                                               else "".join(names)))


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


class TrainingFileConfig(FileConfig):
    """A file that names a program and data (a sweep file, a tune file): the paths in it, relative to its folder
    when read from YAML, are made absolute. Subclasses declare the ``program`` and ``data`` fields."""

    @classmethod
    def _relative_to(cls, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        return data_relative_to(program_relative_to(data, folder), folder)

    @field_validator("program", check_fields=False)
    @classmethod
    def _program(cls, v: ProgramConfig | None) -> ProgramConfig | None:
        return program_absolute(v)

    @field_validator("data", check_fields=False)
    @classmethod
    def _data(cls, v: str) -> str:
        return absolute_data(v)


class SweepConfig(TrainingFileConfig):
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

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return absolute_storage(v)

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
        strategy = STRATEGY_REGISTRY[self.strategy.kind]
        strategy.check(self)
        if self.program is not None:
            self._check_program()
        strategy.check_size(self)
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
