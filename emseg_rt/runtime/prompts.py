"""Point prompts for window-prompted models (Prompt-DAS): reading them, and cutting them per tile.

Points are given once for the whole volume, as voxel coordinates (z, y, x) of the segmented volume (its
array axes, level 0 of what `segment` reads) with a label, 1 positive or 0 negative:

    points = load_points("points.csv")                  # CSV z,y,x[,label] or a zarr array (N, 3|4)
    coords, labels = window_prompts(points, plane, "z", plan, max_points)   # (n_tiles, P, 2), (n_tiles, P)

A point belongs to the plane its coordinate along the slicing axis rounds to (half up: z = 2.5 → plane
3), and to every tile of that plane whose T×T window contains it: tile coordinates are
(x − x0, y − y0) from the tile's origin, kept where 0 <= x < T and 0 <= y < T. Rows past a tile's points
are padding (coordinates 0, label −1); a tile with no point is all padding, Prompt-DAS's prompt-free mode.
A tile holding more than P points keeps the P nearest its centre (`counts` says how many were dropped).

`--prompts auto` (Prompt-DAS's detection-to-segmentation loop): the model's centre-point density, blended
per plane, gives its local maxima above a threshold (`peak_points`: max-pool NMS, kernel 5, as the
Prompt-DAS code) as positive points of that plane (`peaks_to_points`), which then go through
`window_prompts` like given points.

Rotation test-time augmentation turns tiles with `np.rot90` (k quarter turns counter-clockwise on the
(T, T) axes) and their points with `rotate_points`: one turn maps pixel (x, y) to (y, T − 1 − x).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume
from emseg_rt.io.zarr_reader import multiscales_of
from emseg_rt.package import POINT_PROMPTS  # a window-prompted model's inputs (Prompt-DAS), the graph's names
from emseg_rt.tiling import TilePlan

MAX_POINTS = 10_000_000  # the most points a prompts file may hold (each is checked against every tile)
AXES = ("z", "y", "x")
COLUMNS = ("z", "y", "x", "label")
# Prompt-DAS code (util/point_prompt.py): heatmap >= 125 of 255, nms(kernel=5). Our density head is trained
# on peak-normalised targets (1 at a centre), so the code's 125/255 is 0.49 on our scale.
PEAK_THRESHOLD = 125 / 255
NMS_KERNEL = 5


@dataclass(frozen=True)
class PointSet:
    """Point prompts of a volume: points (N, 3) float64 z, y, x voxel coordinates; labels (N,) int64 1/0."""

    points: np.ndarray
    labels: np.ndarray
    source: str = "points"

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != points.shape[0]:
            raise EmsegError(f"{self.source}: {points.shape[0]} points but {labels.shape[0]} labels")
        if not np.isfinite(points).all():
            raise EmsegError(f"{self.source}: point coordinates must be finite numbers")
        if not np.isin(labels, (0, 1)).all():
            raise EmsegError(f"{self.source}: point labels must be 1 (positive) or 0 (negative)")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def digest(self) -> str:
        """sha256 of the points and labels (what enters a run's identity: other prompts, other run)."""
        h = hashlib.sha256(b"emseg-rt points v1")
        h.update(np.ascontiguousarray(self.points, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return h.hexdigest()


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def read_points_csv(path: str | Path) -> PointSet:
    """Points from a CSV file: columns z,y,x[,label] (label defaults to 1). An optional header row names the
    columns (any order; `label` optional); blank lines and lines starting with '#' are skipped. A bad row is
    an EmsegError naming its line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EmsegError(f"--prompts {path}: cannot read it ({type(exc).__name__})") from exc
    order: list[int] | None = None  # column index of z, y, x[, label]
    points: list[tuple[float, float, float]] = []
    labels: list[int] = []
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if order is None and not points and not _numeric(cells[0]):
            names = [c.lower() for c in cells]
            if sorted(names) not in (sorted(COLUMNS[:3]), sorted(COLUMNS)):
                raise EmsegError(f"--prompts {path}: line {line_no}: header must name z,y,x[,label], got "
                                 f"{','.join(cells)!r}")
            order = [names.index(name) for name in COLUMNS if name in names]
            continue
        idx = order or list(range(len(cells)))
        if len(cells) != len(order or cells) or len(idx) not in (3, 4):
            raise EmsegError(f"--prompts {path}: line {line_no}: expected z,y,x[,label], got {','.join(cells)!r}")
        try:
            z, y, x = (_number(cells[i]) for i in idx[:3])
            label = int(cells[idx[3]]) if len(idx) == 4 else 1
        except ValueError:
            raise EmsegError(f"--prompts {path}: line {line_no}: expected numbers z,y,x[,label], got "
                             f"{','.join(cells)!r}") from None
        if label not in (0, 1):
            raise EmsegError(f"--prompts {path}: line {line_no}: label {label} must be 1 (positive) or 0 (negative)")
        points.append((z, y, x))
        labels.append(label)
    if not points:
        raise EmsegError(f"--prompts {path}: holds no points ({'a header only' if order else 'empty'}); give one "
                         "z,y,x[,label] row per point, or leave --prompts out to segment without prompts")
    return PointSet(np.array(points, dtype=np.float64).reshape(-1, 3), np.array(labels, dtype=np.int64),
                    source=f"--prompts {path}")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_points_array(path_or_array: Any) -> PointSet:
    """Points from an array (N, 3) z, y, x or (N, 4) z, y, x, label: a numpy array, a zarr array, or a zarr /
    OME-Zarr path (a group: its first multiscale level, or its only array)."""
    where = "--prompts array"
    array = path_or_array
    if isinstance(path_or_array, (str, Path)):
        where = f"--prompts {path_or_array}"
        array = _open_zarr_array(Path(path_or_array), where)
    array = array if hasattr(array, "shape") and hasattr(array, "dtype") else np.asarray(array)
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 2 or shape[1] not in (3, 4) or shape[0] > MAX_POINTS:
        raise EmsegError(f"{where}: shape {shape}; point arrays are (N, 3) z,y,x or (N, 4) z,y,x,label, N up to "
                         f"{MAX_POINTS}")
    if shape[0] == 0 and isinstance(path_or_array, (str, Path)):
        raise EmsegError(f"{where}: holds no points (shape {shape}); leave --prompts out to segment without prompts")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise EmsegError(f"{where}: dtype {array.dtype} is not real numbers")
    try:
        data = np.asarray(array[...])
    except (ValueError, RuntimeError, OSError) as exc:  # zarr's codecs on a damaged chunk
        raise EmsegError(f"{where}: cannot read it ({type(exc).__name__}: {str(exc)[:120]})") from None
    data = data.astype(np.float64)
    labels = np.ones(data.shape[0], np.int64)
    if data.shape[1] == 4:
        if not np.isin(data[:, 3], (0.0, 1.0)).all():
            raise EmsegError(f"{where}: column 4 (label) must hold 1 (positive) or 0 (negative)")
        labels = data[:, 3].astype(np.int64)
    return PointSet(data[:, :3], labels, source=where)


def _open_zarr_array(path: Path, where: str) -> Any:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # not zarr, missing
        raise EmsegError(f"{where}: not a zarr array or group ({type(exc).__name__})") from exc
    if isinstance(node, zarr.Array):
        return node
    if multiscales_of(dict(node.attrs)):
        return open_volume(path).array  # its first level, as every OME-Zarr reader opens it
    arrays = [a for _, a in node.arrays()]
    if len(arrays) != 1:
        raise EmsegError(f"{where}: a group with {len(arrays)} arrays; point prompts need one (N, 3|4) array")
    return arrays[0]


def load_points(spec: PointSet | str | Path | np.ndarray) -> PointSet:
    """A PointSet from a PointSet, an array, a .csv / .tsv / .txt file or a zarr array / OME-Zarr path."""
    if isinstance(spec, PointSet):
        return spec
    if not isinstance(spec, (str, Path)):
        return read_points_array(spec)
    path = Path(spec)
    if not path.exists():
        raise EmsegError(f"--prompts {path}: no such file")
    if path.suffix.lower() in (".csv", ".txt", ".tsv") and path.is_file():
        return read_points_csv(path)
    if path.is_dir():
        return read_points_array(path)
    raise EmsegError(f"--prompts {path}: unknown format; give a .csv (z,y,x[,label]) or a zarr array (N, 3|4)")


def check_points_inside(points: PointSet | None, shape: tuple[int, ...]) -> None:
    """EmsegError (one line, saying how many and the volume's shape) when prompts lie outside the volume:
    a point whose voxel (each coordinate rounded half up, as `plane_of` rounds) is not inside `shape`
    (z, y, x) prompts nothing, so it is a mistake (physical units, another level, swapped axes)."""
    if points is None or not len(points):
        return
    voxels = np.floor(points.points + 0.5)  # float: coordinates past int64 stay comparable
    outside = ~((voxels >= 0) & (voxels < np.asarray(shape, dtype=np.float64))).all(axis=1)
    if outside.any():
        first = tuple(float(v) for v in points.points[np.flatnonzero(outside)[0]])
        raise EmsegError(f"{points.source}: {int(outside.sum())} of {len(points)} points lie outside the volume "
                         f"{tuple(int(s) for s in shape)} (z, y, x), e.g. {first}; give voxel coordinates of "
                         "the volume segment reads (its level 0 array axes), or drop those points")


def fractional_note(points: PointSet | None) -> str | None:
    """A note when some points have non-integer coordinates (what they mean: sub-voxel positions within a
    plane, and the plane along the slicing axis rounded half up); None when all are whole voxels."""
    if points is None or not len(points):
        return None
    fractional = int((points.points != np.round(points.points)).any(axis=1).sum())
    if not fractional:
        return None
    return (f"prompts: {fractional} of {len(points)} points have non-integer coordinates: read as sub-voxel "
            "positions within their plane, the plane along the slicing axis rounded half up")


def _axis_index(axis: str | int) -> int:
    return AXES.index(axis) if isinstance(axis, str) else int(axis)


def plane_of(points: PointSet, axis: str | int) -> np.ndarray:
    """(N,) int64: the plane each point belongs to along `axis` (coordinate rounded half up)."""
    return np.floor(points.points[:, _axis_index(axis)] + 0.5).astype(np.int64)


def window_prompts(points: PointSet | None, plane_index: int, axis: str | int, plan: TilePlan, max_points: int,
                   counts: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prompts of every tile of one plane.

    points:      the volume's points (None: no prompts).
    plane_index: the plane's index along `axis` ('z', 'y', 'x' or 0..2, the volume's array axes); the
                 plane's rows and columns are the other two axes in order.
    returns      coords (n_tiles, P, 2) float32 (x, y) in tile pixels, labels (n_tiles, P) int64 (1, 0, −1
                 padding). `counts` (optional) accumulates 'tiles_over' (tiles with more than P points) and
                 'points_dropped' (points beyond the P nearest a tile's centre).
    """
    n, t, p = plan.num_tiles, plan.tile, int(max_points)
    coords = np.zeros((n, p, 2), np.float32)
    labels = np.full((n, p), -1, np.int64)
    if points is None or not len(points):
        return coords, labels
    ai = _axis_index(axis)
    on_plane = plane_of(points, ai) == plane_index
    if not on_plane.any():
        return coords, labels
    row_axis, col_axis = (i for i in range(3) if i != ai)
    rows, cols = points.points[on_plane, row_axis], points.points[on_plane, col_axis]
    point_labels = points.labels[on_plane]
    centre = (t - 1) / 2.0
    for i, (y0, x0) in enumerate(plan.origins):
        x, y = cols - float(x0), rows - float(y0)
        inside = np.flatnonzero((x >= 0) & (x < t) & (y >= 0) & (y < t))
        if len(inside) > p:
            distance = (x[inside] - centre) ** 2 + (y[inside] - centre) ** 2
            if counts is not None:
                counts["tiles_over"] = counts.get("tiles_over", 0) + 1
                counts["points_dropped"] = counts.get("points_dropped", 0) + len(inside) - p
            inside = inside[np.argsort(distance, kind="stable")[:p]]
        coords[i, :len(inside), 0] = x[inside]
        coords[i, :len(inside), 1] = y[inside]
        labels[i, :len(inside)] = point_labels[inside]
    return coords, labels


def slab_prompts(points: PointSet | None, start: int, stop: int, axis: str | int, plan: TilePlan, max_points: int,
                 counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """`window_prompts` of planes start..stop-1, plane-major like `slab.tile_batches`' tiles:
    {'point_coords': (N·n_tiles, P, 2) float32, 'point_labels': (N·n_tiles, P) int64}."""
    parts = [window_prompts(points, plane, axis, plan, max_points, counts) for plane in range(start, stop)]
    return {POINT_PROMPTS[0]: np.concatenate([c for c, _ in parts]),
            POINT_PROMPTS[1]: np.concatenate([lab for _, lab in parts])}


def rotate_points(coords: np.ndarray, labels: np.ndarray, k: int, tile: int) -> np.ndarray:
    """Tile point coordinates (..., P, 2) as (x, y) after `np.rot90(tile, k)` of their (T, T) tile: one
    quarter turn maps (x, y) to (y, T − 1 − x). Padding rows (label −1) keep their coordinates."""
    out = np.array(coords, dtype=np.float32, copy=True)
    real = labels >= 0
    for _ in range(k % 4):
        x, y = out[..., 0].copy(), out[..., 1].copy()
        out[..., 0] = np.where(real, y, x)
        out[..., 1] = np.where(real, tile - 1 - x, y)
    return out


def points_per_window(engine: Any) -> int | None:
    """P, the padded points per tile of a window-prompted backend (inputs point_coords (B, P, 2), point_labels
    (B, P)); None when its prompts are anything else (vanilla-sam's per-class (B, K, P, 2)) or P is unknown.

    `BackendSpec` does not carry prompt shapes yet, so this reads `spec.details['max_points']` when a backend
    sets it, else the torch model's config, else the ONNX graph's input shapes."""
    spec = engine.spec
    if tuple(spec.prompts) != POINT_PROMPTS:
        return None
    if spec.details.get("max_points"):
        return int(spec.details["max_points"])
    config = getattr(getattr(engine, "model", None), "config", None)
    if config is not None:
        return int(config.max_points) if getattr(config, "family", None) == "prompt-das" else None
    session = getattr(getattr(engine, "graph", None), "session", None)
    if session is not None:
        shapes = {i.name: i.shape for i in session.get_inputs()}
        shape = shapes.get(POINT_PROMPTS[1])
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
            return int(shape[1])
    return None


def peak_points(density: Any, threshold: float, kernel: int = NMS_KERNEL) -> list[np.ndarray]:
    """Local maxima of densities (non-maximum suppression by max-pooling, the Prompt-DAS code's `nms`): pixels
    equal to the maximum of their kernel×kernel neighbourhood, ≥ threshold and > 0.

    density:  (B, 1, T, T) float, a torch tensor (any device) or a numpy array.
    returns   per window a (K, 2) float32 array of pixel (x, y), strongest first (ties in raster order).
    """
    if isinstance(density, np.ndarray):
        density = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))
    pooled = F.max_pool2d(density, kernel, stride=1, padding=kernel // 2)
    keep = (density == pooled) & (density >= threshold) & (density > 0)
    points = []
    for window, kept in zip(density[:, 0], keep[:, 0]):
        ys, xs = torch.nonzero(kept, as_tuple=True)
        order = torch.argsort(window[ys, xs], descending=True, stable=True)
        points.append(torch.stack([xs[order], ys[order]], dim=1).cpu().numpy().astype(np.float32))
    return points


def peaks_to_points(density: np.ndarray, start: int, axis: str | int, threshold: float,
                    kernel: int = NMS_KERNEL) -> PointSet:
    """Positive point prompts at the density peaks of planes start, start+1, ... along `axis`.

    density: (N, H, W) float, plane n's rows and columns the volume's other two axes in order.
    returns  a PointSet in voxel coordinates (z, y, x) of the volume, label 1, each plane's strongest first.
    """
    ai = _axis_index(axis)
    row_axis, col_axis = (i for i in range(3) if i != ai)
    found = peak_points(np.asarray(density, np.float32)[:, None], threshold, kernel)
    parts = []
    for n, xy in enumerate(found):
        part = np.zeros((len(xy), 3), np.float64)
        part[:, ai] = start + n
        part[:, row_axis], part[:, col_axis] = xy[:, 1], xy[:, 0]
        parts.append(part)
    points = np.concatenate(parts) if parts else np.zeros((0, 3), np.float64)
    return PointSet(points, np.ones(len(points), np.int64), source="--prompts auto")
