"""``Sweep``: set up a sweep, run it with an executor, report and export it."""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from ..builders import build_model, load_builder
from ..errors import PlanError
from ..optimum_fit import RECORD_META
from ..shapes import analyze_model
from ..train.config import TrainConfig
from ..train.setup import _builder_options, load_data
from .dataid import check_sweep_data
from .errors import RepeatedFailure, StopRequested, StorageError, SweepConfigError
from .fields import apply_point, base_config, base_fields
from . import leases
from .program import check_program
from .schema import SweepConfig
from .space import grid_points, group_key, is_batchable_axis
from .storage import check_writable, probe_folder
from .store import SweepStore
from .strategy import strategy_of
from .tracking import Trackers
from .worker import open_store, run_worker, visited_points

CONFIG_FILE = "sweep.yaml"
# on_poll(counts, store): called about once a second while a sweep runs
PollFn = Callable[[dict[str, int], SweepStore], None]


class Sweep:
    """A sweep: ``Sweep.from_yaml("sweep.yaml").run()``; resumable by running it again."""

    def __init__(self, cfg: SweepConfig, *, accept_data_change: bool = False) -> None:
        self.cfg = cfg
        #: go on when the data file's content changed since the sweep started (its trials then mix two corpora)
        self.accept_data_change = accept_data_change

    @classmethod
    def from_yaml(cls, path: str | Path) -> Sweep:
        return cls(SweepConfig.from_yaml(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        return cls(SweepConfig.from_dict(data))

    @classmethod
    def open(cls, run_dir: str | Path) -> Sweep:
        """The sweep stored in ``run_dir`` (its saved ``sweep.yaml``)."""
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            inside = sorted(p.parent for p in Path(run_dir).glob(f"*/*/{CONFIG_FILE}")) + sorted(
                p.parent for p in Path(run_dir).glob(f"*/{CONFIG_FILE}"))
            hint = (": the sweeps under it are " + ", ".join(str(p) for p in inside[:6])) if inside else ""
            raise SweepConfigError(f"{str(run_dir)!r} is not a sweep directory (no {CONFIG_FILE} in it){hint}")
        cfg = SweepConfig.from_yaml(path)
        # The saved copy lives in runs_dir/name: keep pointing at it wherever the command runs from.
        return cls(cfg.model_copy(update={"runs_dir": str(Path(run_dir).resolve().parent)}))

    def with_executor(self, **changes: Any) -> Sweep:
        """The same sweep with executor settings changed (workers, threads, batch...)."""
        ex = self.cfg.executor.model_copy(update={k: v for k, v in changes.items() if v is not None})
        return Sweep(self.cfg.model_copy(update={"executor": ex}), accept_data_change=self.accept_data_change)

    # ------------------------------------------------------------------- setup
    def prepare(self) -> SweepStore:
        """Check data and storage, open (or create) the study and enqueue the points.

        Every check that can fail runs before anything is written.
        """
        cfg = self.cfg
        self.check()
        trackers = self.trackers()  # a tracker whose package is missing fails here
        strategy = strategy_of(cfg)
        for message in strategy.warnings(cfg):
            warnings.warn(message, stacklevel=2)
        try:
            store = open_store(cfg, create=True)  # first: an unreachable database leaves no folder behind
            check_sweep_data(store, cfg, self.accept_data_change)  # its data is the data it started with
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            saved = cfg.run_dir / CONFIG_FILE
            tmp = saved.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            os.replace(tmp, saved)
        except OSError as exc:
            raise SweepConfigError(f"cannot write the sweep's files in {str(cfg.run_dir)!r}: "
                                   f"{exc.strerror or exc}") from None
        self._trackers = trackers
        points = strategy.initial_points(cfg, store)
        if points:
            store.enqueue(points, stage=0)
        return store

    # --------------------------------------------------------------------- run
    def check(self) -> None:
        """Every check that needs the machine (data, model shapes, devices, the program, the executor), writing
        nothing; :meth:`prepare` runs it first. ``proxytune sweep --check`` runs only this."""
        cfg = self.cfg
        first = base_config(cfg)
        check_writable(cfg.storage_url())
        _check_run_dir(cfg.run_dir)
        if cfg.executor.kind == "ray":
            try:
                import ray  # noqa: F401 - optional dependency (proxytune[ray])
            except ImportError:
                raise SweepConfigError("executor 'ray' needs Ray: pip install 'proxytune[ray]'") from None
        if cfg.program is not None:
            check_program(cfg)  # the function imports, the command exists
            return
        if cfg.executor.kind != "ray":  # Ray workers may have devices this machine has not
            _check_device(first.device)
        try:
            data = load_data(first)  # a missing or too-short data file fails here
        except TypeError as exc:
            raise SweepConfigError(f"data_options: {exc}") from None
        if hasattr(data, "check"):
            data.check(first.seq_len)
        _check_shapes(cfg, data)

    def trackers(self) -> Trackers | None:
        """The experiment trackers of ``tracking:`` (None when there are none)."""
        t = self.cfg.tracking
        if not (t.tensorboard or t.mlflow):
            return None
        return Trackers(t, self.cfg.run_dir, self.cfg.name, self.cfg.recipe)

    def run(self, *, on_poll: PollFn | None = None, poll_seconds: float = 1.0,
            stop_after_failures: int | None = None) -> dict[str, int]:
        """Run (or continue) the sweep until no trial is left; returns the final counts.

        ``stop_after_failures``: stop with :class:`RepeatedFailure` (its message names the error) once that many
        trials in a row, of those finished by this call, failed with the same error. ``proxytune tune`` sets it
        for its stages; a plain sweep runs to its end (a failure at one size says nothing about the others)."""
        failures = (stop_after_failures, time.time()) if stop_after_failures else None
        store = self.prepare()
        trackers = self._trackers
        if trackers is not None:
            user_poll = on_poll

            def on_poll(counts: dict[str, int], store: SweepStore) -> None:
                trackers.sync(store)
                if user_poll is not None:
                    user_poll(counts, store)
        try:
            return self._run(store, on_poll, poll_seconds, failures)
        except StorageError as exc:  # the journal does not know which run folder it serves
            raise type(exc)(str(exc).replace("RUN_DIR", str(self.cfg.run_dir))) from None
        finally:
            if trackers is not None:
                trackers.sync(store, force=True)  # the last trials, even if a tracker failed a moment ago

    def _run(self, store: SweepStore, on_poll: PollFn | None, poll_seconds: float,
             failures: tuple[int, float] | None = None) -> dict[str, int]:
        while True:
            if self._nothing_to_run(store):
                pass  # starting workers would only cost their start-up
            elif self.cfg.executor.kind == "ray":
                _run_ray(self.cfg, store, on_poll, poll_seconds, failures)
            elif self.cfg.executor.kind == "inline":
                # no poll loop runs beside an inline worker: it reports after each batch
                run_worker(self.cfg.model_dump(mode="json"), 0, install_signals=False, stop_after_failures=failures,
                           on_batch=(lambda: on_poll(store.counts(), store)) if on_poll is not None else None)
            else:
                _run_local(self.cfg, store, on_poll, poll_seconds, failures)
            if not self._next_stage(store):
                break  # one pass (list, sampled), or every stage has run
        return store.counts()

    def _next_stage(self, store: SweepStore) -> bool:
        """Enqueue the strategy's next stage once nothing is left to run (grid: its refinement pass, telescoping:
        the next scale); True when it added trials."""
        stage = strategy_of(self.cfg).next_points(self.cfg, store)
        return stage is not None and bool(stage[0]) and store.enqueue(stage[0], stage=stage[1]) > 0

    def _nothing_to_run(self, store: SweepStore) -> bool:
        """No trial waiting or running, and (for a sampler) the trial budget spent (failed trials spend it too)."""
        store.requeue_stale()
        counts = store.counts()
        if counts["waiting"] or counts["running"]:
            return False
        budget = strategy_of(self.cfg).budget(self.cfg)
        if budget is not None:  # a sampler's budget
            return len(visited_points(store)) >= budget
        return True

    def refinement_points(self, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The second-pass points of a grid sweep: the half-step values of the refined axis that each size's
        optimum asks for (:attr:`Optimum.refine`), with every seed that ran at that size."""
        strategy = strategy_of(self.cfg)
        if not strategy.refines(self.cfg):
            return []
        return strategy.refinement_points(self.cfg, self.records() if records is None else records)

    # ---------------------------------------------------------------- reading
    def store(self) -> SweepStore:
        return open_store(self.cfg, create=False)

    def records(self) -> list[dict[str, Any]]:
        return self.store().records()

    def status(self) -> dict[str, Any]:
        """Counts per status and the best completed trial of every size."""
        store = self.store()
        return {"counts": store.counts(), "best": best_per_group(store.records())}

    def export(self, path: str | Path, fmt: str = "csv") -> Path:
        """Write one row per trial (axes, status, losses, tokens, time) as CSV or Parquet."""
        rows = self.records()
        path = Path(path)
        if fmt == "csv":
            columns = _columns(rows)
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        elif fmt == "parquet":
            try:
                import pandas as pd  # optional dependency, for parquet only

                pd.DataFrame(rows, columns=_columns(rows)).to_parquet(path)
            except ImportError as exc:
                raise SweepConfigError(f"parquet export needs pandas and pyarrow ({exc}); "
                                       "pip install pandas pyarrow, or use --format csv") from None
        else:
            raise SweepConfigError(f"unknown export format {fmt!r}; valid: csv, parquet")
        return path


def _check_run_dir(run_dir: Path) -> None:
    """The run folder (or the nearest existing folder above it) must be a writable directory."""
    p = run_dir.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise SweepConfigError(f"runs_dir: {str(p)!r} is a file, not a folder; give a folder for the runs")
    if not os.access(p, os.W_OK | os.X_OK):
        raise SweepConfigError(f"runs_dir: {str(p)!r} is not writable; give a folder you can write to")
    probe_folder(run_dir.resolve(), "runs_dir")


def _check_device(device: str) -> None:
    """A device this machine has (cuda:N within the visible GPUs)."""
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= n:
            raise SweepConfigError(f"train.device {device!r}: this machine has {n} CUDA device(s)"
                                   + ("" if n else "; use cpu (or auto)"))
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SweepConfigError("train.device 'mps': not available on this machine; use cpu (or auto)")


def _check_shapes(cfg: SweepConfig, data: Any = None) -> None:
    """Build the base and every distinct model shape of a grid on ``meta`` (free) so a bad width fails before any
    trial; a model whose context or vocabulary is smaller than the data's is refused too."""
    axes = {a: v for a, v in cfg.axes.items() if not is_batchable_axis(a)}
    if any(not isinstance(v, list) and v.start is None for v in axes.values()):
        axes = {}
    builder = load_builder(cfg.model)
    first = base_config(cfg)
    points = grid_points(axes) if axes else [{}]
    shapes = [(p, TrainConfig(**apply_point(base_fields(cfg), p))) for p in points]
    if first.base_width or first.base_depth:
        base = first.model_copy(update={"width": first.base_width or first.width,
                                        "depth": first.base_depth or first.depth})
        shapes.insert(0, ("the base shape " + str(dict(cfg.base)), base))
    for where, tc in shapes:
        options = _builder_options(tc, data, builder) if data is not None else dict(tc.model_options)
        if data is not None and getattr(data, "task", "lm") == "lm":
            for key, need, what in (("seq_len", tc.seq_len, "the training seq_len"),
                                    ("vocab", getattr(data, "vocab_size", 0), "the data's vocabulary")):
                if key in tc.model_options and int(tc.model_options[key]) < need:
                    raise SweepConfigError(f"model_options.{key} = {tc.model_options[key]} is smaller than {what} "
                                           f"({need})")
        try:
            build_model(builder, tc.width, tc.depth, "meta", options)
        except Exception as exc:  # noqa: BLE001 - any builder error is a config error here
            raise SweepConfigError(f"the model cannot be built at {where}: {exc}") from None
    _check_plan(shapes[-1][1], builder, data)


def _check_plan(tc: Any, builder: Any, data: Any) -> None:
    """Read the largest shape against the base as a trial's plan would (both on ``meta``: free), so a model
    proxytune cannot read (no readout, blocks it cannot match) fails now rather than in every trial."""
    options = _builder_options(tc, data, builder) if data is not None else dict(tc.model_options)
    try:
        base = build_model(builder, tc.base_width or tc.width, tc.base_depth or tc.depth, "meta", options)
        target = build_model(builder, tc.width, tc.depth, "meta", options)
    except Exception:  # noqa: BLE001 - reported by the shape check above
        return
    kwargs = tc.plan_kwargs()
    kwargs.pop("attention")
    try:
        analyze_model(target, base, **kwargs, seq_len=tc.seq_len if getattr(data, "task", "lm") == "lm" else None)
    except PlanError as exc:
        raise SweepConfigError(f"the model cannot be planned at width {tc.width}, depth {tc.depth}: {exc}") from None


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols or ["trial", "status"]


def best_per_group(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lowest-loss completed trial for every combination of the non-batchable axes (the 'size')."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["status"] != "complete" or not math.isfinite(r["val_loss"]):
            continue
        point = {k: v for k, v in r.items() if k not in RECORD_META}
        key = group_key(point)
        if key not in best or r["val_loss"] < best[key]["val_loss"]:
            best[key] = {"size": {k: v for k, v in point.items() if not is_batchable_axis(k)},
                         "best": {k: v for k, v in point.items() if is_batchable_axis(k)},
                         "val_loss": r["val_loss"], "trial": r["trial"]}
    return list(best.values())




# ------------------------------------------------------------------ executors
def _worker_entry(config: dict[str, Any], index: int, fatal: Any = None,
                  failures: tuple[int, float] | None = None, parent: int | None = None,
                  env: dict[str, str] | None = None) -> None:
    if env is not None:
        # A forked worker inherits the fork server's environment, set when it started: the sweep process's own,
        # as it is now, with this worker's CUDA_VISIBLE_DEVICES, is what it must see.
        os.environ.clear()
        os.environ.update(env)
    if parent is not None:
        _watch_parent(parent, _PARENT_GONE_GRACE + float((config.get("program") or {}).get("kill_grace") or 0))
    try:
        run_worker(config, index, stop_after_failures=failures)
    except StopRequested:
        pass
    except (StorageError, RepeatedFailure) as exc:
        # The whole sweep must stop (another worker would hit the same wall): tell the parent, no traceback.
        if fatal is not None:
            fatal.put((type(exc).__name__, str(exc)))
        raise SystemExit(3) from None


#: seconds a worker whose sweep process died has to give its trials back before it exits hard
_PARENT_GONE_GRACE = 60.0


def _watch_parent(parent: int, grace: float) -> None:
    """Stop this worker once the sweep process that started it is gone (SIGKILL, a crash: nothing told the
    worker): SIGTERM to itself takes the ordinary stop path, which gives the trials back. Polling the parent pid
    works however the parent died and needs no help from it. A worker still here ``grace`` seconds later (stuck
    in native code) exits hard; the next resume re-queues what it held."""
    # A spawned worker's parent is the sweep process; a forked one's is the fork server, which exits when the
    # sweep process does. Either way the worker is reparented (to init or a subreaper) once the sweep is gone.
    first = os.getppid()

    def watch() -> None:
        while os.getppid() == first and first != 1 and leases.alive(parent):
            time.sleep(0.5)
        end = time.time() + grace
        while time.time() < end:  # again every 2 s: a stop can be lost (see _run_local); handing back ignores it
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        os._exit(3)

    threading.Thread(target=watch, name="proxytune-parent-watch", daemon=True).start()


#: imported once, by the fork server, before it forks any worker (see :func:`_context`)
_PRELOAD = ["proxytune.sweep.worker"]


def _context() -> Any:
    """The start method of local workers: ``forkserver`` where the platform has it, else ``spawn``.

    A spawned worker imports torch and proxytune afresh, about 2 s on a 2-core machine, and ``proxytune tune``
    starts workers for each of its stages. The fork server imports them once, when the first sweep of this
    process starts workers, and forks every later worker from that clean process (it never runs torch, so no
    thread pool or CUDA context is copied). A worker still starts from a fresh interpreter state as far as
    the sweep is concerned: the same ``sys.path``, working directory and environment as a spawned one."""
    methods = mp.get_all_start_methods()
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # read when the server starts; later calls change nothing
    return ctx


def _gpu_count() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def _run_local(cfg: SweepConfig, store: SweepStore, on_poll: PollFn | None, poll_seconds: float,
               failures: tuple[int, float] | None = None) -> None:
    """N worker processes (forked from the fork server, see :func:`_context`), one GPU each when there are GPUs;
    started again while work is waiting."""
    ctx = _context()
    config = cfg.model_dump(mode="json")
    n_gpus = _gpu_count()
    procs: list[mp.Process] = []
    spawned = 0
    fatal = ctx.SimpleQueue()  # a worker's StorageError or RepeatedFailure, to stop the sweep with its message

    def spawn(n: int) -> None:
        nonlocal spawned
        for _ in range(n):
            # the worker sets its environment before anything touches CUDA: one GPU each, when there are GPUs
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(spawned % n_gpus)} if n_gpus else {})}
            proc = ctx.Process(target=_worker_entry, args=(config, spawned, fatal, failures, os.getpid(), env),
                               name=f"proxytune-worker-{spawned}")
            proc.start()
            procs.append(proc)
            spawned += 1

    spawn(cfg.executor.workers)
    idle_respawns = 0
    try:
        while True:
            # a poll every poll_seconds, and at once when a worker exits: the last one's exit ends the sweep
            # without waiting out the poll (tune runs many short sweeps)
            sentinels = [p.sentinel for p in procs if p.is_alive()]
            if sentinels:
                mp.connection.wait(sentinels, timeout=poll_seconds)
            else:
                time.sleep(poll_seconds)
            if not fatal.empty():
                kind, message = fatal.get()
                raise (RepeatedFailure if kind == RepeatedFailure.__name__ else StorageError)(message)
            store.requeue_stale()
            counts = store.counts()
            if on_poll is not None:
                on_poll(counts, store)
            alive = [p for p in procs if p.is_alive()]
            if counts["waiting"] and len(alive) < cfg.executor.workers:
                idle_respawns = idle_respawns + 1 if not alive else 0
                if idle_respawns > 3:
                    raise RuntimeError("workers keep exiting while trials are waiting; see the failed trials' errors "
                                       "(proxytune status)")
                spawn(cfg.executor.workers - len(alive))
                continue
            # Running trials are waited for: stale ones become waiting on the next poll and are ours to redo;
            # live ones (a worker another sweep process left, one on another machine) finish or are given back.
            # Ending now would report them as running while they still run.
            if not alive and not counts["waiting"] and not counts["running"]:
                break
    except BaseException:
        _stop_workers(procs, store)
        raise
    for p in procs:
        p.join()


def _stop_workers(procs: list[Any], store: SweepStore) -> None:
    """Stop the workers of an interrupted sweep, their trials given back to the queue."""
    # SIGTERM: the worker gives its trials back to the queue. Sent again every 2 s while it runs: a stop that
    # lands where Python drops an exception (an at-fork hook, a __del__) is lost, and the worker runs on.
    deadline = time.time() + 30
    while True:
        alive = [p for p in procs if p.is_alive()]
        if not alive or time.time() > deadline:
            break
        for p in alive:
            p.terminate()
        end = time.time() + 2
        for p in alive:
            p.join(timeout=max(0.0, end - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=10)  # reaped: the store sees its trials' holder gone and re-queues them below
    try:
        store.requeue_stale()
    except StorageError:
        pass  # the database is gone or the disk is full: resume re-queues them


def _ray_worker(config: dict[str, Any], index: int, failures: tuple[int, float] | None = None) -> int:
    return run_worker(config, index, install_signals=False, stop_after_failures=failures)


def _run_ray(cfg: SweepConfig, store: SweepStore, on_poll: PollFn | None, poll_seconds: float,
             failures: tuple[int, float] | None = None) -> None:
    """Workers as Ray tasks (``ray.init()`` locally, or ``executor.address`` for a cluster)."""
    try:
        import ray  # optional dependency (proxytune[ray])
    except ImportError:
        raise SweepConfigError("executor 'ray' needs Ray: pip install 'proxytune[ray]'") from None
    if "://" not in cfg.storage_url() and cfg.executor.address:
        warnings.warn("a Ray cluster with a local journal file only works when every node shares the file; "
                      "use a postgresql:// storage for many machines", stacklevel=2)
    if not ray.is_initialized():
        ray.init(address=cfg.executor.address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=cfg.executor.threads, num_gpus=cfg.executor.gpus_per_worker)(_ray_worker)
    config = cfg.model_dump(mode="json")
    pending = [task.remote(config, i, failures) for i in range(cfg.executor.workers)]
    try:
        while True:
            if pending:
                done, pending = ray.wait(pending, timeout=poll_seconds)
                ray.get(done)
            else:
                time.sleep(poll_seconds)
            store.requeue_stale()
            counts = store.counts()
            if on_poll is not None:
                on_poll(counts, store)
            if not pending and counts["waiting"]:
                pending = [task.remote(config, i, failures) for i in range(cfg.executor.workers)]
            elif not pending and not counts["running"]:
                break  # as in _run_local: trials still running elsewhere are waited for, not reported as running
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
