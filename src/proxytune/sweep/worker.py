"""The worker loop: claim trials, train them (batched when possible), store the results.

The same function runs in a local worker process and in a Ray task. It only
talks to the store, so any number of workers on any number of machines can
share one sweep.
"""

from __future__ import annotations

import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import torch

from ..train import RunResult, TrainConfig, group_batchable, train, train_batched
from ..train.batched import BatchError
from ..optim.batched import BATCHED_OPTIMIZERS
from .dataid import DataWatch
from .errors import ProgramError, RepeatedFailure, StopRequested, StorageError
from .fields import apply_point, base_fields
from .leases import HOST, Heartbeat
from .program import HeldStops, run_program_trial, trial_info
from .schema import SweepConfig
from .space import group_key, point_key, suggest_point, unvisited_points
from .store import SweepStore
from .strategy import STRATEGIES, strategy_of

# re-exported for one release; ask strategy_of(cfg).samples (this tuple lists the strategies known at import)
SAMPLED = tuple(name for name, strategy in STRATEGIES.items() if strategy.samples)


def sampler_and_pruner(cfg: SweepConfig) -> tuple[Any, Any]:
    """The study's sampler (seeded with ``strategy.seed``) and pruner, as the sweep's strategy has them."""
    strategy = strategy_of(cfg)
    return strategy.sampler(cfg, cfg.strategy.seed), strategy.pruner(cfg)


def open_store(cfg: SweepConfig, create: bool = False, wait: bool = False) -> SweepStore:
    sampler, pruner = sampler_and_pruner(cfg)
    return SweepStore.open(cfg, create=create, sampler=sampler, pruner=pruner, wait=wait)


def _next_trials(store: SweepStore, cfg: SweepConfig, worker_index: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(trial_id, point) pairs to run next; empty when there is nothing left for this worker."""
    k = cfg.executor.batch
    claimed = store.claim(k, same_group=group_key, share=cfg.executor.workers)
    strategy = strategy_of(cfg)
    if claimed or not strategy.samples:
        return [(t._trial_id, t.user_attrs["point"]) for t in claimed]
    _salt_sampler(store, cfg, worker_index)
    budget = strategy.budget(cfg) or 0
    out: list[tuple[int, dict[str, Any]]] = []
    repeats = 0
    while len(out) < k:
        visited = visited_points(store)
        if len(visited) >= budget:
            break
        trial = store.study.ask()
        point = suggest_point(trial, cfg)
        if store.register(trial._trial_id, point):
            if _beyond_budget(store, cfg, trial.number):
                # Another worker took the last point of the budget at the same moment: this one steps aside.
                store.step_aside(trial._trial_id, "surplus")
                time.sleep(0.2)  # let the other worker record its point before counting again
                continue
            out.append((trial._trial_id, point))
            repeats = 0
            continue
        # The sampler proposed a point that has run: ask again. A sampler that keeps coming back to the points
        # it has seen (TPE on a small space) is given an unvisited point instead, so the sweep still reaches
        # n_trials distinct points.
        repeats += 1
        if repeats >= MAX_SAMPLER_REPEATS:
            fresh = unvisited_points(cfg, visited)
            if not fresh:
                break
            rng = random.Random(f"{cfg.strategy.seed}:{len(visited)}:{worker_index}")
            store.enqueue([rng.choice(fresh)])
            out += [(t._trial_id, t.user_attrs["point"]) for t in store.claim(1)]
            repeats = 0
    return out


#: proposals of already-run points in a row before a worker picks an unvisited point itself
MAX_SAMPLER_REPEATS = 8


def visited_points(store: SweepStore) -> set[tuple]:
    """The distinct points a sampled sweep has spent its budget on: waiting, running or finished in any way
    (failed included: were failures free, a sweep whose trials keep failing would never end); the copies a
    sampler proposed twice, and trials given back to be run again, are one point each."""
    return {point_key(t.user_attrs["point"]) for t in store.trials()
            if "point" in t.user_attrs and t.user_attrs.get("status") not in ("duplicate", "surplus")}


#: an ask whose point is not recorded after this many seconds is taken as abandoned (its worker stopped)
_IN_FLIGHT_S = 60.0


def _beyond_budget(store: SweepStore, cfg: SweepConfig, number: int) -> bool:
    """Whether trial ``number``, just registered, is one point too many: the distinct points of the trials
    before it, plus the asks before it whose point is not recorded yet, already fill the budget. Workers decide
    by trial number, so of two that pass the budget check at once only the later trial steps aside."""
    seen: set[tuple] = set()
    in_flight = 0
    now = time.time()
    for t in store.trials():
        if t.number >= number or t.user_attrs.get("status") in ("duplicate", "surplus"):
            continue
        if "point" in t.user_attrs:
            seen.add(point_key(t.user_attrs["point"]))
        elif t.state == optuna.trial.TrialState.RUNNING and t.datetime_start is not None \
                and now - t.datetime_start.timestamp() < _IN_FLIGHT_S:
            in_flight += 1
    return len(seen) + in_flight >= (strategy_of(cfg).budget(cfg) or 0)


def _salt_sampler(store: SweepStore, cfg: SweepConfig, worker_index: int) -> None:
    """Give this worker's sampler a stream of its own, once: workers (and a resumed sweep) built with the same
    seed would otherwise propose the same points in the same order, each one a duplicate of the other's."""
    if getattr(store, "_salted", False):
        return
    n = len(store.trials())
    seed = cfg.strategy.seed + 7919 * worker_index + 104729 * n
    store.study.sampler = strategy_of(cfg).sampler(cfg, seed)
    store._salted = True  # type: ignore[attr-defined]


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _hangup_as_term(signum: int, frame: Any) -> None:
    # SIGHUP (a closed terminal) stops the worker as SIGTERM does, through SIGTERM's handler: the code that holds
    # or watches stops (claims, a function trial) knows that one.
    os.kill(os.getpid(), signal.SIGTERM)


class _HoldStops(HeldStops):
    """Holds SIGINT and SIGTERM while a worker takes trials, and delivers them when the block ends.

    Between ``study.ask()`` (or a claim) and the moment the worker lists the trial as its own, a stop would leave
    a running trial that nobody gives back (with no lease yet, not even stale until a lease period has passed):
    it showed as running long after Ctrl-C. Held, the stop arrives once the trials are in the list that the
    hand-back releases."""

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.deliver()  # to the handler that was in place: StopRequested, KeyboardInterrupt, ...


def run_worker(config: dict[str, Any], worker_index: int = 0, install_signals: bool = True, *,
               stop_after_failures: tuple[int, float] | None = None,
               on_batch: Callable[[], None] | None = None) -> int:
    """Run trials of the sweep ``config`` until none is left; returns how many this worker finished.

    ``stop_after_failures``: ``(n, since)``: raise :class:`RepeatedFailure` when the last ``n`` trials of the sweep
    finished since ``since`` (a ``time.time()``) all failed with the same error. ``on_batch()`` is called after
    each batch of trials (the inline executor's progress)."""
    cfg = SweepConfig.model_validate(config)
    if cfg.executor.kind != "inline":  # an inline worker leaves the caller's thread count alone
        torch.set_num_threads(cfg.executor.threads)
    if install_signals:
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
        signal.signal(signal.SIGHUP, _hangup_as_term)
    store = open_store(cfg, wait=True)  # a worker joining a sweep waits for a database that is restarting
    fields = base_fields(cfg)
    watch = DataWatch(cfg, store)
    finished = 0
    while True:
        store.requeue_stale()
        pending: set[int] = set()
        failed = False
        data_stamp = watch.verify()  # before any trial is taken: a changed data file stops the sweep here
        try:
            with _HoldStops():
                batch = _next_trials(store, cfg, worker_index)
                pending.update(tid for tid, _ in batch)
            if not batch:
                return finished
            ids = [tid for tid, _ in batch]
            if cfg.program is not None:
                with Heartbeat(store, ids):
                    for tid, point in batch:
                        result = _run_program(store, cfg, tid, point, hard_exit=install_signals)
                        pending.discard(tid)
                        if result is None:  # failed and stored as failed by _run_program
                            failed = True
                        elif store.finish(tid, result):
                            finished += 1
            else:
                with Heartbeat(store, ids):
                    configs = [TrainConfig(**apply_point(fields, p)) for _, p in batch]
                    for group in group_batchable(configs):
                        members = [(ids[i], configs[i]) for i in group]
                        for tid, result in _train_group(store, members):
                            if tid in pending:
                                changed = watch.changed_since(data_stamp) if result is not None else None
                                if changed is not None:
                                    store.fail(tid, changed)
                                if result is None or changed is not None:  # stored as failed
                                    pending.discard(tid)
                                    failed = True
                                    continue
                                store.finish(tid, result)
                                pending.discard(tid)
                                finished += 1
        except (StopRequested, KeyboardInterrupt):
            # A second Ctrl-C or SIGTERM must not interrupt the hand-back (a worker in the caller's own
            # process, the inline executor, gets KeyboardInterrupt and keeps the caller's handlers).
            if install_signals:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            for tid in pending:
                store.release(tid)
            raise
        except StorageError:
            raise  # the database is gone or the disk is full: the trials stay running and are re-queued on resume
        except Exception:  # noqa: BLE001 - a failing trial is stored, the worker goes on
            err = traceback.format_exc()
            for tid in pending:
                store.fail(tid, err)
            failed = failed or bool(pending)
        if on_batch is not None:
            on_batch()
        if failed and stop_after_failures is not None:
            n, since = stop_after_failures
            error = store.failure_streak(n, since)
            if error is not None:
                raise RepeatedFailure(f"{n} trials in a row failed with the same error: {error}")


def _pruner_callback(store: SweepStore, trial_id: int) -> Any:
    """``should_prune(step, value)`` for one trial, or None when the sweep has no pruner."""
    if isinstance(store.study.pruner, optuna.pruners.NopPruner):
        return None
    trial = optuna.Trial(store.study, trial_id)

    def should_prune(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return should_prune


def _run_program(store: SweepStore, cfg: SweepConfig, trial_id: int, point: dict[str, Any],
                 hard_exit: bool) -> RunResult | None:
    """One trial of a program sweep: its RunResult, or None when it failed (stored as failed here)."""
    number = store.storage.get_trial_number_from_id(trial_id)
    prune = _pruner_callback(store, trial_id)
    info = trial_info(cfg, trial_id, number, point, pruning=prune is not None)

    def on_start(started: dict[str, Any]) -> None:
        store.storage.set_trial_user_attr(trial_id, "program", {"host": HOST, **started})

    def hard_timeout(reason: str) -> None:  # a function stuck past its timeout: record it, end this worker
        store.fail(trial_id, reason, info["params"])
        os._exit(3)

    try:
        return run_program_trial(cfg, info, prune, on_start=on_start, hard_timeout=hard_timeout if hard_exit else None)
    except ProgramError as exc:
        store.fail(trial_id, str(exc), {"program": cfg.program.function or cfg.program.command, **info["params"]})
        return None


def _train_group(store: SweepStore, members: list[tuple[int, TrainConfig]]):  # noqa: ANN202
    """Yield (trial_id, RunResult) for a group of same-architecture configs."""
    pruning = not isinstance(store.study.pruner, optuna.pruners.NopPruner)
    trials = {tid: optuna.Trial(store.study, tid) for tid, _ in members} if pruning else {}

    def report(tid: int, step: int, val: float) -> bool:
        if not pruning:
            return False
        trials[tid].report(val, step)
        return trials[tid].should_prune()

    configs = [c for _, c in members]
    if len(members) > 1 and configs[0].optimizer in BATCHED_OPTIMIZERS and configs[0].mode == "folded":
        try:
            results = train_batched(configs, on_eval=lambda i, step, val: report(members[i][0], step, val))
            yield from zip([tid for tid, _ in members], results)
            return
        except BatchError:
            pass  # e.g. per-member buffers: fall back to one at a time
    for tid, cfg in members:
        try:
            yield tid, train(cfg, on_eval=lambda step, val, tid=tid: report(tid, step, val))
        except (StopRequested, KeyboardInterrupt, StorageError):
            raise
        except Exception:  # noqa: BLE001
            store.fail(tid, traceback.format_exc(), cfg.model_dump(mode="json"))
            yield tid, None
