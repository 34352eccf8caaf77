"""Experiment trackers for sweeps: every finished trial as one TensorBoard run and one MLflow run.

``tracking:`` in a sweep file turns them on::

    tracking: {tensorboard: true, mlflow: true}

The sweep runner calls :meth:`Trackers.sync` about once a second and once at
the end. A sync looks for trials that finished (complete, diverged, pruned or
failed) and were not logged yet, and logs each of them once to every enabled
tracker: a trial appears when it finishes, not while it trains.

Exactly once, across calls, processes and crashes:

- a ledger, ``<run_dir>/tracking.json``, holds for every destination the
  trials already logged there (trial number and start time, so a sweep
  recreated under the same name is not mistaken for the old one). It is
  written to a temporary file and renamed, and it records successes only;
- a crash between logging a trial and writing the ledger is caught by the
  tracker itself: a TensorBoard run directory is written elsewhere and
  renamed into place whole, with a ``trial.json`` naming the trial; an MLflow
  run carries the tags ``proxytune.sweep``, ``proxytune.trial`` and
  ``proxytune.trial_start``, and is searched for before a new one is created
  (a run left ``RUNNING`` by a crash is deleted and logged again);
- ``<run_dir>/tracking.lock`` lets one process at a time sync a sweep.

A tracker that fails (a server down, a full disk) never stops the sweep: the
failure is warned about once, with its reason, and the trials not logged are
tried again on a later sync (after 5 s, doubling up to 5 min while it keeps
failing; ``sync(store, force=True)`` tries at once and has no time limit).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import shutil
import socket
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from .errors import SweepConfigError
# re-exported for one release; import from proxytune.sweep.errors / proxytune.sweep.schema
from .errors import TrackingWarning  # noqa: F401
from .schema import TrackingConfig  # noqa: F401

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from .store import SweepStore

LEDGER = "tracking.json"
LOCK = "tracking.lock"
TMP_DIR = ".tracking-tmp"  # in run_dir, outside every TensorBoard logdir: TensorBoard never sees a half run
TRIAL_FILE = "trial.json"  # in each TensorBoard run directory: which trial it holds
MAX_CURVE_POINTS = 1000  # train_loss_step is subsampled to at most this many points
FINAL_METRICS = ("final_val_loss", "final_train_loss", "tokens", "flops", "n_params", "wall_time", "steps_done")
CONFIG_PARAMS = ("recipe", "optimizer", "width", "depth", "lr")  # logged as params beside the point's axes
ERROR_TAIL = 2000
_SKIPPED = ("requeued", "duplicate", "surplus")  # bookkeeping trials: their point runs again in another trial
_MLFLOW_STATUS = {"complete": "FINISHED", "diverged": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


# ---------------------------------------------------------------------------- trackers
class Trackers:
    """Sends finished trials of one sweep to the configured trackers, each trial exactly once.

    ``run_dir``: the sweep's directory (ledger, lock, default destinations).
    Raises :class:`~proxytune.sweep.config.SweepConfigError` when an enabled
    tracker's package is not installed.
    """

    def __init__(self, cfg: TrackingConfig, run_dir: Any, sweep_name: str, recipe: str, *,
                 retry_seconds: float = 5.0, budget_seconds: float = 10.0) -> None:
        self.cfg = cfg
        self.run_dir = Path(os.path.abspath(Path(run_dir).expanduser()))
        self.sweep = sweep_name
        self.recipe = recipe
        self.retry_seconds = retry_seconds
        self.budget_seconds = budget_seconds
        self.targets: list[_Target] = []
        if cfg.tensorboard:
            _require("tensorboard", "tensorboard")
            root = (self.run_dir / "tensorboard" if cfg.tensorboard is True
                    else Path(os.path.abspath(Path(cfg.tensorboard).expanduser())) / sweep_name)
            self.targets.append(_TensorBoard(root, self.run_dir / TMP_DIR))
        if cfg.mlflow:
            _require("mlflow", "mlflow")
            uri, file_store = mlflow_uri(cfg.mlflow, self.run_dir)
            artifacts = self.run_dir / "mlartifacts" if cfg.mlflow is True else None
            self.targets.append(_MLflow(uri, cfg.experiment or sweep_name, sweep_name, file_store, artifacts))
        self._logged: dict[str, dict[str, str]] = _read_ledger(self.run_dir / LEDGER)
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._warned: dict[str, str] = {}
        self._cleaned = False

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / LEDGER

    def destinations(self) -> dict[str, str]:
        """Where each enabled tracker writes: ``{"tensorboard": logdir, "mlflow": tracking URI}``."""
        return {t.name: t.where for t in self.targets}

    def sync(self, store: SweepStore, *, force: bool = False) -> int:
        """Log every finished trial not logged yet; returns how many trials were logged now.

        A trial counts once however many trackers got it. Cheap when nothing
        new finished (no import, no connection, no file written). One call
        spends at most ``budget_seconds`` logging (the rest waits for the next
        call) and skips a tracker that failed in the last seconds; ``force``
        (the sweep's last sync) lifts both and waits for another process's sync.
        """
        if not self.targets:
            return 0
        finished = [t for t in store.trials() if _finished(t)]
        now = time.monotonic()
        active = [tg for tg in self.targets
                  if self._pending(tg, finished) and (force or now >= self._retry_at.get(tg.key, 0.0))]
        if not active:
            return 0
        logged_now: set[int] = set()
        try:
            with _locked(self.run_dir / LOCK, wait=60.0 if force else 0.0) as got:
                if not got:
                    return 0  # another process is syncing this sweep
                self._merge(_read_ledger(self.ledger_path))
                if not self._cleaned:
                    shutil.rmtree(self.run_dir / TMP_DIR, ignore_errors=True)  # a crashed sync's half-written runs
                    self._cleaned = True
                deadline = None if force else now + self.budget_seconds
                records: dict[int, _Record] = {}
                for tg in active:
                    self._export(tg, finished, records, logged_now, deadline)
        except OSError as exc:  # the run directory itself (lock, ledger): warn, never stop the sweep
            self._warn("ledger", f"tracking: cannot write {self.run_dir / LEDGER}", exc, stacklevel=3)
        else:
            self._warned.pop("ledger", None)
        return len(logged_now)

    def _export(self, tg: _Target, finished: list[FrozenTrial], records: dict[int, _Record],
                logged_now: set[int], deadline: float | None) -> None:
        done = self._logged.setdefault(tg.key, {})
        dirty = False
        saved = time.monotonic()
        try:
            pending = self._pending(tg, finished)
            if pending:
                tg.setup()
            for i, t in enumerate(pending):
                if i and deadline is not None and time.monotonic() > deadline:
                    break  # at least one trial per call, so a backlog always shrinks
                rec = records.get(t.number)
                if rec is None:
                    rec = records[t.number] = _describe(t, self.sweep, self.recipe)
                if tg.export(rec):
                    logged_now.add(t.number)
                done[str(t.number)] = rec.key
                dirty = True
                if time.monotonic() - saved > 1.0:
                    self._save()
                    dirty, saved = False, time.monotonic()
        except Exception as exc:  # noqa: BLE001 - any tracker failure: warn, keep the sweep running, retry later
            self._failed(tg, exc)
        else:
            self._failures.pop(tg.key, None)
            self._retry_at.pop(tg.key, None)
            self._warned.pop(tg.key, None)
        finally:
            if dirty:
                self._save()  # an OSError here reaches sync(): warned; the trackers' own checks cover the gap

    def _pending(self, tg: _Target, finished: list[FrozenTrial]) -> list[FrozenTrial]:
        done = self._logged.get(tg.key, {})
        return [t for t in finished if done.get(str(t.number)) != _trial_key(t)]

    def _merge(self, disk: dict[str, dict[str, str]]) -> None:
        for dest, trials in disk.items():
            mine = self._logged.setdefault(dest, {})
            for number, key in trials.items():
                mine.setdefault(number, key)

    def _save(self) -> None:
        _write_ledger(self.ledger_path, self.sweep, self._logged)

    def _failed(self, tg: _Target, exc: BaseException) -> None:
        tg.reset()
        n = self._failures[tg.key] = self._failures.get(tg.key, 0) + 1
        self._retry_at[tg.key] = time.monotonic() + min(300.0, self.retry_seconds * 2 ** (n - 1))
        self._warn(tg.key, f"tracking.{tg.name}: could not log trials to {tg.where}", exc, stacklevel=5)

    def _warn(self, key: str, what: str, exc: BaseException, stacklevel: int) -> None:
        """Warn about a failure once (again only when its reason changes or after a success); ``stacklevel``
        points at sync's caller."""
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        if self._warned.get(key) != reason:
            self._warned[key] = reason
            warnings.warn(f"{what}: {reason}. The sweep goes on; the trials not logged are tried again later.",
                          TrackingWarning, stacklevel=stacklevel)


def _require(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SweepConfigError(f"tracking.{name} needs the {module} package: pip install 'proxytune[tracking]'")


# ---------------------------------------------------------------------------- what a trial logs
@dataclass
class _Record:
    """One finished trial, as every tracker logs it."""

    number: int
    key: str  # the trial's start time: tells this trial from one of an older sweep with the same name
    name: str  # t0007-width64-log2_lr-7
    status: str
    point: dict[str, Any]
    params: dict[str, Any]  # point axes, then recipe/optimizer/width/depth/lr from the config
    tags: dict[str, str]
    curves: dict[str, list[tuple[int, float, float | None]]] = field(default_factory=dict)  # (step, value, wall)
    finals: dict[str, float] = field(default_factory=dict)
    final_step: int = 0
    start: float | None = None  # unix seconds
    end: float | None = None
    error: str = ""


def _trial_key(t: FrozenTrial) -> str:
    when = t.datetime_start or t.datetime_complete
    return when.isoformat() if when is not None else ""


def _trial_status(t: FrozenTrial) -> str:
    status = t.user_attrs.get("status")
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.COMPLETE:
        return status if status in ("complete", "diverged", "pruned") else "complete"
    return status if status in _SKIPPED else "failed"


def _finished(t: FrozenTrial) -> bool:
    return t.state.is_finished() and _trial_status(t) not in _SKIPPED


def run_name(number: int, point: dict[str, Any]) -> str:
    """A readable, file-safe run name: ``t0007-width64-log2_lr-7``."""
    parts = [f"t{number:04d}"] + [f"{axis}{_short(value)}" for axis, value in point.items()]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))[:150]


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:g}"
    return str(v)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # "inf" and "nan" as stored by RunResult.to_dict
        except ValueError:
            return None
    return None


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def _describe(t: FrozenTrial, sweep: str, recipe: str) -> _Record:
    """What the trackers log for one finished trial."""
    ua = t.user_attrs
    status = _trial_status(t)
    point = dict(ua.get("point") or {})
    config = ua.get("config") if isinstance(ua.get("config"), dict) else {}
    result = ua.get("result") if isinstance(ua.get("result"), dict) else {}
    start = t.datetime_start.timestamp() if t.datetime_start else None
    end = t.datetime_complete.timestamp() if t.datetime_complete else None

    params = {k: _scalar(v) for k, v in point.items()}
    for k in CONFIG_PARAMS:
        if k not in params and config.get(k) is not None:
            params[k] = _scalar(config[k])
    params.setdefault("recipe", recipe)

    tags = {"proxytune.sweep": sweep, "proxytune.trial": str(t.number), "proxytune.trial_start": _trial_key(t),
            "proxytune.point": str(ua.get("point_id") or json.dumps(point, sort_keys=True)),
            "proxytune.stage": str(ua.get("stage", 0)), "proxytune.status": status,
            "proxytune.recipe": str(params["recipe"])}
    width = point.get("width", config.get("width"))
    if width is not None:
        tags["proxytune.width"] = str(width)
    error = str(ua.get("error") or "")
    if error:
        tags["proxytune.error"] = error[-ERROR_TAIL:]
    if result.get("diverged_step") is not None:
        tags["proxytune.diverged_step"] = str(result["diverged_step"])
    if result.get("reason"):
        tags["proxytune.reason"] = str(result["reason"])[-ERROR_TAIL:]

    rec = _Record(number=t.number, key=_trial_key(t), name=run_name(t.number, point), status=status, point=point,
                  params=params, tags=tags, start=start, end=end, error=error)
    for e in result.get("evals") or []:
        at = _number(e.get("step")) if isinstance(e, dict) else None
        if at is None or not math.isfinite(at):
            continue
        step = int(at)
        since = _number(e.get("time"))
        wall = start + since if start is not None and since is not None and math.isfinite(since) else None
        for k, v in e.items():
            value = _number(v)
            if k != "step" and value is not None:
                rec.curves.setdefault(str(k), []).append((step, value, wall))
    losses = [_number(v) for v in result.get("train_losses") or []]
    if losses:
        n = len(losses)
        stride = math.ceil(n / MAX_CURVE_POINTS)
        seconds = _number(result.get("wall_time"))
        keep = sorted(set(range(0, n, stride)) | {n - 1})
        rec.curves["train_loss_step"] = [
            (i + 1, losses[i], start + seconds * (i + 1) / n if start is not None and seconds is not None else None)
            for i in keep if losses[i] is not None]
    for k in FINAL_METRICS:
        value = _number(result.get(k))
        if value is not None:
            rec.finals[k] = value
    steps = _number(result.get("steps_done"))
    rec.final_step = int(steps) if steps is not None and math.isfinite(steps) else len(losses)
    return rec


def _markdown(rec: _Record, sweep: str) -> str:
    lines = [f"**trial {rec.number}** of sweep `{sweep}`: **{rec.status}**", "",
             "| param | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rec.params.items()]
    if rec.error:
        lines += ["", "error (tail):", "", *("    " + line for line in rec.error[-ERROR_TAIL:].splitlines())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- destinations
class _Target:
    name = ""
    key = ""  # the ledger's key: tracker and destination
    where = ""

    def setup(self) -> None:
        """Imports and connections, once there is something to log."""

    def export(self, rec: _Record) -> bool:
        """Log one trial; False when the tracker already had it (a crash before the ledger was written)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget cached connection state after a failure."""


class _TensorBoard(_Target):
    """One run directory per trial under ``root``: scalars, hparams (session start info) and a text summary."""

    name = "tensorboard"

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.key = f"tensorboard:{root}"
        self.where = str(root)
        self._writer: Any = None
        self._hparams: Any = None

    def setup(self) -> None:
        if self._writer is None:
            # optional dependency (proxytune[tracking]), imported once a trial is logged
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            self._writer, self._hparams = SummaryWriter, hparams
        self.root.mkdir(parents=True, exist_ok=True)

    def export(self, rec: _Record) -> bool:
        ident = {"sweep": rec.tags["proxytune.sweep"], "trial": rec.number, "trial_start": rec.key}
        target = None
        for i in range(1, 1000):
            path = self.root / (rec.name if i == 1 else f"{rec.name}~{i}")
            mark = path / TRIAL_FILE
            if not path.exists():
                target = path
                break
            try:
                held = json.loads(mark.read_text())
            except (OSError, ValueError):
                shutil.rmtree(path)  # no readable trial.json: a copy cut short; write it again
                target = path
                break
            if {k: held.get(k) for k in ident} == ident:
                return False
        if target is None:
            raise RuntimeError(f"no free run directory for {rec.name!r} in {self.root}")
        tmp = self.tmp / f"{rec.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self._write(tmp, rec)
        (tmp / TRIAL_FILE).write_text(json.dumps({**ident, "name": target.name, "status": rec.status,
                                                  "point": rec.point}, indent=1, default=str))
        try:
            os.replace(tmp, target)
        except OSError:  # another file system: copy, trial.json last, so a cut copy is recognised as one
            shutil.copytree(tmp, target, ignore=shutil.ignore_patterns(TRIAL_FILE))
            shutil.copy2(tmp / TRIAL_FILE, target / TRIAL_FILE)
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.tmp.rmdir()  # only when empty
        return True

    def _write(self, logdir: Path, rec: _Record) -> None:
        writer = self._writer(log_dir=str(logdir), max_queue=100_000, flush_secs=3600)
        try:
            for tag, points in rec.curves.items():
                for step, value, wall in points:
                    writer.add_scalar(tag, value, step, walltime=wall)
            for tag, value in rec.finals.items():
                writer.add_scalar(tag, value, rec.final_step, walltime=rec.end)
            writer.add_text("trial", _markdown(rec, rec.tags["proxytune.sweep"]), rec.final_step, walltime=rec.end)
            hp = {k: v for k, v in rec.params.items() if isinstance(v, (bool, int, float, str))}
            hp["status"] = rec.status
            _, start_info, end_info = self._hparams(hp, {k: v for k, v in rec.finals.items()})
            writer.file_writer.add_summary(start_info, None, rec.start)
            writer.file_writer.add_summary(end_info, None, rec.end)
        finally:
            writer.close()


class _MLflow(_Target):
    """One MLflow run per trial in one experiment, found again by its ``proxytune.*`` tags."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, sweep: str, file_store: bool, artifacts: Path | None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.sweep = sweep
        self.file_store = file_store
        self.artifacts = artifacts
        self.key = f"mlflow:{_redact(uri)}#{experiment}"
        self.where = f"{_redact(uri)} (experiment {experiment!r})"
        self._client: Any = None
        self._entities: Any = None
        self._experiment_id: str | None = None

    def setup(self) -> None:
        _probe(self.uri)
        if self._client is None:
            if self.file_store:
                # MLflow 3 refuses its file store unless this is set; a user's explicit false is respected.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            # optional dependency (proxytune[tracking]), imported once a trial is logged
            import mlflow.entities as entities
            from mlflow.tracking import MlflowClient

            with _quiet_mlflow():
                self._client = MlflowClient(tracking_uri=self.uri)
            self._entities = entities
        if self._experiment_id is None:
            with _quiet_mlflow():
                self._experiment_id = self._find_experiment()

    def _find_experiment(self) -> str:
        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                location = self.artifacts.as_uri() if self.artifacts is not None else None
                return client.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # noqa: BLE001 - created meanwhile by another process: use that one
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {self.experiment!r} is deleted; restore it (mlflow experiments "
                               "restore) or set tracking.experiment to another name")
        return exp.experiment_id

    def reset(self) -> None:
        self._experiment_id = None

    def export(self, rec: _Record) -> bool:
        client, ent = self._client, self._entities
        with _quiet_mlflow():
            found = client.search_runs(
                [self._experiment_id], max_results=100,
                filter_string=(f"tags.`proxytune.sweep` = '{self.sweep}' AND tags.`proxytune.trial` = '{rec.number}' "
                               f"AND tags.`proxytune.trial_start` = '{rec.key}'"))
            if any(r.info.status != "RUNNING" for r in found):
                return False
            for r in found:  # left RUNNING by a sync that stopped half-way: log the trial again, whole
                client.delete_run(r.info.run_id)
            tags = dict(rec.tags)
            metrics = []
            now = int(time.time() * 1000)
            end = int(rec.end * 1000) if rec.end is not None else now
            for name, points in rec.curves.items():
                key = _metric_key(name)
                for step, value, wall in points:
                    if math.isfinite(value):  # MLflow stores inf as +-1.8e308 and would flatten the chart
                        metrics.append(ent.Metric(key, value, int(wall * 1000) if wall is not None else end, step))
            for name, value in rec.finals.items():
                if math.isfinite(value):
                    metrics.append(ent.Metric(name, value, end, rec.final_step))
                else:
                    tags[f"proxytune.{name}"] = str(value)
            run = client.create_run(self._experiment_id, run_name=rec.name, tags=tags,
                                    start_time=int(rec.start * 1000) if rec.start is not None else None)
            params = [ent.Param(_metric_key(k), str(v)[:6000]) for k, v in rec.params.items()]
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, status=_MLFLOW_STATUS.get(rec.status, "FINISHED"), end_time=end)
        return True


def mlflow_uri(value: bool | str, run_dir: Path) -> tuple[str, bool]:
    """The tracking URI of ``tracking.mlflow``, and whether it is MLflow's file store."""
    if value is True:
        return f"sqlite:///{(run_dir / 'mlflow.db').as_posix()}", False
    text = str(value)
    if text == "databricks" or text.startswith("databricks"):
        return text, False
    if text.startswith("file:"):
        return text, True
    if "://" in text:
        return text, False
    return os.path.abspath(Path(text).expanduser()), True


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)[:250] or "_"


def _redact(url: str) -> str:
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _probe(uri: str) -> None:
    """Fail in seconds when an MLflow server cannot be reached (MLflow itself retries for minutes)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return  # only the proxy knows whether the server is up
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=3.0).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the MLflow server at {parts.hostname}:{port} ({exc})") from None


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines ("Creating initial MLflow database tables...") off while we call it, and only then."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------- ledger and lock
def _read_ledger(path: Path) -> dict[str, dict[str, str]]:
    """``{destination: {trial number: trial start}}``; an unreadable ledger counts as empty (the trackers'
    own checks then keep trials from being logged twice)."""
    try:
        data = json.loads(path.read_text())
        logged = data["logged"]
        return {str(dest): {str(n): str(k) for n, k in trials.items()} for dest, trials in logged.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_ledger(path: Path, sweep: str, logged: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": 1, "sweep": sweep,
            "logged": {dest: dict(sorted(trials.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
                       for dest, trials in sorted(logged.items())}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path, wait: float) -> Iterator[bool]:
    """An exclusive lock on ``path`` (True), or False when another process holds it past ``wait`` seconds."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # no flock (Windows): one syncing process per sweep is the user's to keep
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- optuna-dashboard
def dashboard_command(storage_url: str) -> str:
    """The shell command that opens a sweep's storage in optuna-dashboard.

    optuna-dashboard takes a journal file's path as it is (it recognises an
    existing file that is not SQLite as a journal) and an RDB storage's
    SQLAlchemy URL as it is; the dashboard lists the storage's studies, the
    sweep's among them under its name.
    """
    return f"optuna-dashboard {shlex.quote(storage_url)}"
