"""The one backend interface: a per-slice graph that maps uint8 tiles to class logits and labels.

Code outside `runtime/backends/` talks to a `Backend` only through this protocol and never asks which
backend it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from emseg_rt.errors import EmsegError

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")  # what --backend accepts
# what --precision accepts; 'auto' (the default) is resolved by runtime.loader: a package's own precision, on a CPU
# the fastest path that keeps the labels (runtime/cpu_choice.py), else fp32
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8", "fp32-fused", "fp8", "int8-wo")
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # autocast dtypes the torch backend runs
# ONNX packages come in these (package.PRECISIONS; literals here, so this module loads no onnx)
PACKAGE_PRECISIONS = ("fp32", "fp16", "int8", "fp32-fused", "fp8", "int8-wo")
ORT_PRECISIONS = ("int8", "fp32-fused")  # packages ONNX Runtime runs and TensorRT does not (package.ORT_ONLY_PRECISIONS)


@dataclass(frozen=True)
class BackendSpec:
    """What a loaded graph expects and produces.

    tile:        T, tiles are (B, 1, T, T) uint8.
    classes:     class names for labels 1..K (0 = background).
    input_name / output_names: the graph's I/O names ('tiles' → 'logits', 'labels').
    extra_outputs: further per-tile outputs `run(..., outputs=)` can return, e.g. Prompt-DAS's 'density'
                 (B, 1, T, T); empty for families without any.
    prompts:     names of extra per-tile prompt inputs (vanilla-sam's points/boxes); empty for prompt-free
                 models, the only kind `segment` runs.
    threshold:   the class merge's background threshold (labels are 0 where no logit exceeds it).
    precision:   what the graph computes in: 'fp32', 'fp16' or 'bf16' (named for what runs, per device).
    identity:    a string that changes whenever the computed numbers could (model weights, package hash,
                 backend, provider, precision); it keys resume markers.
    reference_window: uint8 values of the 0.5/99.5 percentiles of the model's training data, onto which a
                 non-uint8 volume's percentiles are mapped (`runtime.normalise`); None when not known.
    """

    tile: int
    classes: tuple[str, ...]
    input_name: str = "tiles"
    output_names: tuple[str, ...] = ("logits", "labels")
    extra_outputs: tuple[str, ...] = ()
    threshold: float = 0.0
    prompts: tuple[str, ...] = ()
    precision: str = "fp32"
    identity: str = ""
    details: dict = field(default_factory=dict)
    reference_window: tuple[float, float] | None = None


@runtime_checkable
class Backend(Protocol):
    """A loaded per-slice graph on one device."""

    name: str
    spec: BackendSpec

    def run(self, tiles: np.ndarray, want_logits: bool = False,
            prompts: Mapping[str, np.ndarray] | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Segment a batch of tiles.

        tiles:   (B, 1, T, T) uint8, raw EM intensities (preprocessing is inside the graph).
        prompts: the arrays named in `spec.prompts`, batch first (only for prompted models).
        outputs: names from `spec.extra_outputs` to return as well (float32 host arrays, e.g. 'density').
        returns  labels (B, T, T) uint8 and, when want_logits, logits (B, K, T, T) float32, as host arrays.
        """
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


def cpu_threads(backend: Backend) -> int | None:
    """How many CPU threads `backend` computes with, where that count changes its numbers (a CPU's reductions are
    split over threads): a backend says so with a `cpu_threads()` method (the torch backend on a CPU); None for
    the rest (GPU backends, and ONNX Runtime, whose thread count is fixed per machine: no user setting moves it)."""
    method = getattr(backend, "cpu_threads", None)
    return method() if callable(method) else None


def check_outputs(spec: BackendSpec, outputs: Sequence[str]) -> tuple[str, ...]:
    """The requested extra outputs, refused (EmsegError) when the graph has no such output."""
    missing = [name for name in outputs if name not in spec.extra_outputs]
    if missing:
        offered = ", ".join(spec.extra_outputs) or "none"
        raise EmsegError(f"this model has no output {', '.join(missing)} (extra outputs: {offered})")
    return tuple(outputs)
