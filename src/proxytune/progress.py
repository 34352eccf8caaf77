"""Progress as plain lines, for output that is not a terminal (a log file, a pipe, a CI job).

A progress bar redraws one line in place; off a terminal it prints nothing
(rich's live display is off there), so a long ``proxytune tune`` piped to a
file said nothing for hours. :class:`PlainProgress` prints instead one line
when a stage starts (the messages it is given), one line every
``EVERY_TRIALS`` finished trials or ``EVERY_SECONDS`` seconds, whichever
comes first, and one line with a stage's final counts when the next stage
starts or the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: a progress line after this many more trials have finished...
EVERY_TRIALS = 10
#: ...or after this many seconds, whichever comes first
EVERY_SECONDS = 30.0

_FINISHED = ("complete", "diverged", "pruned", "failed")


def finished_trials(counts: dict[str, int]) -> int:
    """Trials with a result (complete, diverged, pruned or failed)."""
    return sum(counts.get(k, 0) for k in _FINISHED)


def counts_line(counts: dict[str, int]) -> str:
    """``12 of 20 trials finished (10 complete, 2 failed), 4 running, 4 waiting``: the nonzero counts."""
    done = finished_trials(counts)
    total = done + counts.get("running", 0) + counts.get("waiting", 0)
    parts = [f"{counts[k]} {k}" for k in _FINISHED if counts.get(k)]
    line = f"{done} of {total} trials finished" + (f" ({', '.join(parts)})" if parts else "")
    return line + "".join(f", {counts[k]} {k}" for k in ("running", "waiting") if counts.get(k))


class PlainProgress:
    """``log(message)`` and ``poll(stage, counts)`` for a run of stages, printed through ``echo`` as plain lines.

    ``poll`` prints ``  <stage>: <counts>`` when ``every_trials`` more trials have finished since the stage's last
    line, or ``every_seconds`` have passed; a stage's final counts are printed once, when the next message or
    stage comes, or at :meth:`close`."""

    def __init__(self, echo: Callable[[str], None], *, every_trials: int = EVERY_TRIALS,
                 every_seconds: float = EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.echo = echo
        self.every_trials = every_trials
        self.every_seconds = every_seconds
        self.clock = clock
        self._stage: str | None = None
        self._counts: dict[str, int] | None = None
        self._printed: dict[str, int] | None = None  # the counts of the stage's last line
        self._last_done = 0
        self._last_time = 0.0

    def log(self, message: str) -> None:
        self._flush()
        self.echo(message)

    def poll(self, stage: str, counts: dict[str, int]) -> None:
        now = self.clock()
        if stage != self._stage:
            self._flush()
            self._stage, self._printed, self._last_done, self._last_time = stage, None, 0, now
        self._counts = dict(counts)
        done = finished_trials(counts)
        if done - self._last_done >= self.every_trials or now - self._last_time >= self.every_seconds:
            self._print(now)

    def close(self, how: str = "done") -> None:
        """Print the last stage's final counts (when its last line did not already show them), saying ``how`` it
        ended ("done", or "stopped" when the run stopped on an error or Ctrl-C)."""
        self._flush(how)

    def _print(self, now: float, how: str = "") -> None:
        assert self._counts is not None and self._stage is not None
        self.echo(f"  {self._stage}: " + (f"{how}, " if how else "") + counts_line(self._counts))
        self._printed = dict(self._counts)
        self._last_done, self._last_time = finished_trials(self._counts), now

    def _flush(self, how: str = "done") -> None:
        if self._stage is not None and self._counts is not None and self._counts != self._printed:
            self._print(self.clock(), how)
        self._stage, self._counts, self._printed = None, None, None
