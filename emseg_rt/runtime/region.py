"""`segment --roi`: a box of the input, in voxels, segmented as if it were the whole volume.

    --roi 100:300,0:2048,512:1536     z, y, x ranges (start:stop, stop excluded, as Python slices)
    --roi 100:300,:,:                  an empty bound is the volume's edge
    --roi 0:512,256:768                a 2D image: y, x only

The region is read through `io.volume.RegionView`; the label image has the region's shape and its translation
moves to the region's first voxel, so viewers place it over the input. Tiles see only the region: within a
plane a tile at the region's edge has no context beyond it (a z range only changes which planes are read, so
it equals the same planes of a run over the whole volume).
"""

from __future__ import annotations

from emseg_rt.errors import EmsegError

Range = tuple[int | None, int | None]
FORMS = "start:stop per axis, comma-separated, e.g. 100:300,0:2048,512:1536 or 100:300,:,:"


def parse_roi(text: str) -> tuple[Range, ...]:
    """`--roi` text → one (start, stop) per axis (None: the volume's edge); EmsegError (one line) otherwise."""
    parts = text.split(",")
    ranges = []
    for part in parts:
        bounds = part.strip().split(":")
        if len(bounds) != 2 or not all(b.strip() == "" or b.strip().isdigit() for b in bounds):
            raise EmsegError(f"--roi {text!r}: expected {FORMS}")
        start, stop = (int(b) if b.strip() else None for b in bounds)
        if start is not None and stop is not None and stop <= start:
            raise EmsegError(f"--roi {text!r}: {part.strip()} is empty (stop must be greater than start)")
        ranges.append((start, stop))
    if len(ranges) not in (2, 3):
        raise EmsegError(f"--roi {text!r}: give 3 ranges (z, y, x) for a volume or 2 (y, x) for an image")
    return tuple(ranges)


def roi_box(ranges: tuple[Range, ...], shape: tuple[int, ...], planar: bool,
            where: str) -> tuple[tuple[int, int], ...]:
    """The (start, stop) per axis of a (Z, Y, X) volume of `shape` that `ranges` names; EmsegError when it is
    not inside the volume. A 2D image (`planar`, shape (1, Y, X)) takes 2 ranges (y, x)."""
    if len(ranges) != (2 if planar else 3):
        wanted = "a 2D image: give 2 ranges (y, x)" if planar else "3D: give 3 ranges (z, y, x)"
        raise EmsegError(f"--roi: {where} is {wanted}")
    ranges = ((0, 1),) + tuple(ranges) if planar else tuple(ranges)
    box = []
    for axis, (start, stop), size in zip("zyx", ranges, shape):
        start, stop = 0 if start is None else start, size if stop is None else stop
        if stop > size or start >= size:
            raise EmsegError(f"--roi: {axis} {start}:{stop} is outside {where} ({axis} has {size} voxels)")
        box.append((start, stop))
    return tuple(box)
