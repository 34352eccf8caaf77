"""Sweeping a user's own training code: ``program: {function: ...}`` or ``program: {command: [...]}``.

A *function* ``run(trial) -> loss`` is imported and called in the worker
process, one trial at a time. A *command* is started once per trial in its
own process group, with ``PROXYTUNE_TRIAL`` pointing at a JSON file that
``Trial.current()`` reads; its reports come back through a JSON-lines file
in the trial's folder (``runs/<name>/trials/<number>/``), next to its
``stdout.log`` and ``stderr.log``.

Either way the worker keeps the trial's lease alive while the program runs,
so a worker that dies has its trial re-queued, and the store records a
crash, a timeout or a non-zero exit as a failed trial with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from ..train.result import RunResult
# StopRequested, ProgramError, ProgramTimeout: re-exported for one release; import from proxytune.sweep.errors
from .errors import ProgramError, ProgramTimeout, StopRequested, SweepConfigError
from .fields import apply_point
# COMMAND_FIELDS, ProgramConfig: re-exported for one release; import from proxytune.sweep.schema
from .schema import _PLACEHOLDER, COMMAND_FIELDS, ProgramConfig  # noqa: F401
from .trial import ENV_VAR, DirectChannel, Trial, as_real, check_step, show_value


# ----------------------------------------------------------------- the trial
def trial_info(cfg: Any, trial_id: int, number: int, point: dict[str, Any], pruning: bool) -> dict[str, Any]:
    """What a program is told about its trial (also written to ``trial.json`` for a command)."""
    params = apply_point({**cfg.program.params, **cfg.train}, point)
    run_dir = cfg.run_dir.resolve()
    folder = run_dir / "trials" / f"{number:05d}"
    return {
        "sweep": cfg.name, "number": number, "trial_id": trial_id, "point": point, "params": params,
        "recipe": cfg.recipe, "optimizer": cfg.optimizer,
        "width": params.get("width", cfg.base.get("width")), "depth": params.get("depth", cfg.base.get("depth")),
        "base_width": cfg.base.get("width"), "base_depth": cfg.base.get("depth"),
        "dir": str(folder), "plans_dir": str(run_dir / "plans"),
        "reports": str(folder / "reports.jsonl"), "decisions": str(folder / "decisions.jsonl"),
        "pruning": pruning,
    }


def run_program_trial(cfg: Any, info: dict[str, Any], should_prune: Callable[[int, float], bool] | None,
                      on_start: Callable[[dict[str, Any]], None] | None = None,
                      hard_timeout: Callable[[str], None] | None = None) -> RunResult:
    """Run one trial of a program sweep; raises :class:`ProgramError` when it fails.

    ``should_prune(step, value)``: the pruner (None: no pruning). ``on_start``: called with what identifies
    a started command (stored with the trial, to find orphans). ``hard_timeout(reason)``: called from a
    watchdog thread when a function ignores its timeout (the caller records the failure and exits).
    """
    Path(info["dir"]).mkdir(parents=True, exist_ok=True)
    if cfg.program.kind == "function":
        return _run_function(cfg, info, should_prune, hard_timeout)
    return _run_command(cfg, info, should_prune, on_start)


def _result(cfg: Any, info: dict[str, Any], status: str, value: float, reports: list[dict[str, float]],
            metrics: dict[str, float], wall: float, reason: str = "") -> RunResult:
    value = float(value)
    if status == "complete" and not math.isfinite(value):
        status = "diverged"
    diverged_step = None
    if status == "diverged":
        bad = [r["step"] for r in reports if not math.isfinite(r.get("val_loss", math.nan))]
        diverged_step = int(bad[0]) if bad else (int(reports[-1]["step"]) if reports else None)
    steps = metrics.get("steps", reports[-1]["step"] if reports else 0)
    config = {"program": cfg.program.function or cfg.program.command, "recipe": info["recipe"],
              "optimizer": info["optimizer"], "width": info["width"], "depth": info["depth"],
              "base_width": info["base_width"], "base_depth": info["base_depth"], **info["params"]}
    return RunResult(
        status=status, final_train_loss=float(metrics.get("train_loss", math.nan)),
        final_val_loss=value if status != "diverged" else math.inf, train_losses=[], evals=reports,
        steps_done=int(steps), tokens=_int_or_none(metrics.get("tokens")), wall_time=wall,
        flops=float(metrics["flops"]) if "flops" in metrics else None,
        n_params=_int_or_none(metrics.get("n_params")), config=config,
        env={"program": cfg.program.kind, "host": os.uname().nodename, "python": sys.version.split()[0]},
        diverged_step=diverged_step, reason=reason)


def _int_or_none(v: Any) -> int | None:
    return int(v) if v is not None and math.isfinite(float(v)) else None


def _final_value(returned: Any, trial: Trial) -> tuple[float, dict[str, float], str]:
    """The trial's loss: what the function returned, else trial.finish(), else the last report."""
    metrics = dict(trial.metrics)
    if isinstance(returned, dict):
        extra = dict(returned)
        key = "val_loss" if "val_loss" in extra else "loss"
        raw = extra.pop("val_loss", extra.pop("loss", None))
        extra.pop("loss", None)
        if raw is None:
            raise ProgramError(f"the function returned a dict without 'val_loss': {sorted(map(str, returned))}")
        value = as_real(raw)
        if value is None:
            raise ProgramError(f"the function returned a dict whose {key!r} is {show_value(raw)}; return a float "
                               "loss: expected the final validation loss as a number")
        for k, v in extra.items():  # other numbers are metrics; anything else (text, flags) is not ours to keep
            x = as_real(v)
            if x is not None:
                metrics[str(k)] = x
        return value, metrics, ""
    if returned is not None:
        # Strict: float() would take "1.5" or True as a loss, and a bug would pass for a result.
        value = as_real(returned)
        if value is None:
            raise ProgramError(f"the function returned {show_value(returned)}; return a float loss: expected the "
                               "final validation loss as a number, or a dict with 'val_loss'")
        return value, metrics, ""
    if trial.final is not None:
        return trial.final, metrics, ""
    if trial.reports:
        return trial.reports[-1]["val_loss"], metrics, "no final result returned: the last report is the result"
    raise ProgramError("the program finished without a result: return the final validation loss, call "
                       "trial.finish(loss), or trial.report(step, loss) at least once")


# ------------------------------------------------------------------ function
def load_function(spec: str, cwd: str | None) -> Callable[[Trial], Any]:
    """``module:function`` (importable, or found under ``cwd``) or ``path/file.py:function``."""
    target, name = spec.rsplit(":", 1)
    if cwd and cwd not in sys.path:
        sys.path.insert(0, cwd)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute() and cwd:
            path = Path(cwd) / path
        if not path.is_file():
            raise ProgramError(f"program.function {spec!r}: file {str(path)!r} not found")
        mod_name = f"proxytune_program_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(mod_name, path)
            assert spec_ is not None and spec_.loader is not None
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ProgramError(f"program.function {spec!r}: cannot import {target!r} ({exc}); run from the folder "
                               "that holds it, set program.cwd, or give a path: 'path/to/file.py:function'") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ProgramError(f"program.function {spec!r}: {target!r} has no function {name!r}")
    return fn


class _Deadline:
    """``program.timeout`` for a function: SIGALRM raises ProgramTimeout in the main thread; a watchdog calls
    ``hard_timeout`` when the function does not stop within ``grace`` seconds after that (stuck in C code)."""

    def __init__(self, seconds: float | None, grace: float, hard_timeout: Callable[[str], None] | None) -> None:
        self.seconds = seconds
        self.grace = grace
        self.hard_timeout = hard_timeout
        self._armed = seconds is not None and threading.current_thread() is threading.main_thread()
        self._old: Any = None
        self._done = threading.Event()

    def _alarm(self, signum: int, frame: Any) -> None:
        raise ProgramTimeout(f"timed out after {self.seconds:g} s (program.timeout)")

    def _watch(self) -> None:
        assert self.seconds is not None and self.hard_timeout is not None
        if not self._done.wait(self.seconds + self.grace):
            self.hard_timeout(f"timed out after {self.seconds:g} s (program.timeout) and did not stop within "
                              f"{self.grace:g} s; its worker process was ended")

    def __enter__(self) -> _Deadline:
        if self._armed:
            self._old = signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        if self.seconds is not None and self.hard_timeout is not None:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


class _StopWatch:
    """Tells a stop delivered to the process (SIGINT, SIGTERM) from a KeyboardInterrupt or SystemExit that the
    user's function raised itself.

    Both reach ``_run_function`` as the same exception types: the worker's handlers raise StopRequested, and
    the inline executor keeps Python's own SIGINT handler, which raises KeyboardInterrupt. So while the function
    runs, each Python-level handler of those signals is wrapped: the wrapper calls it and keeps the exception it
    raised (``stop``); an exception with no ``stop`` came from the user's code. Wrapping whatever handler is in
    place, rather than a flag set by the worker's own handler, covers every executor (and
    ``_thread.interrupt_main``, which also goes through the SIGINT handler). Handlers can only be set in the
    main thread; elsewhere no signal reaches the function's thread, so any KeyboardInterrupt there is the
    user's. The handlers in place before are put back afterwards, also when the function replaced them."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop: BaseException | None = None
        self._saved: dict[int, Any] = {}

    def _wrap(self, handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        def wrapper(signum: int, frame: Any) -> Any:
            try:
                return handler(signum, frame)
            except BaseException as exc:
                self.stop = exc
                raise
        return wrapper

    def __enter__(self) -> _StopWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                handler = signal.getsignal(sig)
                if handler is None:  # set outside Python: cannot be put back
                    continue
                self._saved[sig] = handler
                if callable(handler):  # SIG_DFL / SIG_IGN raise nothing to tell apart
                    signal.signal(sig, self._wrap(handler))
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _run_function(cfg: Any, info: dict[str, Any], should_prune: Callable[[int, float], bool] | None,
                  hard_timeout: Callable[[str], None] | None) -> RunResult:
    fn = load_function(cfg.program.function, cfg.program.cwd)
    trial = Trial(info, DirectChannel(should_prune))
    start = time.time()
    # The watch spans the sorting of the outcome too: a stop that lands after the function returned is still
    # seen as one (after the watch, the restored handlers raise it outside this try).
    with _StopWatch() as watch:
        try:
            with _Deadline(cfg.program.timeout, max(cfg.program.kill_grace, 5.0), hard_timeout):
                returned = fn(trial)
        except BaseException as exc:  # noqa: BLE001 - sorted below: a stop, a prune, or the trial failing
            if watch.stop is not None:  # a real stop: the trial is given back, whatever the function made of it
                if exc is watch.stop:
                    raise
                raise watch.stop from None
            if isinstance(exc, optuna.TrialPruned):
                last = trial.reports[-1]["val_loss"] if trial.reports else math.nan
                return _result(cfg, info, "pruned", last, trial.reports, trial.metrics, time.time() - start,
                               "pruned")
            if isinstance(exc, ProgramTimeout):
                raise ProgramError(f"{exc}\n{_last_frames()}") from None
            if isinstance(exc, Exception):  # the user's error, kept with the trial
                raise ProgramError(traceback.format_exc()) from None
            # KeyboardInterrupt, SystemExit... that the user's code raised with no stop signal: a failed trial like
            # any other (let through, it ended the worker and the trial was re-queued again and again)
            raise ProgramError(f"{_user_base_exception(exc)}\n{traceback.format_exc()}") from None
        if watch.stop is not None:  # the function caught the stop and returned: the stop still holds
            raise watch.stop
    value, metrics, reason = _final_value(returned, trial)
    return _result(cfg, info, "complete", value, trial.reports, metrics, time.time() - start, reason)


def _user_base_exception(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (f"the function raised SystemExit({exc.code!r}) (sys.exit() or exit()); a function program "
                "returns its loss instead of exiting")
    name = type(exc).__name__
    text = f"the function raised {name}: {exc}" if str(exc) else f"the function raised {name}"
    if isinstance(exc, KeyboardInterrupt):
        text += " (no stop signal reached the worker: the function raised it itself)"
    return text


def _last_frames() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-8:])


# ------------------------------------------------------------------- command
def fill(arg: str, values: dict[str, Any]) -> str:
    """``{name}`` placeholders in one argument, from ``values`` (an unknown name is an error)."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise ProgramError(f"program.command: no value for placeholder {{{m.group(1)}}}")
        v = values[m.group(1)]
        return repr(v) if isinstance(v, float) else str(v)

    return _PLACEHOLDER.sub(sub, arg)


def command_values(info: dict[str, Any]) -> dict[str, Any]:
    """What a command's placeholders can name: the point's axes, the params, and the trial's fields."""
    values: dict[str, Any] = {}
    for k, v in info["params"].items():
        if isinstance(v, dict):  # role_lr / role_init: {role_lr.hidden}
            values.update({f"{k}.{r}": x for r, x in v.items()})
        else:
            values[k] = v
    values.update(info["point"])
    values.update(trial=info["number"], trial_dir=info["dir"], width=info["width"], depth=info["depth"],
                  base_width=info["base_width"], base_depth=info["base_depth"], recipe=info["recipe"],
                  optimizer=info["optimizer"], sweep=info["sweep"], python=sys.executable)
    return values


def _die_with_parent(parent: int | None = None) -> None:
    """In the child before exec: SIGKILL it when the worker that started it dies (Linux). A worker that died
    before the request was made is not watched for: the child checks it is still the worker's, else exits."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if parent is not None and os.getppid() != parent:
            os._exit(1)


try:  # resolved once in the worker, so the forked child calls no loader
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


class HeldStops:
    """Holds SIGINT and SIGTERM for the length of a block; :meth:`deliver` raises them afterwards.

    Used where a stop must not land: while a command is started (``Popen`` with a ``preexec_fn`` runs Python's
    at-fork hooks, and an exception a signal handler raises inside one is printed and dropped: the stop was
    lost and the worker ran on, taking trials), while its processes are ended, and while a worker takes trials
    (:class:`proxytune.sweep.worker._HoldStops`). Only Python handlers are held (the default and ignore
    dispositions raise nothing), and only in the main thread, the one place handlers can be set."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> HeldStops:
        self.caught: list[int] = []
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            try:
                for sig in self._SIGNALS:
                    handler = signal.getsignal(sig)
                    if callable(handler):
                        self.saved[sig] = handler
                        signal.signal(sig, self._hold)
            except BaseException:  # a stop that came before the hold was in place: no handler is left changed
                self._restore()
                raise
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        self.caught.append(signum)

    def _restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def deliver(self) -> None:
        caught, self.caught = self.caught, []
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # to the handler put back: StopRequested, KeyboardInterrupt, ...


def _run_command(cfg: Any, info: dict[str, Any], should_prune: Callable[[int, float], bool] | None,
                 on_start: Callable[[dict[str, Any]], None] | None) -> RunResult:
    prog = cfg.program
    folder = Path(info["dir"])
    values = command_values(info)
    argv = [fill(a, values) for a in prog.command]
    trial_file = folder / "trial.json"
    trial_file.write_text(json.dumps(info, indent=1))
    reports_path = Path(info["reports"])
    decisions_path = Path(info["decisions"])
    env = {**os.environ, **prog.env, ENV_VAR: str(trial_file)}
    start = time.time()
    with (folder / "stdout.log").open("wb") as out, (folder / "stderr.log").open("wb") as err:
        held = HeldStops()
        try:
            with held:
                proc = subprocess.Popen(argv, cwd=prog.cwd, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        except OSError as exc:
            held.deliver()
            raise ProgramError(f"program.command {argv[0]!r} could not start: {exc}") from None
        reader = _ReportReader(reports_path)
        pruned_at: float | None = None
        timed_out = False
        try:
            if on_start is not None:
                on_start({"pid": proc.pid, "trial_file": str(trial_file)})
            held.deliver()  # a stop that came while it started: now, with the command in hand to stop
            while True:
                rc = proc.poll()
                for rec in reader.read():
                    if "report" in rec:
                        rep = rec["report"]
                        decision = bool(should_prune(int(rep["step"]), float(rep["val_loss"]))) \
                            if should_prune is not None else False
                        if info["pruning"]:
                            with decisions_path.open("a") as fh:
                                fh.write(json.dumps({"prune": decision}) + "\n")
                        if decision and pruned_at is None:
                            pruned_at = time.time()
                if rc is not None:
                    break
                now = time.time()
                if prog.timeout is not None and now - start > prog.timeout:
                    timed_out = True
                    break
                if pruned_at is not None and now - pruned_at > max(prog.kill_grace, 1.0) + 5:
                    break  # told to stop and still running: stop it
                time.sleep(0.02 if info["pruning"] else 0.1)
        finally:
            # However the trial ends (exit, timeout, prune, a stop): nothing it started may run on (and hold a GPU).
            _stop_group(proc, prog.kill_grace, str(trial_file))
        for rec in reader.read():  # anything written just before it exited
            if "report" in rec and should_prune is not None:
                should_prune(int(rec["report"]["step"]), float(rec["report"]["val_loss"]))
    wall = time.time() - start
    reports = reader.reports
    final = reader.final
    if timed_out:
        raise ProgramError(f"timed out after {prog.timeout:g} s (program.timeout); the command was stopped\n"
                           + _tail(folder / "stderr.log"))
    if pruned_at is not None:
        last = reports[-1]["val_loss"] if reports else math.nan
        return _result(cfg, info, "pruned", last, reports, reader.metrics, wall, "pruned")
    if proc.returncode != 0:
        how = (f"killed by signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        raise ProgramError(f"the command ended with {how}: {' '.join(argv)}\n--- stderr (last lines) ---\n"
                           + _tail(folder / "stderr.log"))
    if final is not None:
        return _result(cfg, info, "complete", final, reports, reader.metrics, wall)
    if reports:
        return _result(cfg, info, "complete", reports[-1]["val_loss"], reports, reader.metrics, wall,
                       "no final result: the last report is the result")
    raise ProgramError("the command exited 0 without a result: call trial.finish(loss) (or trial.report) from "
                       f"proxytune.Trial.current(); command: {' '.join(argv)}\n" + _tail(folder / "stderr.log"))


class _ReportReader:
    """Reads the complete lines a command appended to its reports file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.line = 0  # complete lines read so far, to name a bad one
        self.reports: list[dict[str, float]] = []
        self.final: float | None = None
        self.metrics: dict[str, float] = {}

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[:end].split(b"\n"):
            self.line += 1
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # not ours (a line the program wrote by hand): skip it
            if not isinstance(rec, dict):
                continue
            if "report" in rec or "final" in rec:
                rec = self._check(rec, line)  # ours: a bad one fails the trial, naming the line
            if "report" in rec:
                self.reports.append(rec["report"])
            if "final" in rec:
                self.final = rec["final"]
                self.metrics.update(rec["metrics"])
            out.append(rec)
        return out

    def _check(self, rec: dict[str, Any], line: bytes) -> dict[str, Any]:
        """``rec`` with its numbers as floats and its step as an int; ProgramError quoting the line when a report
        or final record is not what ``Trial.report`` / ``Trial.finish`` write."""
        def bad(why: str) -> ProgramError:
            text = line.decode(errors="replace").strip()
            text = text if len(text) <= 300 else text[:300] + "..."
            return ProgramError(f"reports file line {self.line} is not a valid report: {text}: {why}\n(file: "
                                f"{self.path}; proxytune.Trial.current().report(step, loss) and .finish(loss) write "
                                "valid lines)")

        def floats(d: dict[str, Any], skip: str = "") -> dict[str, float]:
            out: dict[str, float] = {}
            for k, v in d.items():
                if k == skip:
                    continue
                x = as_real(v)
                if x is None:
                    raise bad(f"{k!r} is {show_value(v)}, not a number")
                out[k] = x
            return out

        rec = dict(rec)
        if "report" in rec:
            rep = rec["report"]
            if not isinstance(rep, dict):
                raise bad(f"'report' is {show_value(rep)}, not an object")
            for key in ("step", "val_loss"):
                if key not in rep:
                    raise bad(f"missing {key!r}")
            try:
                step = check_step(rep["step"], self.reports[-1]["step"] if self.reports else None)
            except ValueError as exc:
                raise bad(str(exc)) from None
            rec["report"] = {"step": step, **floats(rep, skip="step")}
        if "final" in rec:
            final = as_real(rec["final"])
            if final is None:
                raise bad(f"'final' is {show_value(rec['final'])}, not a number")
            metrics = rec.get("metrics")
            if metrics is not None and not isinstance(metrics, dict):
                raise bad(f"'metrics' is {show_value(metrics)}, not an object")
            rec["final"], rec["metrics"] = final, floats(metrics or {})
        return rec


def _stop_group(proc: subprocess.Popen[bytes], grace: float, trial_file: str | None = None) -> None:
    """End every process of a command trial: its process group, and the descendants that left it (``setsid``)
    found by the trial's ``PROXYTUNE_TRIAL`` marker. SIGTERM first, SIGKILL to what is left after ``grace``
    seconds; returns at once when the command exited and left nothing behind.

    Stops are held meanwhile (the runner's SIGTERM right after a terminal's Ctrl-C, or sent again): one that
    cut this short would leave processes that nobody ends, the trial being given back rather than re-queued as
    a dead worker's. It is raised once they are gone."""
    marker = _marker(trial_file) if trial_file else None
    held = HeldStops()
    with held:
        if proc.poll() is None or _trial_pids(proc.pid, marker) or not _HAVE_PROC:
            _signal_trial(proc, marker, signal.SIGTERM)
            deadline = time.time() + grace
            while time.time() < deadline and (proc.poll() is None or _trial_pids(proc.pid, marker)):
                time.sleep(0.1)
            for _ in range(20):  # a process that forks while it is killed leaves a child: look again
                _signal_trial(proc, marker, signal.SIGKILL)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    break  # unkillable (stuck in the kernel): nothing more to do here
                if not _trial_pids(proc.pid, marker):
                    break
                time.sleep(0.05)  # killed ones take a moment to exit
    held.deliver()


_HAVE_PROC = Path("/proc/self/stat").exists()


def _marker(trial_file: str) -> bytes:
    return f"{ENV_VAR}={trial_file}".encode() + b"\0"


def _trial_pids(pgid: int | None, marker: bytes | None) -> list[int]:
    """Live (not zombie) processes in process group ``pgid`` or whose environment holds ``marker``; this
    process excluded. Empty where there is no /proc."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            if pid == me:
                continue
            stat = (entry / "stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2:].split()  # state, ppid, pgrp, ... (the name may hold spaces)
            if fields[0] in (b"Z", b"X"):
                continue
            if (pgid is not None and int(fields[2]) == pgid) or (
                    marker is not None and marker in (entry / "environ").read_bytes()):
                out.append(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return out


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes on this machine whose environment sets ``name=value`` (how a trial's leftovers, or a test's,
    are found without cgroups); empty where there is no /proc."""
    return _trial_pids(None, f"{name}={value}".encode() + b"\0")


def _signal_trial(proc: subprocess.Popen[bytes], marker: bytes | None, sig: int) -> None:
    if proc.returncode is None or not _HAVE_PROC:
        # Not reaped yet, the group id is still this command's; without /proc, the group is all there is.
        _killpg_quiet(proc.pid, sig)
    for pid in _trial_pids(proc.pid, marker):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _killpg_quiet(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kill_orphans(trial_file: str) -> int:
    """SIGKILL the processes on this machine that still run a trial whose worker died (found by their
    ``PROXYTUNE_TRIAL`` environment variable); returns how many."""
    n = 0
    for pid in _trial_pids(None, _marker(trial_file)):
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except OSError:
            continue
    return n


def check_program(cfg: Any) -> None:
    """Checks that need the machine (run before anything is written): the function imports, the command
    exists."""
    prog = cfg.program
    if prog.cwd is not None and not Path(prog.cwd).is_dir():
        raise SweepConfigError(f"program.cwd {prog.cwd!r} is not a directory")
    if prog.kind == "function":
        try:
            load_function(prog.function, prog.cwd)
        except ProgramError as exc:
            raise SweepConfigError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
            raise SweepConfigError(f"program.function {prog.function!r}: importing it failed: "
                                   f"{type(exc).__name__}: {exc}") from None
    else:
        exe = prog.command[0]
        if not _PLACEHOLDER.search(exe):
            found = shutil.which(exe, path=os.environ.get("PATH")) if os.sep not in exe else exe
            if os.sep in exe and prog.cwd and not Path(exe).is_absolute():
                found = str(Path(prog.cwd) / exe)
            if not found or not Path(found).exists():
                raise SweepConfigError(f"program.command: {exe!r} not found (not on PATH, nor a file)")
