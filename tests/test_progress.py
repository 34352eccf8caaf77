"""Plain progress lines for output that is not a terminal (proxytune.progress)."""

from __future__ import annotations

from proxytune.progress import EVERY_SECONDS, EVERY_TRIALS, PlainProgress, counts_line


def _counts(complete=0, failed=0, running=0, waiting=0):
    return {"complete": complete, "diverged": 0, "pruned": 0, "failed": failed, "running": running,
            "waiting": waiting}


def test_a_line_every_n_trials_or_every_30_seconds_and_one_per_stage_end():
    assert (EVERY_TRIALS, EVERY_SECONDS) == (10, 30.0)
    now = [0.0]
    lines: list[str] = []
    p = PlainProgress(lines.append, clock=lambda: now[0])
    p.log("stage A: 25 trials")
    p.poll("stage A", _counts(complete=4, running=2, waiting=19))
    assert lines == ["stage A: 25 trials"]  # 4 finished, 0 s: nothing yet
    p.poll("stage A", _counts(complete=10, running=2, waiting=13))
    assert lines[-1] == "  stage A: 10 of 25 trials finished (10 complete), 2 running, 13 waiting"
    now[0] = 20.0
    p.poll("stage A", _counts(complete=12, running=2, waiting=11))
    assert len(lines) == 2  # 2 more trials in 20 s
    now[0] = 41.0
    p.poll("stage A", _counts(complete=13, failed=1, running=2, waiting=9))
    assert lines[-1] == "  stage A: 14 of 25 trials finished (13 complete, 1 failed), 2 running, 9 waiting"
    p.poll("stage A", _counts(complete=24, failed=1))
    assert lines[-1] == "  stage A: 25 of 25 trials finished (24 complete, 1 failed)"
    p.log("stage B: 3 trials")  # stage A's last line already had its final counts: not repeated
    assert lines[-1] == "stage B: 3 trials" and len(lines) == 5
    p.poll("stage B", _counts(complete=3))
    p.close()
    assert lines[-1] == "  stage B: done, 3 of 3 trials finished (3 complete)"
    p.poll("stage C", _counts(failed=2))
    p.close("stopped")
    assert lines[-1] == "  stage C: stopped, 2 of 2 trials finished (2 failed)"
    assert counts_line(_counts()) == "0 of 0 trials finished"
