"""The options of a `segment_volume` run, checked once at the boundary."""

from __future__ import annotations

from dataclasses import dataclass

from emseg_rt.constants import DEFAULT_LABEL_NAME
from emseg_rt.errors import EmsegError
from emseg_rt.tiling import BLENDS

AXES = ("z", "y", "x")


@dataclass(frozen=True)
class SegmentOptions:
    """How to tile, batch, write and resume (everything but the model and the backend).

    halo:   context pixels per tile side (None: tile // 8); blend: 'center' crop or 'gaussian' weighting.
    axis:   the axis planes are perpendicular to; block: planes per write block (= output shard, or chunk, depth).
    levels: pyramid levels of the label image (None: from the plane size); into_input: write the label
            image into the input image's labels/<label_name>.
    tta:    rotation test-time augmentation: every tile run turned by 0, 90, 180 and 270°, logits averaged.
    shards: zarr v3 outputs hold one shard file per write block (of chunks viewers read); False: one file per
            chunk (`--no-shards`; zarr v2 outputs never shard).
    planes: orthoplane fusion (`runtime.planes`): "xy,xz,yz" as given, or the axes the planes are
            perpendicular to once the request is checked (the first is `axis`); () or one: no fusion.
    """

    batch: int = 4
    halo: int | None = None
    blend: str = "center"
    axis: str = "z"
    block: int = 8
    resume: bool = False
    overwrite: bool = False
    probabilities: bool = False
    label_name: str = DEFAULT_LABEL_NAME
    prefetch: int = 2
    levels: int | None = None
    into_input: bool = False
    tta: bool = False
    shards: bool = True
    planes: str | tuple[str, ...] = ()

    def validate(self) -> SegmentOptions:
        """EmsegError naming the option when one is out of range; returns self."""
        if self.blend not in BLENDS:
            raise EmsegError(f"--blend {self.blend!r} must be one of {', '.join(BLENDS)}")
        if self.batch < 1:
            raise EmsegError(f"--batch {self.batch} must be >= 1")
        if self.block < 1:
            raise EmsegError(f"--block {self.block} must be >= 1")
        if self.axis not in AXES:
            raise EmsegError(f"--axis {self.axis!r} must be one of z, y, x")
        if self.levels is not None and not 1 <= self.levels <= 16:
            raise EmsegError(f"--levels {self.levels} must be between 1 and 16")
        if self.halo is not None and self.halo < 0:
            raise EmsegError(f"--halo {self.halo} must be >= 0")
        if not self.label_name or "/" in self.label_name or self.label_name.startswith("."):
            raise EmsegError(f"--label-name {self.label_name!r} must be a plain name (no '/', not hidden)")
        if self.resume and self.overwrite:
            raise EmsegError("--resume and --overwrite contradict each other (--resume finishes the existing output, "
                             "--overwrite replaces it); pass one of them")
        return self

    @property
    def extra_planes(self) -> tuple[str, ...]:
        """The axes of the passes fused into this run's own (`--planes` after the first)."""
        return tuple(self.planes[1:]) if isinstance(self.planes, tuple) else ()

    def halo_for(self, tile: int) -> int:
        return tile // 8 if self.halo is None else int(self.halo)

    def axis_index(self, axes: tuple[str, ...]) -> int:
        """Index of `axis` in the volume's axes (z, y, x order when the volume names none)."""
        return axes.index(self.axis) if self.axis in axes else AXES.index(self.axis)
