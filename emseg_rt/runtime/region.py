"""`segment --roi`: a box of the input, in voxels or physical units, segmented as if it were the whole volume.

    --roi 100:300,0:2048,512:1536     z, y, x ranges (start:stop, stop excluded, as Python slices)
    --roi 100:300,:,:                  an empty bound is the volume's edge
    --roi 0:512,256:768                a 2D image: y, x only
    --roi 0.4um:1.2um,10um:20um,:      physical positions (nm, um, µm, mm, pm, angstrom, m; any bound)

A physical range [a, b) holds the voxels whose position (translation + index · voxel size, the input's own
metadata and unit) lies in it; an input whose axis has no unit takes voxels only on that axis.

The region is read through `io.volume.RegionView`; the label image has the region's shape and its translation
moves to the region's first voxel, so viewers place it over the input. Tiles see only the region: within a
plane a tile at the region's edge has no context beyond it (a z range only changes which planes are read, so
it equals the same planes of a run over the whole volume).
"""

from __future__ import annotations

import math
import re
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import unit_name

Bound = int | tuple[float, str] | None  # voxels, (value, OME unit name), or the volume's edge
Range = tuple[Bound, Bound]
FORMS = ("start:stop per axis, comma-separated, in voxels or with a unit, e.g. 100:300,0:2048,512:1536, "
         "100:300,:,: or 0.4um:1.2um,:,:")
METRES = {"meter": 1.0, "millimeter": 1e-3, "micrometer": 1e-6, "nanometer": 1e-9, "angstrom": 1e-10,
          "picometer": 1e-12}
_BOUND = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([^\d\s.].*?)?\s*$")


def _bound(text: str, roi: str) -> Bound:
    """One bound of `--roi`: '' (the edge), an integer voxel index, or a number with a length unit."""
    if not text.strip():
        return None
    match = _BOUND.match(text)
    if match is None:
        raise EmsegError(f"--roi {roi!r}: expected {FORMS}")
    number, unit = match.groups()
    if unit is None:
        if not number.isdigit():
            raise EmsegError(f"--roi {roi!r}: {number} is not a voxel index; give a unit (e.g. {number}um) for a "
                             "physical position")
        return int(number)
    name = unit_name(unit)
    if name not in METRES:
        raise EmsegError(f"--roi {roi!r}: unknown unit {unit!r} (nm, um, µm, mm, pm, angstrom, m)")
    return float(number), name


def _compare(start: Bound, stop: Bound) -> float | None:
    """stop - start where both are voxels or both physical (in metres); None where they cannot be compared."""
    if start is None or stop is None or isinstance(start, int) != isinstance(stop, int):
        return None
    if isinstance(start, int):
        return stop - start
    return stop[0] * METRES[stop[1]] - start[0] * METRES[start[1]]


def parse_roi(text: str) -> tuple[Range, ...]:
    """`--roi` text → one (start, stop) per axis (None: the volume's edge); EmsegError (one line) otherwise."""
    parts = text.split(",")
    ranges = []
    for part in parts:
        bounds = part.strip().split(":")
        if len(bounds) != 2:
            raise EmsegError(f"--roi {text!r}: expected {FORMS}")
        start, stop = (_bound(b, text) for b in bounds)
        difference = _compare(start, stop)
        if difference is not None and difference <= 0:
            raise EmsegError(f"--roi {text!r}: {part.strip()} is empty (stop must be greater than start)")
        ranges.append((start, stop))
    if len(ranges) not in (2, 3):
        raise EmsegError(f"--roi {text!r}: give 3 ranges (z, y, x) for a volume or 2 (y, x) for an image")
    return tuple(ranges)


def roi_box(ranges: tuple[Range, ...], volume: Any, where: str) -> tuple[tuple[int, int], ...]:
    """The (start, stop) per axis of the (Z, Y, X) `volume` (an `io.Volume`) that `ranges` names; EmsegError when
    it is not inside the volume, or names a physical position on an axis without a unit. A 2D image (`planar`,
    shape (1, Y, X)) takes 2 ranges (y, x)."""
    shape, planar = volume.shape, volume.planar
    if len(ranges) != (2 if planar else 3):
        wanted = "a 2D image: give 2 ranges (y, x)" if planar else "3D: give 3 ranges (z, y, x)"
        raise EmsegError(f"--roi: {where} is {wanted}")
    ranges = ((0, 1),) + tuple(ranges) if planar else tuple(ranges)
    box = []
    for a, (axis, (start, stop), size) in enumerate(zip("zyx", ranges, shape)):
        start, stop = _voxel(start, volume, a, where), _voxel(stop, volume, a, where)
        start, stop = 0 if start is None else start, size if stop is None else stop
        if stop > size or start >= size or start < 0 or stop <= start:
            raise EmsegError(f"--roi: {axis} {start}:{stop} is outside {where} ({axis} has {size} voxels)")
        box.append((start, stop))
    return tuple(box)


def _voxel(bound: Bound, volume: Any, axis: int, where: str) -> int | None:
    """A bound as a voxel index along `axis`: the first voxel whose position is at or past a physical bound."""
    if bound is None or isinstance(bound, int):
        return bound
    value, unit = bound
    have = volume.units[axis] if axis < len(volume.units) else None
    if have not in METRES:
        raise EmsegError(f"--roi: {where} has no length unit on {'zyx'[axis]}; give that range in voxels")
    position = value * METRES[unit] / METRES[have]
    return max(0, math.ceil((position - volume.translation[axis]) / volume.voxel_size[axis] - 1e-9))
