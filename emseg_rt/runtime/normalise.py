"""Intensity normalisation for non-uint8 inputs from dataset-level statistics, never per tile.

Robust percentiles are sampled across the whole volume once (planes spread evenly along the first axis,
a fixed-seed subsample of pixels in each), then every slab is mapped linearly to uint8 with the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError

SUPPORTED_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")


@dataclass(frozen=True)
class Normalisation:
    """How input intensities become the model's uint8: identity for uint8, else clip((v − low)/(high − low))·255."""

    method: str  # "identity" | "percentile"
    low: float = 0.0
    high: float = 255.0
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    sampled_voxels: int = 0
    sampled_planes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_dtype(dtype: np.dtype, source: str) -> None:
    """Raise EmsegError unless the input dtype is one segment can read."""
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        raise EmsegError(f"{source} has dtype {np.dtype(dtype).name}; supported: {', '.join(SUPPORTED_DTYPES)}")


def check_finite(values: np.ndarray, where: str) -> None:
    """Raise EmsegError naming `where` if a float array holds NaN or Inf."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise EmsegError(f"{where} contains NaN or Inf values; replace them (e.g. with the background value) first")


def dataset_normalisation(array: Any, source: str = "input", *, max_planes: int = 16, samples_per_plane: int = 65536,
                          percentiles: tuple[float, float] = (0.5, 99.5), seed: int = 0) -> Normalisation:
    """Robust intensity range of a (Z, Y, X) array-like, sampled across the volume.

    uint8 → identity. uint16 / float → the (0.5, 99.5) percentiles of up to `max_planes` planes spread evenly
    along axis 0 (each subsampled to `samples_per_plane` voxels with a fixed seed). Float planes with NaN/Inf
    raise EmsegError.
    """
    dtype = np.dtype(array.dtype)
    check_dtype(dtype, source)
    if dtype == np.uint8:
        return Normalisation("identity")
    depth = array.shape[0]
    indices = np.unique(np.linspace(0, depth - 1, num=min(max_planes, depth)).round().astype(int))
    rng = np.random.default_rng(seed)
    samples = []
    for index in indices:
        plane = np.asarray(array[int(index)]).ravel()
        check_finite(plane, f"{source} (slice {index} along axis 0)")
        if plane.size > samples_per_plane:
            plane = plane[rng.choice(plane.size, samples_per_plane, replace=False)]
        samples.append(plane.astype(np.float64))
    values = np.concatenate(samples)
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        high = low + 1.0
    return Normalisation("percentile", low, high, percentiles[0], percentiles[1], int(values.size), int(len(indices)))


def to_uint8(slab: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Any-dtype slab → uint8 with the dataset-level `norm` (identity for uint8)."""
    if norm.method == "identity":
        return np.ascontiguousarray(slab, dtype=np.uint8)
    scaled = (slab.astype(np.float32) - np.float32(norm.low)) * np.float32(255.0 / (norm.high - norm.low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
