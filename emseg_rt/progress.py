"""The one progress reporter: a rich bar on a terminal, plain lines in logs, nothing when quiet.

Every long job reports through it (`segment`, its Dask driver, `train`, `pretrain`, `cluster fit`, `bench`):

    with Progress("segment", total=1000, done=600, unit="slices", say=print, per_unit=(0.26, "Mvox")) as progress:
        for block in blocks:
            ...
            progress.advance(8)

On a terminal (stderr is a TTY) it draws one rich bar. Elsewhere (batch jobs, CI, `| tee log`) it says at most one
line every `interval` seconds through `say`, e.g.

    segment: 120/1000 slices (12.0%), 3.41 slices/s, 0.89 Mvox/s, ETA 4m18s

and a final line (`segment: 1000/1000 slices in 5m02s`). Rates and the ETA count only the units done since the
reporter started (a resumed run starts at `done` > 0). `status` carries a job's own figures (a loss).

Two more promises, on a terminal and in logs alike:

- **An estimate up front.** Once the first few units are done (`ESTIMATE_UNITS`, or one unit after `interval`
  seconds), one line says how long the rest will take at the rate measured so far, when that is a minute or
  more: `pretraining: about 9h56m42s for the 2797 epochs left (12.80 s/epoch over the first 3 epochs)`.
- **A line every `interval` seconds in logs, even inside one long unit** (a vit-h bench measurement, an export
  step, K-means): a heartbeat thread repeats the current line when nothing was said for `interval` seconds.

Jobs counted in uneven named steps (`export`) call `step(message)` as each starts: in logs every step is a line.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

Say = Callable[[str], None]

ESTIMATE_UNITS = 3  # units measured before the estimate line (or one unit once `interval` seconds passed)
ESTIMATE_MIN_SECONDS = 60.0  # no estimate line for the rest of a job shorter than this


def format_duration(seconds: float) -> str:
    """Seconds → `42s`, `4m18s` or `1h05m02s` (rounded to the second)."""
    total = round(max(0.0, float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Progress of one job over `total` units (None: unknown until `update(total=...)`).

    label:    the job's name, the first word of every line and of the bar.
    done:     units already done before this run (resume); not counted in rates.
    say:      where lines go when stderr is not a terminal (None: no lines).
    enabled:  False (`--quiet`, or the caller asked for no progress): neither bar nor lines.
    per_unit: (scale, name): a second rate, `rate * scale name/s` (e.g. voxels per slice / 1e6, "Mvox").
    tty:      draw the bar (default: whether stderr is a terminal).
    estimate: say the estimate line once the first units are done (module docstring).
    heartbeat: in logs, repeat the current line every `interval` seconds while no unit finishes.
    stop:     where this run ends when before `total` (training's `--stop-after`): the ETA and the estimate
              count the units to it.
    listener: called as listener(done, total) after every update, bar or lines or neither (a GUI's progress bar,
              e.g. the napari widget's); an exception it raises stops the job between units (its Cancel).
    """

    def __init__(self, label: str, total: int | None, *, done: int = 0, unit: str = "slices", say: Say | None = None,
                 enabled: bool = True, per_unit: tuple[float, str] | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None, estimate: bool = True,
                 heartbeat: bool = True, stop: int | None = None,
                 listener: Callable[[int, int | None], None] | None = None) -> None:
        self.label, self.total, self.done, self.unit, self.stop = label, total, done, unit, stop
        self.listener = listener
        self.computed, self.status, self.per_unit = 0, "", per_unit
        self.say, self.interval, self.clock = say, interval, clock
        self.started = self.last_said = clock()
        use_bar = enabled and (sys.stderr.isatty() if tty is None else tty)
        self._lines = enabled and not use_bar and say is not None
        self._estimate_due = estimate and (use_bar or self._lines)
        self._steps_started = self._lines_said = 0
        self._lock = threading.RLock()  # the heartbeat thread and the job's thread both say lines
        self._bar: Any = _RichBar(self) if use_bar else None
        self._heartbeat = _Heartbeat(self) if heartbeat and self._lines else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(said=exc[0] is None)

    def advance(self, units: int = 1, status: str | None = None) -> None:
        """`units` more done (and the job's own figures, e.g. 'loss 0.213')."""
        self.update(self.done + units, status=status)

    def update(self, done: int, total: int | None = None, status: str | None = None) -> None:
        """Set the units done (and the total, once known); a line when `interval` seconds passed since the last."""
        with self._lock:
            self.computed += done - self.done
            self.done = done
            self.total = self.total if total is None else total
            self.status = self.status if status is None else status
            if self._bar is not None:
                self._bar.refresh()
            now = self.clock()
            if self._estimate_due:
                self._say_estimate(now - self.started)
            if self._lines and now - self.last_said >= self.interval:
                self._say_line(now)
        if self.listener is not None:  # outside the lock: it may raise to stop the job
            self.listener(self.done, self.total)

    def step(self, message: str) -> None:
        """A job counted in named steps (`Say`-shaped, e.g. export's): the step before is done and `message` is
        the one now running; in logs each step is said at once."""
        with self._lock:
            said = self._lines_said
            self.update(self.done + (1 if self._steps_started else 0), status=message)
            self._steps_started += 1
            if self._lines and self._lines_said == said:
                self._say_line(self.clock())

    def _say_line(self, now: float) -> None:
        self.last_said = now
        self._lines_said += 1
        self.say(self.line(now - self.started))  # type: ignore[misc]

    def _say_estimate(self, elapsed: float) -> None:
        """The estimate line, once: after `ESTIMATE_UNITS` units (or one, once `interval` seconds passed), when
        the rest takes `ESTIMATE_MIN_SECONDS` or more at the rate measured so far."""
        if self.total is None or self.computed < 1 or elapsed <= 0:
            return
        if self.computed < ESTIMATE_UNITS and elapsed < self.interval:
            return
        self._estimate_due = False
        line = self.estimate_line(elapsed)
        if line is None:
            return
        if self._bar is not None:
            self._bar.note(line)
        elif self._lines:
            self.say(line)  # type: ignore[misc]

    def estimate_line(self, elapsed: float) -> str | None:
        """E.g. `pretraining: about 9h56m42s for the 2797 epochs left (12.80 s/epoch over the first 3 epochs)`;
        None when the rest takes less than `ESTIMATE_MIN_SECONDS` (or nothing is known yet)."""
        if self.total is None or self.computed < 1 or elapsed <= 0:
            return None
        rate = self.computed / elapsed
        left = self._left()
        if left / rate < ESTIMATE_MIN_SECONDS:
            return None
        one = self.unit.removesuffix("s")
        speed = f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.2f} s/{one}"
        return (f"{self.label}: about {format_duration(left / rate)} for the {left} {self.unit} left ({speed} over "
                f"the first {self.computed} {self.unit if self.computed != 1 else one})")

    def line(self, elapsed: float) -> str:
        """E.g. `segment: 120/1000 slices (12.0%), 3.41 slices/s, 0.89 Mvox/s, ETA 4m18s`."""
        if self.total is None:
            return f"{self.label}: {self.done} {self.unit}, {format_duration(elapsed)} so far" + self._status()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        line = f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.1f}%)"
        rate = self.computed / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return line + f", {format_duration(elapsed)} so far, ETA unknown" + self._status()
        line += f", {rate:.2f} {self.unit}/s"
        if self.per_unit is not None:
            line += f", {rate * self.per_unit[0]:.2f} {self.per_unit[1]}/s"
        return line + f", ETA {format_duration(self._left() / rate)}" + self._status()

    def _left(self) -> int:
        """Units left to this run's end (`stop`, else `total`)."""
        end = self.total if self.stop is None or self.total is None else min(self.stop, self.total)
        return max(0, (end or 0) - self.done)

    def _status(self) -> str:
        return f"; {self.status}" if self.status else ""

    def close(self, said: bool = True) -> None:
        """Stop the bar; in logs say the final line (`segment: 1000/1000 slices in 5m02s`) unless `said` is False."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        with self._lock:
            if said and self._steps_started:  # a job in steps that ended well: its last step is done too
                self.computed, self.done, self._steps_started = self.computed + 1, self.done + 1, 0
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if self._lines and said:
                count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
                self.say(f"{self.label}: {count} {self.unit} in "  # type: ignore[misc]
                         f"{format_duration(self.clock() - self.started)}" + self._status())
                self._lines = False  # said once; a close(said=False) before it leaves the final line to come

    def beat(self) -> None:
        """The heartbeat: the current line, when `interval` seconds passed since the last line (logs only)."""
        with self._lock:
            now = self.clock()
            if self._lines and now - self.last_said >= self.interval:
                self._say_line(now)


class _Heartbeat:
    """A daemon thread calling `Progress.beat` every `interval` seconds until stopped, or until its `Progress` is
    gone (a job that raised before closing it): logs hear from a job whose single unit takes minutes. It holds
    the reporter weakly, so an abandoned reporter is collected and its heartbeat ends."""

    def __init__(self, progress: Progress) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(weakref.ref(progress), progress.interval),
                                       name=f"progress {progress.label}", daemon=True)
        self.thread.start()

    def _run(self, reporter: weakref.ref[Progress], interval: float) -> None:
        while not self.stopped.wait(min(interval, threading.TIMEOUT_MAX)):
            progress = reporter()
            if progress is None:
                return
            progress.beat()
            del progress

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


class _RichBar:
    """The terminal face of a `Progress`: one rich bar with count, rate, ETA and the job's status."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bar = RichProgress(TextColumn(progress.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[status]}"), transient=False,
                                console=Console(stderr=True))
        self.task = self.bar.add_task(progress.label, total=progress.total, completed=progress.done, rate="",
                                      status="")
        self.bar.start()

    def refresh(self) -> None:
        progress = self.progress
        elapsed = progress.clock() - progress.started
        rate = progress.computed / elapsed if elapsed > 0 else 0.0
        text = f"{rate:.2f} {progress.unit}/s" if rate > 0 else ""
        if rate > 0 and progress.per_unit is not None:
            text += f"  {rate * progress.per_unit[0]:.2f} {progress.per_unit[1]}/s"
        self.bar.update(self.task, completed=progress.done, total=progress.total, rate=text, status=progress.status)

    def note(self, line: str) -> None:
        """One line printed above the bar (the estimate)."""
        self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.refresh()
        self.bar.stop()
