"""Label agreement of a backend with an fp32 reference, on tiles of a synthetic phantom (issue 30).

The one place that measures how far a faster path's labels are from fp32: `emseg-rt bench` puts the numbers
beside every timing (bench/agreement.py, reference `torch-eager-fp32`), and `--precision auto` on a CPU keeps
a faster path only when they pass (runtime/cpu_choice.py, reference ONNX Runtime fp32).

The tiles are planes of a FIB-SEM phantom (`data.phantom`: EM-like, what int8 calibrates on, rather than
uniform noise). The numbers are `export.parity.label_agreement`'s: raw agreement (all pixels) and decided
agreement (pixels whose reference margin exceeds the backend's largest logit error). With random weights
(every registry model but the default one) the class logits are nearly tied, so raw agreement measures the
weights rather than the backend (docs/export.md "Parity"); the decided number and its fraction say how much of
it is ties.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.export.parity import label_agreement
from emseg_rt.runtime.backends.base import Backend

AGREEMENT_SEED = 30  # the phantom the tiles are cut from (fixed: every run compares on the same tiles)


@dataclass(frozen=True)
class Reference:
    """The reference's output on the agreement tiles: tiles (N, 1, T, T) uint8, their prompts (prompted models),
    labels (N, T, T) and logits (N, K, T, T) float32, and the class merge's threshold."""

    tiles: np.ndarray
    prompts: dict[str, np.ndarray]
    labels: np.ndarray
    logits: np.ndarray
    threshold: float


def agreement_tiles(tile: int, count: int) -> np.ndarray:
    """`count` phantom tiles of `tile` × `tile`: (count, 1, T, T) uint8, cut side by side from planes of at least
    512² (a 128² plane of its own holds too little of a cell to compare on)."""
    side = max(tile, 512 // tile * tile)
    per_plane = (side // tile) ** 2
    planes = generate_phantom((max(3, -(-count // per_plane)), side, side), seed=AGREEMENT_SEED).image  # ≥ 3: gradients
    n = side // tile
    cut = planes.reshape(len(planes), n, tile, n, tile).transpose(0, 1, 3, 2, 4).reshape(-1, tile, tile)
    return np.ascontiguousarray(cut[:count, None])


def run_in_batches(backend: Backend, tiles: np.ndarray, prompts: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`backend.run(..., want_logits=True)` over `tiles` (N, 1, T, T) in calls of `batch`: {'labels', 'logits'}."""
    parts = []
    for start in range(0, len(tiles), batch):
        window = slice(start, start + batch)
        parts.append(backend.run(tiles[window], want_logits=True,
                                 prompts={k: v[window] for k, v in prompts.items()} or None))
    return {name: np.concatenate([part[name] for part in parts]) for name in ("labels", "logits")}


def reference_from(backend: Backend, tiles: np.ndarray, prompts: Mapping[str, np.ndarray], threshold: float,
                   batch: int = 8) -> Reference:
    """`backend`'s output on `tiles` as the Reference others are compared with."""
    out = run_in_batches(backend, tiles, prompts, batch)
    return Reference(tiles, dict(prompts), out["labels"], out["logits"], threshold)


def agreement_of(output: Mapping[str, np.ndarray], reference: Reference) -> dict[str, float | None]:
    """An output ({'labels', 'logits'} on the reference's tiles) against the reference: {'agreement',
    'agreement_decided', 'decided_fraction', 'tie_tolerance' (= the largest logit error), 'logits_rel_error'}."""
    logits = output["logits"].astype(np.float64)
    ref = reference.logits.astype(np.float64)
    error = float(np.abs(logits - ref).max()) if np.isfinite(logits).all() else float("inf")
    numbers = label_agreement(reference.labels, output["labels"], reference.logits, error, reference.threshold)
    norm = float(np.linalg.norm(ref))
    numbers["logits_rel_error"] = float(np.linalg.norm(logits - ref) / norm) if norm > 0 else None
    return numbers


def agreement_with(backend: Backend, reference: Reference, batch: int = 8) -> dict[str, float | None]:
    """`backend`'s labels on the reference tiles against the reference's (`agreement_of`)."""
    return agreement_of(run_in_batches(backend, reference.tiles, reference.prompts, batch), reference)
