"""The ``proxytune tune`` file: one pydantic schema, read from YAML.

Example (``tune.yaml``)::

    name: gpt-tune
    model: gpt                      # or mypkg.models:build
    data: stdlib
    optimizer: adamw
    base: {width: 32, depth: 2}     # the smallest proxy: stage 1 searches here
    widths: [64, 128, 256]          # the wider proxies of stage 2 (default: 2x, 4x, 8x the base)
    recipes: [mup, sp-perlayer]     # candidates (default; completep joins when depths are given)
    target: {width: 4096, depth: 2, tokens: 2.0e9, batch: 256}  # the run the settings are for
    horizon: {horizons: [1, 2, 4, 8], batches: [1, 2, 4]}     # stage 3 at the base width: LR vs tokens, batch
    train: {steps: 300, batch_size: 16, seq_len: 64, warmup: 0.1}
    search: {strategy: halving}      # or tpe (every trial full length), oat (one-at-a-time rounds)
    verify: {seeds: 2}
    executor: {workers: 2, threads: 1, batch: 8}

Every field has a default but ``name``. Unknown keys are errors that name
the closest valid key, and nothing is written.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..modelspec import ModelStructure
from ..rules.recipes import RECIPES
from ..sweep.errors import SweepConfigError
from ..sweep.fields import (
    _unknown, check_base, check_program_leaves_model, check_train, field_name, program_identity, structure_identity,
)
from ..sweep.schema import ExecutorConfig, ProgramConfig, Range, TrainingFileConfig
from ..train.config import (
    MATRIX_STEP_OPTIMIZERS, MULTIPLIER_FIELDS, OPTIMIZER_FIELDS, TrainConfig, optimizer_field_error, optimizer_fields,
)

#: the named multipliers stage 1 scans by default (see docs/tuning.md for why these)
DEFAULT_MULTIPLIERS = ("role_init.hidden", "role_init.readout", "role_init.embedding", "role_lr.embedding",
                       "role_lr.readout", "role_lr.vector", "attn_mult")
#: the optimizer's own constants that join DEFAULT_MULTIPLIERS when ``search.multipliers`` is not given (docs/tuning.md,
#: "Matrix optimizers"): Muon's matrix LR relative to the AdamW LR, Shampoo's damping
OPTIMIZER_MULTIPLIERS: dict[str, tuple[str, ...]] = {"muon": ("muon_lr_ratio",), "dion": ("muon_lr_ratio",),
                                                      "shampoo": ("eps_mult",)}
# Fields set by the tune file itself, not by ``train:``.
_OWNED = ("model", "model_options", "model_structure", "data", "data_options", "recipe", "optimizer", "base_width",
          "base_depth", "width", "depth", "lr", "seed", *MULTIPLIER_FIELDS, *OPTIMIZER_FIELDS)


class TuneConfigError(SweepConfigError):
    """A tune file that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchConfig(_Strict):
    """Stage 1: the search at the base shape (all recipes coincide there, so it runs once)."""

    strategy: Literal["oat", "tpe", "halving"] = Field(
        "halving", description="oat: one-at-a-time scans of each multiplier around the current best, combined, "
                           "in rounds; tpe: Optuna's TPE over all of them at once, same budget; halving (default): TPE's "
                           "points with successive halving on their learning curves (as many trials started as tpe trains, most "
                           "stopped early: 0.59x tpe's FLOPs in B1b)")
    lr: Range = Field(default_factory=lambda: Range(start=-12, stop=-4, step=1),
                      description="log2 grid of the first LR scan, with every multiplier at 1")
    multipliers: list[str] = Field(default_factory=lambda: list(DEFAULT_MULTIPLIERS),
                                   description="named multipliers to tune (sweep axis names); left out: the "
                                               "defaults and the optimizer's own constants (muon_lr_ratio for "
                                               "muon and dion, eps_mult for shampoo)")
    span: float = Field(2.0, gt=0, description="oat: each scan covers center x 2^-span .. 2^span")
    step: float = Field(1.0, gt=0, description="oat: scan step, octaves")
    lr_span: float = Field(2.0, gt=0, description="oat: octaves of LR scanned around the center in each round")
    rounds: int = Field(2, ge=1, le=6, description="oat: rounds of scans")
    n_trials: int | None = Field(None, gt=0, description="tpe: trials (default: the oat budget); halving: "
                                                         "trials started (default: the oat budget too)")
    reduction_factor: int = Field(3, ge=2, description="halving: a trial goes on past a rung only if its loss "
                                                       "there is in the best 1 / reduction_factor of the trials "
                                                       "that reached it")
    rungs: int = Field(2, ge=1, le=4, description="halving: rungs before full length, at steps / "
                                                  "reduction_factor^k (k = rungs .. 1)")
    bound: float = Field(3.0, gt=0, description="tpe: each multiplier searched over 2^-bound .. 2^bound")
    finalists: int = Field(3, ge=1, description="best distinct settings re-run on fresh seeds (plus the defaults)")
    seeds: int = Field(2, ge=2, description="fresh seeds per finalist")
    seed: int = Field(0, ge=0, description="seed of the search trials; finalists use the next `seeds` seeds")

    @field_validator("multipliers")
    @classmethod
    def _multipliers(cls, v: list[str]) -> list[str]:
        valid = [*MULTIPLIER_FIELDS, *(f"{k}.{r}" for k in ("role_lr", "role_init")
                                      for r in ("embedding", "hidden", "readout", "vector")), *OPTIMIZER_FIELDS]
        for name in v:
            field = field_name(name)  # raises with a suggestion
            if field not in (*MULTIPLIER_FIELDS, *OPTIMIZER_FIELDS) or name.startswith("log2_"):
                raise ValueError(_unknown("search.multipliers", name, valid))
        if len(set(v)) != len(v):
            raise ValueError("search.multipliers lists a multiplier twice")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: Range) -> Range:
        if v.start is None:
            raise ValueError("search.lr is a grid: give {start, stop, step} in log2 units")
        if len(v.values()) < 3:
            raise ValueError("search.lr needs 3 or more points")
        return v


class VerifyConfig(_Strict):
    """Stage 2: a short LR scan at every proxy width, per recipe, to verify that the optimum transferred."""

    span: float = Field(0.5, gt=0, description="octaves scanned on each side of the transferred optimum")
    step: float = Field(0.5, gt=0, description="scan step, octaves")
    seeds: int = Field(2, ge=1)
    max_extend: int = Field(3, ge=0, description="times the scan may grow by one step when an optimum sits on "
                                                 "its edge")
    race: bool = Field(True, description="drop a recipe whose loss is clearly behind (beyond the seed noise) at "
                                         "the second-largest width; at the largest, train the others at the "
                                         "transferred LR and scan the LR for the lowest only")
    one_seed_points: bool = Field(False, description="train the points of an LR scan least likely to matter (the "
                                                     "largest width's neighbours of the probe, points gained on an "
                                                     "edge) on the first seed first, and the others only within the "
                                                     "seed noise of the best: fewer FLOPs, but the optimum's interval "
                                                     "at that width rests on fewer runs (docs/tuning.md)")
    widest_scan: Literal["auto", "always"] = Field(
        "auto", description="auto: at the largest width, train the transferred LR's neighbours only when the "
                            "narrower widths leave doubt about where the optimum is there (fewer than 3 of them "
                            "with an inner optimum, a transfer verdict other than PASS, their line's 90% "
                            "interval at the largest width reaching beyond the scan, or the largest width's loss at "
                            "the transferred LR clearly above the next narrower's best); always: scan it every time")


class TargetConfig(_Strict):
    """The run the settings are for: its shape, its training tokens in total, its batch."""

    width: int = Field(..., gt=0)
    depth: int | None = Field(None, gt=0, description="default: the base depth")
    tokens: float | None = Field(None, gt=0, description="training tokens in total (default: the proxies')")
    batch: int | None = Field(None, gt=0, description="sequences per step (default: the optimal batch tune "
                                                      "finds, else the proxies')")
    batch_tokens: float | None = Field(None, gt=0, description="tokens per step, instead of batch")

    @model_validator(mode="after")
    def _one_batch(self) -> TargetConfig:
        if self.batch is not None and self.batch_tokens is not None:
            raise ValueError("target: give batch (sequences per step) or batch_tokens (tokens per step), not both")
        return self


class HorizonConfig(_Strict):
    """Stage 3, at the base width only (cheap): LR scans at longer horizons and larger batches than the proxies',
    for the laws LR*(D, B) and B_opt(D); optionally a weight-decay scan at the shortest and the longest horizon
    (the AdamW timescale, tuned at one and checked at the other). See docs/tuning.md, "Horizon, batch and weight
    decay"."""

    run: bool | None = Field(None, description="None: run it when the target's tokens or batch differ from the "
                                               "proxies'; false: use the published rules instead (named, marked "
                                               "not measured)")
    horizons: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0],
                                  description="training tokens, as multiples of the proxies'")
    batches: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0],
                                 description="batch sizes, as multiples of the proxies' (the steps follow: "
                                             "tokens / batch)")
    span: float = Field(1.0, gt=0, description="octaves of LR scanned on each side of the expected optimum")
    step: float = Field(0.5, gt=0, description="scan step, octaves")
    seeds: int = Field(2, ge=1)
    weight_decay: Range | None = Field(None, description="log2 grid of the weight decay, scanned at the shortest "
                                                         "and the longest horizon (proxies' batch) at their "
                                                         "optimal LR")
    min_steps: int = Field(10, ge=1, description="a (horizon, batch) with fewer steps is left out")
    noise_scale: bool = Field(True, description="measure the gradient noise scale (the critical batch) at every "
                                                "horizon, one run per seed at its best LR, so the batch moves the "
                                                "LR by the critical-batch law instead of a power law that stops at "
                                                "the largest batch measured")

    @field_validator("horizons", "batches")
    @classmethod
    def _multiples(cls, v: list[float]) -> list[float]:
        if not v or any(not x > 0 for x in v):
            raise ValueError("give one or more positive multiples")
        if len(set(v)) != len(v):
            raise ValueError("a multiple is listed twice")
        return sorted(float(x) for x in v)

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: Range | None) -> Range | None:
        if v is not None and (v.start is None or len(v.values()) < 3):
            raise ValueError("horizon.weight_decay is a log2 grid of 3 or more points: {start, stop, step}")
        return v


class TuneConfig(TrainingFileConfig):
    """A whole tuning run: what to train, the proxies, the candidates, how to search and verify."""

    _what: ClassVar[str] = "tune"
    _error: ClassVar[type[ValueError]] = TuneConfigError
    _sections: ClassVar[dict[str, type[BaseModel]]] = {"search": SearchConfig, "verify": VerifyConfig,
                                                       "target": TargetConfig, "horizon": HorizonConfig,
                                                       "executor": ExecutorConfig,
                                                       "program": ProgramConfig}

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    program: ProgramConfig | None = Field(None, description="your own training code instead of the built-in "
                                                            "trainer (see docs/programs.md)")
    model: str = "gpt"
    model_options: dict[str, Any] = Field(default_factory=dict)
    model_structure: ModelStructure = Field(default_factory=ModelStructure,
                                            description="how proxytune reads the model (from a model: mapping)")
    data: str = "stdlib"
    data_options: dict[str, Any] = Field(default_factory=dict)
    optimizer: str = "adamw"
    base: dict[str, int] = Field(default_factory=lambda: {"width": 32, "depth": 2})
    widths: list[int] | None = Field(None, description="wider proxies (default: 2x, 4x and 8x the base)")
    depths: list[int] | None = Field(None, description="deeper proxies (at the base width), if depth transfers too")
    recipes: list[str] | None = Field(None, description="candidate recipes (default: mup, sp-perlayer; "
                                                        "+ completep when depths are given)")
    target: TargetConfig | None = None
    horizon: HorizonConfig = Field(default_factory=HorizonConfig)
    train: dict[str, Any] = Field(default_factory=dict, description="fixed TrainConfig fields of every trial")
    search: SearchConfig = Field(default_factory=SearchConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    executor: ExecutorConfig = Field(default_factory=lambda: ExecutorConfig(workers=2, threads=1, batch=8))
    storage: str | None = Field(None, description="None: journal files under runs_dir/name; or postgresql://...")
    runs_dir: str = "runs"

    @field_validator("base")
    @classmethod
    def _base(cls, v: dict[str, int]) -> dict[str, int]:
        check_base(v)
        if "width" not in v:
            raise ValueError("base.width is required: the smallest proxy's width")
        if any(not isinstance(x, int) or x <= 0 for x in v.values()):
            raise ValueError("base width and depth must be positive integers")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_train(v, _OWNED, "by tune itself (or at the top level of the file)")

    @field_validator("recipes")
    @classmethod
    def _recipes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("recipes: give at least one candidate")
        for r in v:
            if r not in RECIPES:
                close = difflib.get_close_matches(r, list(RECIPES), n=1)
                raise ValueError(f"unknown recipe {r!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                                 + f" (valid: {', '.join(RECIPES)})")
        unit = [r for r in v if RECIPES[r].unit]
        if unit and len(v) > 1:
            raise ValueError(f"{unit[0]} is absolute (its LR and init are not the others' at the base, "
                             f"so stage 1 cannot be shared): tune it alone, recipes: [{unit[0]}], with a search.lr "
                             "grid around 0 (its optimum is near lr = 1)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _optimizer_constants(self) -> TuneConfig:
        """The optimizer's own constants join the default search (not a program's: it builds its own optimizer);
        one named for an optimizer that has no such constant is refused."""
        extra = OPTIMIZER_MULTIPLIERS.get(self.optimizer, ()) if self.program is None else ()
        if "multipliers" not in self.search.model_fields_set and extra:
            self.search.multipliers = [*self.search.multipliers, *extra]
        for name in self.search.multipliers:
            if name in OPTIMIZER_FIELDS and name not in optimizer_fields(self.optimizer):
                raise ValueError(f"search.multipliers: {optimizer_field_error(name, self.optimizer)}")
        if (self.optimizer in MATRIX_STEP_OPTIMIZERS
                and {"muon_lr_ratio", "role_lr.hidden"} <= set(self.search.multipliers)):
            raise ValueError(f"search.multipliers: under {self.optimizer}, role_lr.hidden and muon_lr_ratio both "
                             f"scale the LR of every {self.optimizer} matrix (the hidden matrices), so only their "
                             "product is measured: search one of them")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        bw = self.base_width
        widths = self.proxy_widths
        if any(w <= bw for w in widths):
            raise ValueError(f"widths must all be larger than the base width {bw}, got {widths}")
        if len(widths) < 2:
            raise ValueError("give 2 or more wider proxies (widths): the transfer is verified at 2 or more widths")
        if self.depths is not None and any(d <= self.base_depth for d in self.depths):
            raise ValueError(f"depths must all be larger than the base depth {self.base_depth}")
        # every trial must make a valid TrainConfig: check one now, before anything is written
        TrainConfig(**self.train_fields(self.candidates[0]), width=bw, depth=self.base_depth, lr=1e-3)
        check_program_leaves_model(self)
        return self

    # ------------------------------------------------------------------ derived
    @property
    def base_width(self) -> int:
        return int(self.base["width"])

    @property
    def base_depth(self) -> int:
        return int(self.base.get("depth", self.train.get("depth", TrainConfig.model_fields["depth"].default)))

    @property
    def proxy_widths(self) -> list[int]:
        return sorted(self.widths) if self.widths else [self.base_width * k for k in (2, 4, 8)]

    @property
    def proxy_depths(self) -> list[int]:
        return sorted(self.depths) if self.depths else []

    @property
    def candidates(self) -> list[str]:
        if self.recipes:
            return list(self.recipes)
        return ["mup", "sp-perlayer"] + (["completep"] if self.depths or self._target_depth_differs() else [])

    def _target_depth_differs(self) -> bool:
        return self.target is not None and self.target.depth is not None and self.target.depth != self.base_depth

    def train_fields(self, recipe: str) -> dict[str, Any]:
        """TrainConfig fields shared by every trial of ``recipe`` (no multipliers, lr, width or seed)."""
        fields = {k: v for k, v in self.train.items() if k != "depth"}
        fields.update(model=self.model, model_options=self.model_options, model_structure=self.model_structure,
                      data=self.data, data_options=self.data_options, recipe=recipe, optimizer=self.optimizer,
                      base_width=self.base_width, base_depth=self.base_depth)
        if self.executor.kind != "inline":
            fields["threads"] = self.executor.threads
        return fields

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def identity(self) -> dict[str, Any]:
        """What the stored trials depend on (everything but the executor and where things are stored)."""
        return structure_identity(program_identity(self.model_dump(mode="json",
                                                                   exclude={"executor", "storage", "runs_dir"})))
