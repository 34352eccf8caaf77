"""What a user's own training code can get wrong, and how a program sweep records it: a function that raises
KeyboardInterrupt or calls sys.exit() (a failed trial, not a stop, and not a dying worker), results that are not
real numbers, report steps that go back, and a malformed line in a command's reports file. A real stop (a
signal to the process) still gives the trial back."""

from __future__ import annotations

import json
import math
import signal
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from proxytune.sweep import Sweep
from proxytune.sweep.program import ProgramError, _ReportReader
from proxytune.sweep.trial import DirectChannel, Trial, as_real

USER = textwrap.dedent('''
    import json, os, signal, sys

    def interrupts(trial):
        trial.report(1, 2.0)
        raise KeyboardInterrupt("user pressed nothing")

    def exits(trial):
        sys.exit(0)

    def raises_base(trial):
        class Odd(BaseException):
            pass
        raise Odd("not an Exception")

    def returns_str(trial):
        return "1.5"

    def returns_bool(trial):
        return True

    def returns_none(trial):
        pass

    def returns_complex(trial):
        return 1.5 + 0j

    def returns_numpy_bool(trial):
        import numpy as np
        return np.bool_(True)

    def returns_dict_str(trial):
        return {"val_loss": "1.5", "tokens": 10}

    def returns_int(trial):
        return 3

    def returns_numpy(trial):
        import numpy as np
        return np.float32(1.5)

    def returns_tensor(trial):
        import torch
        return torch.tensor(1.5)

    def returns_nan(trial):
        trial.report(0, 3.0)
        return float("nan")

    def steps_back(trial):
        trial.report(10, 2.0)
        trial.report(5, 1.5)
        return 1.0

    def steps_repeat(trial):
        trial.report(5, 2.0)
        trial.report(5, 1.5)
        return 1.0

    def negative_step(trial):
        trial.report(-3, 2.0)
        return 1.0

    def reports_text(trial):
        trial.report(1, "1.5")
        return 1.0

    def finish_bool(trial):
        trial.finish(True)

    def signals_itself(trial):
        trial.report(1, 2.0)
        signal.raise_signal(signal.SIGINT)  # what a terminal's Ctrl-C does
        return 1.0

    def swallows_the_stop(trial):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # a training loop that stops early on Ctrl-C and returns what it has
        return 1.0

    LINES = {
        "missing-step": ['{"report": {"step": 1, "val_loss": 2.0}}', '{"report": {"val_loss": 1.0}}'],
        "missing-loss": ['{"report": {"step": 1}}'],
        "text-loss": ['{"report": {"step": 1, "val_loss": "1.5"}}'],
        "bool-loss": ['{"report": {"step": 1, "val_loss": true}}'],
        "not-an-object": ['{"report": [1, 2.0]}'],
        "step-back": ['{"report": {"step": 10, "val_loss": 2.0}}', '{"report": {"step": 5, "val_loss": 1.0}}'],
        "negative-step": ['{"report": {"step": -1, "val_loss": 2.0}}'],
        "final-text": ['{"final": "low"}'],
        "final-null": ['{"final": null}'],
        "metrics-text": ['{"final": 1.0, "metrics": {"tokens": "many"}}'],
        "other-lines": ["epoch 1 done", "[1, 2]", '{"note": "not a report"}', '{"report": {"step": 1, '
                        '"val_loss": 2.0}}', '{"final": 1.25, "metrics": {"tokens": 100}}'],
    }

    if __name__ == "__main__":
        info = json.load(open(os.environ["PROXYTUNE_TRIAL"]))
        mode = sys.argv[1]
        if mode == "trial-report":  # through proxytune.Trial, as a script should
            import proxytune as pt
            trial = pt.Trial.current()
            trial.report(10, 2.0)
            trial.report(5, 1.0)
            trial.finish(1.0)
            sys.exit(0)
        with open(info["reports"], "a") as fh:
            for line in LINES[mode]:
                fh.write(line + "\\n")
''')


def sweep(tmp_path: Path, program: dict, executor: dict | None = None, points: int = 1) -> Sweep:
    (tmp_path / "user.py").write_text(USER)
    return Sweep.from_dict({
        "name": "u",
        "program": {"cwd": str(tmp_path), **program},
        "base": {"width": 32, "depth": 2},
        "axes": {"width": [32], "log2_lr": [-7, -6, -5][:points]},
        "strategy": {"kind": "grid", "refine": False},
        "executor": executor or {"kind": "inline"},
        "runs_dir": str(tmp_path / "runs"),
    })


def fn(name: str) -> dict:
    return {"function": f"user.py:{name}"}


def only(sw: Sweep) -> dict:
    (r,) = sw.records()
    return r


# ------------------------------------------------- BaseException from the user
@pytest.mark.parametrize("executor", [{"kind": "inline"}, {"workers": 1, "max_attempts": 2, "lease_seconds": 20}],
                         ids=["inline", "worker-process"])
def test_a_function_raising_keyboard_interrupt_is_a_failed_trial_not_a_stop(tmp_path, executor):
    sw = sweep(tmp_path, fn("interrupts"), executor)
    counts = sw.run()  # ends: no KeyboardInterrupt out of it, no "workers keep exiting"
    assert counts["failed"] == 1 and counts["waiting"] == counts["running"] == 0, counts
    r = only(sw)
    assert "the function raised KeyboardInterrupt: user pressed nothing" in r["error"]
    assert "Traceback" in r["error"]
    trials = sw.store().trials()
    assert len(trials) == 1 and not any(t.user_attrs.get("worker_died") for t in trials)  # one attempt, no requeue
    # a rerun tries the failed point once more, like any failed trial, and ends again
    counts = sweep(tmp_path, fn("interrupts"), executor).run()
    assert counts["failed"] == 2 and counts["waiting"] == counts["running"] == 0
    assert [t.state for t in sw.store().trials()] == [TrialState.FAIL] * 2


def test_sys_exit_in_a_worker_process_is_a_failed_trial_not_a_dead_worker(tmp_path):
    sw = sweep(tmp_path, fn("exits"), {"workers": 1, "max_attempts": 3, "lease_seconds": 20})
    counts = sw.run()
    assert counts["failed"] == 1, counts
    r = only(sw)
    assert "the function raised SystemExit(0)" in r["error"] and "worker died" not in r["error"]
    assert len(sw.store().trials()) == 1


@pytest.mark.parametrize("name, needle", [
    ("exits", "the function raised SystemExit(0)"),
    ("raises_base", "the function raised Odd: not an Exception"),
])
def test_other_base_exceptions_are_failed_trials(tmp_path, name, needle):
    sw = sweep(tmp_path, fn(name))
    assert sw.run()["failed"] == 1
    assert needle in only(sw)["error"]


def test_a_keyboard_interrupt_in_a_function_off_the_main_thread_is_a_failed_trial(tmp_path):
    sw = sweep(tmp_path, fn("interrupts"))
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(counts=sw.run()))
    t.start()
    t.join(60)
    assert out["counts"]["failed"] == 1 and "KeyboardInterrupt" in only(sw)["error"]


# -------------------------------------------------------------- a real stop
@pytest.mark.parametrize("name", ["signals_itself", "swallows_the_stop"])
def test_a_real_ctrl_c_still_stops_and_gives_the_trial_back(tmp_path, name):
    # Python's own Ctrl-C handler, as in a terminal. A process started in the background by a shell without job
    # control inherits SIGINT ignored, and Python then leaves it ignored: the signal would do nothing at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sw = sweep(tmp_path, fn(name))
        with pytest.raises(KeyboardInterrupt):
            sw.run()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
    store = sw.store()
    assert not store.trials((TrialState.RUNNING,)) and not store.trials((TrialState.COMPLETE,))
    assert [t.user_attrs["status"] for t in store.trials((TrialState.FAIL,))] == ["requeued"]  # given back
    assert len(store.trials((TrialState.WAITING,))) == 1


# ------------------------------------------------------------ what it returns
@pytest.mark.parametrize("name, needle", [
    ("returns_str", "the function returned '1.5' (str); return a float loss"),
    ("returns_bool", "the function returned True (bool); return a float loss"),
    ("returns_none", "the program finished without a result"),
    ("returns_complex", "the function returned (1.5+0j) (complex)"),
    ("returns_numpy_bool", "True"),
    ("returns_dict_str", "the function returned a dict whose 'val_loss' is '1.5' (str)"),
    ("finish_bool", "trial.finish: the loss is True (bool), not a number"),
    ("reports_text", "trial.report: the value is '1.5' (str), not a number"),
])
def test_a_result_that_is_not_a_real_number_is_refused(tmp_path, name, needle):
    sw = sweep(tmp_path, fn(name))
    assert sw.run()["failed"] == 1
    assert needle in only(sw)["error"]


@pytest.mark.parametrize("name, value", [("returns_int", 3.0), ("returns_numpy", 1.5), ("returns_tensor", 1.5)])
def test_numbers_of_any_real_kind_are_results(tmp_path, name, value):
    sw = sweep(tmp_path, fn(name))
    assert sw.run()["complete"] == 1
    assert only(sw)["val_loss"] == value


def test_a_nan_result_is_still_diverged(tmp_path):
    sw = sweep(tmp_path, fn("returns_nan"))
    sw.run()
    assert only(sw)["status"] == "diverged"


def test_as_real():
    for ok in (1, 2.5, np.float64(1), np.int32(2), np.array(1.5), torch.tensor(0.5), torch.tensor([0.5]), math.inf):
        assert isinstance(as_real(ok), float)
    for bad in (True, np.bool_(False), torch.tensor(True), "1.5", b"1", None, 1j, np.complex64(1), [1.0],
                np.ones(2), torch.ones(3), object()):
        assert as_real(bad) is None, bad


# --------------------------------------------------------------- report steps
@pytest.mark.parametrize("name, needle", [
    ("steps_back", "trial.report: step 5 is not after the last reported step 10; steps must increase"),
    ("steps_repeat", "trial.report: step 5 is not after the last reported step 5; steps must increase"),
    ("negative_step", "trial.report: step -3 is negative"),
])
def test_report_steps_must_increase_from_zero(tmp_path, name, needle):
    sw = sweep(tmp_path, fn(name))
    assert sw.run()["failed"] == 1
    assert needle in only(sw)["error"]


def test_trial_report_checks_steps_and_keeps_the_curve_unchanged():
    trial = Trial({"params": {}, "dir": "."}, DirectChannel(None))
    trial.report(0, 3.0)
    trial.report(np.int64(10), torch.tensor(2.0))
    trial.report(12.0, 1.5)  # a whole number held in a float is a step
    for step, value, match in [(10, 1.0, "not after the last reported step 12"), (5, 1.0, "steps must increase"),
                               (-3, 1.0, "negative"), (13.5, 1.0, "not a whole number"),
                               (True, 1.0, "not a whole number"), (13, None, "not a number"),
                               (13, 1.0 + 0j, "not a number")]:
        with pytest.raises(ValueError, match=match):
            trial.report(step, value)
    with pytest.raises(ValueError, match="train_loss is 'x'"):
        trial.report(13, 1.0, train_loss="x")
    assert [r["step"] for r in trial.reports] == [0, 10, 12]


def test_a_command_whose_steps_go_back_fails_with_the_reason(tmp_path):
    sw = sweep(tmp_path, {"command": ["{python}", "user.py", "trial-report"]})
    assert sw.run()["failed"] == 1
    assert "trial.report: step 5 is not after the last reported step 10" in only(sw)["error"]


# -------------------------------------------------------- a command's reports
@pytest.mark.parametrize("mode, line, why", [
    ("missing-step", '2 is not a valid report: {"report": {"val_loss": 1.0}}', "missing 'step'"),
    ("missing-loss", '1 is not a valid report: {"report": {"step": 1}}', "missing 'val_loss'"),
    ("text-loss", '1 is not a valid report: {"report": {"step": 1, "val_loss": "1.5"}}',
     "'val_loss' is '1.5' (str), not a number"),
    ("bool-loss", "1 is not a valid report:", "'val_loss' is True (bool), not a number"),
    ("not-an-object", '1 is not a valid report: {"report": [1, 2.0]}', "'report' is [1, 2.0] (list), not an object"),
    ("step-back", '2 is not a valid report: {"report": {"step": 5, "val_loss": 1.0}}',
     "step 5 is not after the last reported step 10; steps must increase"),
    ("negative-step", "1 is not a valid report:", "step -1 is negative"),
    ("final-text", '1 is not a valid report: {"final": "low"}', "'final' is 'low' (str), not a number"),
    ("final-null", '1 is not a valid report: {"final": null}', "'final' is None (NoneType), not a number"),
    ("metrics-text", "1 is not a valid report:", "'tokens' is 'many' (str), not a number"),
])
def test_a_malformed_line_in_a_commands_reports_file_fails_the_trial_quoting_it(tmp_path, mode, line, why):
    sw = sweep(tmp_path, {"command": [sys.executable, "user.py", mode]})
    assert sw.run()["failed"] == 1
    error = only(sw)["error"]
    assert f"reports file line {line}" in error and why in error, error
    assert "KeyError" not in error and "Traceback" not in error


def test_lines_that_are_not_reports_are_skipped(tmp_path):
    sw = sweep(tmp_path, {"command": [sys.executable, "user.py", "other-lines"]})
    assert sw.run()["complete"] == 1
    r = only(sw)
    assert r["val_loss"] == 1.25 and r["tokens"] == 100 and r["steps_done"] == 1


def test_the_report_reader_counts_lines_across_reads(tmp_path):
    path = tmp_path / "reports.jsonl"
    reader = _ReportReader(path)
    path.write_text('{"report": {"step": 0, "val_loss": 3.0}}\nnoise\n{"report": {"step": 2, "val')
    assert [r["report"]["step"] for r in reader.read()] == [0]  # the half-written line waits
    with path.open("a") as fh:
        fh.write('_loss": NaN}}\n' + json.dumps({"report": {"step": 2, "val_loss": 1.0}}) + "\n")
    with pytest.raises(ProgramError, match=r"line 4 is not a valid report: .*step 2 is not after the last "
                                           r"reported step 2"):
        reader.read()
    assert [r["step"] for r in reader.reports] == [0, 2] and math.isnan(reader.reports[1]["val_loss"])
