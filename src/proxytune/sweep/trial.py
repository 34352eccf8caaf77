"""``Trial``: what a user's own training code sees of one sweep point.

A sweep with ``program: {function: mytrain:run}`` calls ``run(trial)`` in a
worker process; one with ``program: {command: [...]}`` starts the command
with ``PROXYTUNE_TRIAL`` set to a small JSON file, and ``Trial.current()``
inside the script reads it. Either way the program gets the same object:

- ``trial.params``: the HP values of this point (``log2_`` axes already
  resolved: ``log2_lr: -7`` gives ``params["lr"] == 2**-7``), over the
  sweep's fixed ``train:`` and ``program.params`` values;
- ``trial.width`` / ``trial.depth`` / ``trial.base_width`` / ``trial.base_depth``;
- ``trial.parameterize(model, base=base)``: the sweep's recipe and optimizer,
  with the point's named multipliers, applied to the user's model;
- ``trial.report(step, loss)``: stored as the trial's curve, and the pruner's
  input (raises :class:`TrialPruned` when the sweep's pruner stops it);
- ``trial.finish(loss)`` (a command's final result; a function returns it).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..plan import Plan, parameterize
from ..train.config import MULTIPLIER_FIELDS, TrainConfig
from .errors import TrialPruned  # (proxytune.sweep.trial.TrialPruned: the name users import it by)

if TYPE_CHECKING:
    import torch.nn as nn

ENV_VAR = "PROXYTUNE_TRIAL"
#: metrics a program may set beside its losses; the analysis reads them (laws over params and tokens, cost)
KNOWN_METRICS = ("tokens", "flops", "n_params", "train_loss", "steps")


class Trial:
    """One sweep point, as handed to a user's training code. Build it with :meth:`current` in a script."""

    def __init__(self, info: dict[str, Any], channel: Channel) -> None:
        self.info = info
        self._channel = channel
        self.metrics: dict[str, float] = {}
        self.reports: list[dict[str, float]] = []
        self.final: float | None = None
        self.started = time.time()

    # ------------------------------------------------------------- what it is
    @property
    def sweep(self) -> str:
        """The sweep's name."""
        return self.info["sweep"]

    @property
    def number(self) -> int:
        """The trial's number in the sweep's store (unique, increasing)."""
        return int(self.info["number"])

    @property
    def point(self) -> dict[str, Any]:
        """The sweep point as the axes give it (``{"width": 256, "log2_lr": -7, "seed": 0}``)."""
        return dict(self.info["point"])

    @property
    def params(self) -> dict[str, Any]:
        """The HP values of this trial: fixed values with the point applied, ``log2_`` axes resolved."""
        return dict(self.info["params"])

    @property
    def recipe(self) -> str:
        return self.info["recipe"]

    @property
    def optimizer_name(self) -> str:
        return self.info["optimizer"]

    @property
    def width(self) -> int | None:
        return self.info.get("width")

    @property
    def depth(self) -> int | None:
        return self.info.get("depth")

    @property
    def base_width(self) -> int | None:
        return self.info.get("base_width")

    @property
    def base_depth(self) -> int | None:
        return self.info.get("base_depth")

    @property
    def seed(self) -> int:
        return int(self.info["params"].get("seed", 0))

    @property
    def dir(self) -> Path:
        """A directory of this trial's own (logs, checkpoints); kept after the trial ends."""
        return Path(self.info["dir"])

    @property
    def rank(self) -> int:
        """The process rank under torchrun (``RANK``); only rank 0 writes reports and results."""
        return int(os.environ.get("RANK", "0"))

    # ------------------------------------------------------------ parameterize
    def multipliers(self) -> Any:
        """The point's named multipliers (``role_lr.*``, ``output_mult``, ``attn_mult``...) as a
        :class:`proxytune.Multipliers`; all 1 when the sweep sets none."""
        fields = {k: v for k, v in self.info["params"].items() if k in MULTIPLIER_FIELDS}
        return TrainConfig(**fields).multipliers()

    def parameterize(self, model: nn.Module, base: nn.Module, **options: Any) -> Plan:
        """``proxytune.parameterize(model, base, recipe=<sweep's>, optimizer=<sweep's>)`` with this point's
        multipliers; ``options`` are passed on (and may override those). The plan of each shape is saved in
        the sweep's ``plans/`` folder, and the model's parameter count is stored with the trial."""
        kwargs: dict[str, Any] = {"recipe": self.recipe, "optimizer": self.optimizer_name,
                                  "multipliers": self.multipliers()}
        if "seq_len" in self.info["params"]:
            kwargs["seq_len"] = self.info["params"]["seq_len"]
        kwargs.update(options)
        plan = parameterize(model, base, **kwargs)
        self.metrics.setdefault("n_params", float(sum(p.numel() for p in model.parameters())))
        if self.rank == 0 and self.info.get("plans_dir"):
            _save_plan(plan, Path(self.info["plans_dir"]), self.width, self.depth)
        return plan

    # --------------------------------------------------------------- results
    def report(self, step: int, value: float, **metrics: float) -> None:
        """Store ``value`` (the validation loss) at ``step``; raises :class:`TrialPruned` when the pruner
        says stop. Extra metrics (``train_loss=...``) are stored with the point of the curve. Steps are whole
        numbers from 0 up, each larger than the last (ValueError otherwise); values are real numbers."""
        try:
            step = check_step(step, self.reports[-1]["step"] if self.reports else None)
        except ValueError as exc:
            raise ValueError(f"trial.report: {exc}") from None
        entry = {"step": step, "val_loss": _num(value, "trial.report: the value"),
                 **{k: _num(v, f"trial.report: {k}") for k, v in metrics.items()}}
        self.reports.append(entry)
        if self._channel.report(entry, write=self.rank == 0):
            raise TrialPruned(f"pruned at step {step}")

    def should_prune(self) -> bool:
        """The pruner's answer for the last report (also given by :meth:`report` raising)."""
        return self._channel.pruned

    def set(self, **metrics: float) -> None:
        """Numbers the analysis uses if the program knows them: ``tokens`` trained on, ``flops``,
        ``n_params`` (set by :meth:`parameterize`), ``train_loss``, ``steps``."""
        unknown = set(metrics) - set(KNOWN_METRICS)
        if unknown:
            raise ValueError(f"Trial.set: unknown metric(s) {sorted(unknown)}; known: {', '.join(KNOWN_METRICS)}")
        self.metrics.update({k: _num(v, f"Trial.set: {k}") for k, v in metrics.items()})

    def finish(self, value: float, **metrics: float) -> None:
        """The trial's result (its final validation loss). A ``function`` program may return it instead."""
        self.set(**metrics)
        self.final = _num(value, "trial.finish: the loss")
        self._channel.finish(self.final, self.metrics, write=self.rank == 0)

    # ------------------------------------------------------------ in a script
    @classmethod
    def current(cls) -> Trial:
        """The trial this process runs, inside a ``program.command`` script (from ``$PROXYTUNE_TRIAL``)."""
        path = os.environ.get(ENV_VAR)
        if not path:
            raise RuntimeError(f"Trial.current(): ${ENV_VAR} is not set; this script was not started by a "
                               "proxytune sweep (program.command)")
        info = json.loads(Path(path).read_text())
        return cls(info, FileChannel(info))

    def __repr__(self) -> str:
        return f"Trial(sweep={self.sweep!r}, number={self.number}, point={self.point})"


# ------------------------------------------------------------------ channels
class Channel:
    """How reports reach the sweep's store: directly (in-process) or through files (a command)."""

    pruned = False

    def report(self, entry: dict[str, float], write: bool) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self, value: float, metrics: dict[str, float], write: bool) -> None:
        pass


class DirectChannel(Channel):
    """In the worker process: ``should_prune`` answers straight from the pruner."""

    def __init__(self, should_prune: Callable[[int, float], bool] | None) -> None:
        self._should_prune = should_prune

    def report(self, entry: dict[str, float], write: bool) -> bool:
        if self._should_prune is not None:
            self.pruned = self._should_prune(int(entry["step"]), entry["val_loss"])
        return self.pruned


class FileChannel(Channel):
    """In a command's process: reports are JSON lines appended to a file the worker reads.

    With a pruner, each report waits (up to ``wait`` seconds) for the worker's decision, so every rank of a
    multi-process program gets the same answer at the same report.
    """

    def __init__(self, info: dict[str, Any], wait: float = 60.0) -> None:
        self.reports = Path(info["reports"])
        self.decisions = Path(info["decisions"])
        self.pruning = bool(info.get("pruning"))
        self.wait = wait
        self.n = 0

    def _append(self, record: dict[str, Any]) -> None:
        with self.reports.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def report(self, entry: dict[str, float], write: bool) -> bool:
        self.n += 1
        if write:
            self._append({"report": entry})
        if not self.pruning:
            return False
        deadline = time.time() + self.wait
        while time.time() < deadline:
            if self.decisions.exists():
                lines = self.decisions.read_text().splitlines()
                if len(lines) >= self.n:
                    try:
                        self.pruned = bool(json.loads(lines[self.n - 1])["prune"])
                        return self.pruned
                    except (ValueError, KeyError):
                        pass  # a line being written: read again
            time.sleep(0.01)
        return False  # the worker is gone or slow: keep training (a stale trial is re-queued anyway)

    def finish(self, value: float, metrics: dict[str, float], write: bool) -> None:
        if write:
            self._append({"final": value, "metrics": metrics})


def as_real(v: Any) -> float | None:
    """``v`` as a float when it is a real number (an int, a float, a numpy or torch real scalar, or a one-element
    array or tensor of a real dtype); None for anything else. Stricter than ``float()``: a bool, a string such as
    ``"1.5"``, None or a complex number is a bug in the program, not a loss."""
    if v is None or isinstance(v, (bool, str, bytes)):
        return None
    if isinstance(v, numbers.Real):  # int, float, numpy ints and floats (numpy bools are not Real)
        return float(v)
    if hasattr(v, "dtype") and callable(getattr(v, "item", None)):  # numpy / torch / jax scalars and arrays
        try:
            if math.prod(tuple(getattr(v, "shape", ()))) != 1:
                return None
            x = v.item()  # a Python bool, int, float or complex: judged like one
        except Exception:  # noqa: BLE001 - an array-like we cannot read is not a number
            return None
        return None if hasattr(x, "dtype") else as_real(x)
    return None


def check_step(step: Any, last: int | None) -> int:
    """A reported step as an int: a whole number, not negative, after ``last`` (the previous report's step);
    else ValueError. The curve, ``steps_done`` and the pruner all assume steps that only go up."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        s = int(step)  # exact, also past 2**53
    else:
        x = as_real(step)
        if x is None or not math.isfinite(x) or not x.is_integer():
            raise ValueError(f"step {show_value(step)} is not a whole number")
        s = int(x)
    if s < 0:
        raise ValueError(f"step {s} is negative; steps count from 0")
    if last is not None and s <= last:
        raise ValueError(f"step {s} is not after the last reported step {last}; steps must increase")
    return s


def show_value(v: Any, limit: int = 200) -> str:
    """``repr(v)`` with its type, cut short (a returned tensor or model can print for pages)."""
    text = repr(v)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{text} ({type(v).__name__})"


def _num(v: Any, what: str) -> float:
    x = as_real(v)
    if x is None:
        raise ValueError(f"{what} is {show_value(v)}, not a number; give a float")
    return x


def _save_plan(plan: Plan, folder: Path, width: int | None, depth: int | None) -> None:
    path = folder / f"width{width}-depth{depth}.json"
    if path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    plan.save(tmp)  # Plan.load reads it back
    os.replace(tmp, path)


def is_finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
