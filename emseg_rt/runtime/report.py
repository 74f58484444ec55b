"""What one `segment_volume` call did: totals and timings, the JSON of `--report` (its progress is
`emseg_rt.progress.Progress`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emseg_rt.io.outputs import write_file_atomic


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
    plane_seconds: dict[str, float] = field(default_factory=dict)  # --planes: seconds of each extra pass
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
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        write_file_atomic(path, lambda tmp: tmp.write_text(text), "--report")
