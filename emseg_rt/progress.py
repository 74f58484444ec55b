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
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

Say = Callable[[str], None]


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
    """

    def __init__(self, label: str, total: int | None, *, done: int = 0, unit: str = "slices", say: Say | None = None,
                 enabled: bool = True, per_unit: tuple[float, str] | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.computed, self.status, self.per_unit = 0, "", per_unit
        self.say, self.interval, self.clock = say, interval, clock
        self.started = self.last_said = clock()
        use_bar = enabled and (sys.stderr.isatty() if tty is None else tty)
        self._lines = enabled and not use_bar and say is not None
        self._bar: Any = _RichBar(self) if use_bar else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(said=exc[0] is None)

    def advance(self, units: int = 1, status: str | None = None) -> None:
        """`units` more done (and the job's own figures, e.g. 'loss 0.213')."""
        self.update(self.done + units, status=status)

    def update(self, done: int, total: int | None = None, status: str | None = None) -> None:
        """Set the units done (and the total, once known); a line when `interval` seconds passed since the last."""
        self.computed += done - self.done
        self.done = done
        self.total = self.total if total is None else total
        self.status = self.status if status is None else status
        if self._bar is not None:
            self._bar.refresh()
        now = self.clock()
        if self._lines and now - self.last_said >= self.interval:
            self.last_said = now
            self.say(self.line(now - self.started))  # type: ignore[misc]

    def line(self, elapsed: float) -> str:
        """E.g. `segment: 120/1000 slices (12.0%), 3.41 slices/s, 0.89 Mvox/s, ETA 4m18s`."""
        if self.total is None:
            return f"{self.label}: {self.done} {self.unit}" + self._status()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        line = f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.1f}%)"
        rate = self.computed / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return line + ", ETA unknown" + self._status()
        line += f", {rate:.2f} {self.unit}/s"
        if self.per_unit is not None:
            line += f", {rate * self.per_unit[0]:.2f} {self.per_unit[1]}/s"
        remaining = max(0, self.total - self.done)
        return line + f", ETA {format_duration(remaining / rate)}" + self._status()

    def _status(self) -> str:
        return f"; {self.status}" if self.status else ""

    def close(self, said: bool = True) -> None:
        """Stop the bar; in logs say the final line (`segment: 1000/1000 slices in 5m02s`) unless `said` is False."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._lines and said:
            count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
            self.say(f"{self.label}: {count} {self.unit} in {format_duration(self.clock() - self.started)}"  # type: ignore[misc]
                     + self._status())
            self._lines = False


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

    def stop(self) -> None:
        self.refresh()
        self.bar.stop()
