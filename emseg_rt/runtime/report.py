"""What one `segment_volume` call did: totals, timings (the JSON of `--report`), the progress bar (a terminal)
and progress lines (`ProgressLog`, for logs of batch jobs where stderr is not a terminal)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError


@dataclass
class SegmentReport:
    """Totals and timings of one `segment_volume` call (seconds).

    compute_seconds / tiles_computed is the backend's time per tile: the same `Backend.run` calls that
    `emseg-rt bench` times (`per_tile_seconds`).
    """

    input: str
    output: str
    label_path: str
    model: str
    backend: str
    device: str
    precision: str
    shape: tuple[int, ...]
    dtype: str
    axis: str
    tile: int
    halo: int
    blend: str
    batch: int
    block: int
    classes: tuple[str, ...]
    config_hash: str
    backend_identity: str = ""
    backend_choice: str = ""
    blocks_total: int = 0
    blocks_done_before: int = 0
    blocks_computed: int = 0
    slices_computed: int = 0
    tiles_computed: int = 0
    voxels_computed: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    read_seconds: float = 0.0
    compute_seconds: float = 0.0
    stitch_seconds: float = 0.0
    write_seconds: float = 0.0
    backend_idle_fraction: float = 0.0
    slices_per_second: float = 0.0
    voxels_per_second: float = 0.0
    normalisation: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)
    instances: dict = field(default_factory=dict)  # class → instance count (--instances)
    auto_points: int = 0  # --prompts auto: density peaks that became prompts in the blocks computed
    instance_seconds: float = 0.0
    complete: bool = False

    @property
    def per_tile_seconds(self) -> float:
        """Backend seconds per tile (padding tiles of a short last batch included in the time, not the count)."""
        return self.compute_seconds / self.tiles_computed if self.tiles_computed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_tile_seconds": self.per_tile_seconds}

    def finish(self, timings: dict[str, float], loop_seconds: float, wall_seconds: float) -> None:
        """Fill in the timings and rates from the streaming loop's measurements."""
        self.read_seconds, self.compute_seconds = timings["read"], timings["compute"]
        self.stitch_seconds, self.write_seconds = timings["stitch"], timings["write"]
        self.wall_seconds = wall_seconds
        if loop_seconds > 0:
            self.backend_idle_fraction = max(0.0, 1.0 - timings["compute"] / loop_seconds)
            self.slices_per_second = self.slices_computed / loop_seconds
            self.voxels_per_second = self.voxels_computed / loop_seconds

    def write_json(self, path: str | Path) -> None:
        """Write the report atomically (EmsegError when the location is not writable)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            raise EmsegError(f"cannot write report {path}: {exc.strerror}") from exc


def progress_bar(depth: int, pending_slices: int, plane_voxels: int):
    """A rich progress bar over the slices of one run: (bar, task id); bar.update(task, advance=n)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:  # type: ignore[override]
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("– slices/s", style="progress.data.speed")
            return Text(f"{speed:.2f} slices/s  {speed * plane_voxels / 1e6:.1f} Mvox/s", style="progress.data.speed")

    bar = Progress(TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), Rate(),
                   TextColumn("ETA"), TimeRemainingColumn(), transient=False)
    task = bar.add_task("segment", total=depth, completed=depth - pending_slices)
    bar.start()
    return bar, task


class ProgressLog:
    """Progress as plain lines for logs: at most one line every `interval` seconds, and a final one.

    `update(planes)` after each written block; `finish()` at the end. Rates and the ETA count only the planes
    computed in this run (a resumed run starts at `done_planes` > 0), timed from construction by `clock`.
    """

    def __init__(self, total_planes: int, done_planes: int = 0, *, say: Callable[[str], None], interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, voxels_per_plane: int | None = None) -> None:
        self.total_planes, self.done_planes, self.computed_planes = total_planes, done_planes, 0
        self.say, self.interval, self.clock, self.voxels_per_plane = say, interval, clock, voxels_per_plane
        self.started = self.last_said = clock()

    def update(self, planes: int) -> None:
        """Count `planes` more planes done; say a progress line if `interval` seconds passed since the last."""
        self.done_planes += planes
        self.computed_planes += planes
        now = self.clock()
        if now - self.last_said >= self.interval:
            self.last_said = now
            self.say(self.progress_line(now - self.started))

    def progress_line(self, elapsed: float) -> str:
        """E.g. `segment: 120/1000 slices (12.0%), 3.41 slices/s, 0.89 Mvox/s, ETA 4m18s`."""
        percent = 100.0 * self.done_planes / self.total_planes if self.total_planes else 100.0
        line = f"segment: {self.done_planes}/{self.total_planes} slices ({percent:.1f}%)"
        rate = self.computed_planes / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return line + ", ETA unknown"
        line += f", {rate:.2f} slices/s"
        if self.voxels_per_plane is not None:
            line += f", {rate * self.voxels_per_plane / 1e6:.2f} Mvox/s"
        remaining = max(0, self.total_planes - self.done_planes)
        return line + f", ETA {format_duration(remaining / rate)}"

    def finish(self) -> None:
        """Say the final line, e.g. `segment: 1000/1000 slices in 5m02s` (this run's time)."""
        elapsed = self.clock() - self.started
        self.say(f"segment: {self.done_planes}/{self.total_planes} slices in {format_duration(elapsed)}")


def format_duration(seconds: float) -> str:
    """Seconds → `42s`, `4m18s` or `1h05m02s` (rounded to the second)."""
    total = round(max(0.0, float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
