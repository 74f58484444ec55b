"""Intensity normalisation: how a volume of any supported dtype becomes the uint8 the model sees.

One mapping per volume, from dataset-level statistics, never per tile: robust percentiles (0.5 %, 99.5 %) are
sampled across the whole volume once (planes spread evenly along the first axis, a fixed-seed subsample of
pixels in each), then every slab is mapped linearly with the same numbers.

By default uint8 is taken as it is (identity), and every other dtype has its sampled 0.5/99.5 percentiles mapped
onto the model's *reference window*: the uint8 values at the same percentiles of the model's training data
(`PipelineConfig.reference_window`, recorded in an exported package's manifest). A linear rescale of the same
data (uint16, int16, float, ...) therefore reaches the model as the intensities it was trained on. A model
without a reference window has the percentiles mapped onto 0..255 (a contrast stretch).

A user's `--window` (`parse_window`) replaces the default: fixed values (LOW → 0, HIGH → 255, nothing sampled)
or percentiles of the volume (stretched onto 0..255). Every mapping records the `--window` values that
reproduce it (`Normalisation.window`), so a rerun can reuse it byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError

STRIP_VOXELS = 1 << 24  # sampling reads planes larger than this in strips of rows (16 Mi voxels at a time)
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64")
DEFAULT_PERCENTILES = (0.5, 99.5)  # the default statistic (robust to a few hot or dead pixels)
FULL_RANGE = (0.0, 255.0)  # the uint8 range: the target of `--window` and of models without a reference window


@dataclass(frozen=True)
class Normalisation:
    """How input intensities become the model's uint8: identity for uint8, else a clipped linear map.

    "percentile": low/high are the volume's low_percentile/high_percentile (sampled), mapped onto
    reference_low/reference_high (the model's reference window; 0/255 for a percentile `--window` and for
    models without one). "window": low/high given by the user (`--window LOW,HIGH`), mapped onto 0/255,
    nothing sampled; its dict records only method, low and high.
    """

    method: str  # "identity" | "percentile" | "window"
    low: float = 0.0
    high: float = 255.0
    low_percentile: float = DEFAULT_PERCENTILES[0]
    high_percentile: float = DEFAULT_PERCENTILES[1]
    sampled_voxels: int = 0
    sampled_planes: int = 0
    reference_low: float = FULL_RANGE[0]
    reference_high: float = FULL_RANGE[1]

    @property
    def window(self) -> tuple[float, float]:
        """The input values mapped to 0 and 255: `--window LOW,HIGH` with these numbers gives the same bytes."""
        if self.method == "identity":
            return FULL_RANGE
        if not self.has_reference:
            return self.low, self.high
        per_level = (self.high - self.low) / (self.reference_high - self.reference_low)
        return (self.low - self.reference_low * per_level,
                self.high + (FULL_RANGE[1] - self.reference_high) * per_level)

    @property
    def has_reference(self) -> bool:
        """True when sampled percentiles land on a model's reference window rather than on 0..255."""
        return self.method == "percentile" and (self.reference_low, self.reference_high) != FULL_RANGE

    def to_dict(self) -> dict[str, Any]:
        """What the run records (config, root attributes, report). Mappings onto 0..255 keep the keys they had
        before reference windows existed; a reference adds `reference_window` and the reproducing `window`."""
        if self.method == "window":
            return {"method": "window", "low": self.low, "high": self.high}
        record: dict[str, Any] = {
            "method": self.method, "low": self.low, "high": self.high, "low_percentile": self.low_percentile,
            "high_percentile": self.high_percentile, "sampled_voxels": self.sampled_voxels,
            "sampled_planes": self.sampled_planes}
        if self.has_reference:
            record["reference_window"] = [self.reference_low, self.reference_high]
            record["window"] = list(self.window)
        return record


def check_reference(value: Any, source: str) -> tuple[float, float] | None:
    """A model's reference window (LOW, HIGH) as floats, 0 ≤ LOW < HIGH ≤ 255; None stays None.
    EmsegError naming `source` for anything else."""
    if value is None:
        return None
    try:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise EmsegError(f"{source}: reference_window must be two numbers [LOW, HIGH], got {value!r}") from None
    if not 0.0 <= low < high <= 255.0:
        raise EmsegError(f"{source}: reference_window must satisfy 0 <= LOW < HIGH <= 255, got {value!r}")
    return low, high


@dataclass(frozen=True)
class IntensityWindow:
    """A user's intensity window: input values (`kind` "values") or percentiles 0..100 of the volume."""

    kind: str  # "values" | "percentiles"
    low: float
    high: float


WINDOW_FORMS = "LOW,HIGH values (e.g. 100,3000 or -1200,800 or 0.1,0.9) or percentiles (1%,99% or p1,p99), LOW < HIGH"


def parse_window(text: str) -> IntensityWindow:
    """`--window` text → IntensityWindow; EmsegError (one line naming the accepted forms) for anything else.

    "100,3000", "-1200,800", "0.1,0.9" → values; "1%,99%", "p1,p99" → percentiles (0 ≤ LOW < HIGH ≤ 100).
    """
    refusal = EmsegError(f"--window {text!r}: expected {WINDOW_FORMS}")
    parts = str(text).split(",")
    if len(parts) != 2:
        raise refusal
    try:
        (low_kind, low), (high_kind, high) = (_window_bound(part) for part in parts)
    except ValueError:
        raise refusal from None
    if low_kind != high_kind or not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise refusal
    if low_kind == "percentiles" and not 0.0 <= low < high <= 100.0:
        raise refusal
    return IntensityWindow(low_kind, low, high)


def _window_bound(part: str) -> tuple[str, float]:
    """One bound of `--window`: ("percentiles", 1.0) for "1%" or "p1", ("values", v) for a number (ValueError else)."""
    part = part.strip()
    if part.endswith("%"):
        return "percentiles", float(part[:-1])
    if part[:1] in ("p", "P"):
        return "percentiles", float(part[1:])
    return "values", float(part)


def check_dtype(dtype: np.dtype, source: str) -> None:
    """Raise EmsegError unless the input dtype is one segment can read."""
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        raise EmsegError(f"{source} has dtype {np.dtype(dtype).name}; supported: {', '.join(SUPPORTED_DTYPES)}")


def check_finite(values: np.ndarray, where: str) -> None:
    """Raise EmsegError naming `where` if a float array holds NaN or Inf."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise EmsegError(f"{where} contains NaN or Inf values; replace them (e.g. with the background value) first")


def dataset_normalisation(array: Any, source: str = "input", *, window: IntensityWindow | None = None,
                          reference: tuple[float, float] | None = None, max_planes: int = 16,
                          samples_per_plane: int = 65536, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                          seed: int = 0) -> Normalisation:
    """Intensity mapping of a (Z, Y, X) array-like, any supported dtype: the Normalisation `to_uint8` applies.

    No window: uint8 → identity; other integers (int8..int32, uint16, uint32) and floats → the `percentiles`
    (0.5, 99.5) of up to `max_planes` planes spread evenly along axis 0 (each subsampled to `samples_per_plane`
    voxels with a fixed seed), mapped onto `reference` (the model's reference window, uint8 values; None →
    0..255). A "values" window → method "window" with its low/high, nothing sampled; a "percentiles" window →
    that sampling with its percentiles, mapped onto 0..255. Both apply to uint8 too. Float planes with NaN/Inf
    raise EmsegError when sampled.
    """
    dtype = np.dtype(array.dtype)
    check_dtype(dtype, source)
    if window is not None and window.kind == "values":
        return Normalisation("window", float(window.low), float(window.high))
    target = FULL_RANGE
    if window is not None:
        percentiles = (float(window.low), float(window.high))
    elif dtype == np.uint8:
        return Normalisation("identity")
    else:
        target = check_reference(reference, source) or FULL_RANGE
    values, n_planes = sample_planes(array, source, max_planes=max_planes, samples_per_plane=samples_per_plane,
                                     seed=seed)
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        high = low + 1.0
    return Normalisation("percentile", low, high, percentiles[0], percentiles[1], int(values.size), n_planes,
                         *target)


def sample_planes(array: Any, source: str, *, max_planes: int, samples_per_plane: int,
                  seed: int) -> tuple[np.ndarray, int]:
    """A fixed-seed sample of a (Z, Y, X) array-like's voxels: (values (N,) float64, number of planes read).

    Up to `max_planes` planes spread evenly along axis 0, each subsampled to `samples_per_plane` voxels. A
    plane larger than STRIP_VOXELS is read in strips of rows, keeping only the sampled voxels of each: memory
    stays bounded whatever the metadata declares, and the sample is the same as from the whole plane.
    """
    depth = array.shape[0]
    indices = np.unique(np.linspace(0, depth - 1, num=min(max_planes, depth)).round().astype(int))
    rng = np.random.default_rng(seed)
    samples = []
    for index in indices:
        where = f"{source} (slice {index} along axis 0)"
        size = math.prod(int(s) for s in array.shape[1:])
        pick = rng.choice(size, samples_per_plane, replace=False) if size > samples_per_plane else None
        if size <= STRIP_VOXELS or len(array.shape) < 3:
            plane = np.asarray(array[int(index)]).ravel()
            check_finite(plane, where)
            samples.append((plane if pick is None else plane[pick]).astype(np.float64))
        else:
            samples.append(_sample_in_strips(array, int(index), pick, where).astype(np.float64))
    return np.concatenate(samples), len(indices)


def _sample_in_strips(array: Any, index: int, pick: np.ndarray | None, where: str) -> np.ndarray:
    """`array[index].ravel()[pick]` (the whole plane for `pick` None), read STRIP_VOXELS at a time in strips
    of rows along axis 1, each checked for NaN / Inf as the whole plane would be."""
    row = math.prod(int(s) for s in array.shape[2:])
    rows = max(1, STRIP_VOXELS // max(row, 1))
    parts, values = [], None
    for start in range(0, int(array.shape[1]), rows):
        strip = np.asarray(array[index, start:start + rows]).ravel()
        check_finite(strip, where)
        if pick is None:
            parts.append(strip)
            continue
        if values is None:
            values = np.empty(len(pick), strip.dtype)
        lo = start * row
        inside = (pick >= lo) & (pick < lo + strip.size)
        values[inside] = strip[pick[inside] - lo]
    return np.concatenate(parts) if pick is None else values


def to_uint8(slab: np.ndarray, norm: Normalisation) -> np.ndarray:
    """(…) slab of any supported dtype → same-shape uint8 with the dataset-level `norm`.

    "identity" casts; otherwise `norm.window` (LOW, HIGH) maps LOW → 0 and HIGH → 255 linearly, rounding to
    the nearest integer and clipping outside.
    """
    if norm.method == "identity":
        return np.ascontiguousarray(slab, dtype=np.uint8)
    low, high = norm.window
    # 4-byte integers do not fit float32's 24-bit mantissa, nor float64 data its 53 bits: both scale in float64.
    wide = slab.dtype == np.float64 or (slab.dtype.itemsize >= 4 and slab.dtype.kind in "iu")
    work = np.float64 if wide else np.float32
    scaled = (slab.astype(work) - work(low)) * work(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
