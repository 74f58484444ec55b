"""The one backend interface: a per-slice graph that maps uint8 tiles to class logits and labels.

Code outside `runtime/backends/` talks to a `Backend` only through this protocol and never asks which
backend it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class BackendSpec:
    """What a loaded graph expects and produces.

    tile:        T, tiles are (B, 1, T, T) uint8.
    classes:     class names for labels 1..K (0 = background).
    input_name / output_names: the graph's I/O names ('tiles' → 'logits', 'labels').
    identity:    a string that changes whenever the computed numbers could (model weights, package hash,
                 backend, provider, precision); it keys resume markers.
    """

    tile: int
    classes: tuple[str, ...]
    input_name: str = "tiles"
    output_names: tuple[str, ...] = ("logits", "labels")
    threshold: float = 0.0
    identity: str = ""
    details: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded per-slice graph on one device."""

    name: str
    spec: BackendSpec

    def run(self, tiles: np.ndarray, want_logits: bool = False) -> dict[str, np.ndarray]:
        """Segment a batch of tiles.

        tiles:   (B, 1, T, T) uint8, raw EM intensities (preprocessing is inside the graph).
        returns  labels (B, T, T) uint8 and, when want_logits, logits (B, K, T, T) float32, as host arrays.
        """
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...
