"""Shared, cached tiny packages for the export / package / engine tests (built once per test session).

Not a test module by itself; test_export*, test_package and test_engines import it. Tracing a model to
ONNX is the slow part of an export (torch.export + ONNX translation + optimiser, ~5-25 s per tiny model on
2 cores), so each model is traced once (`tiny_trace`) and its fp32 and fp16 packages are both written from
that trace (`write_package`), exactly as `export_package` does in one call.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

_TRACES: dict[str, object] = {}
_PACKAGES: dict[tuple[str, str], Path] = {}
_ROOT: Path | None = None
PARITY_SEED = 7
WEIGHTS_SEED = 1234
BATCH_MAX = 4


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="emseg-export-tests-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def tiny_model(model: str) -> torch.nn.Module:
    """The PyTorch model `tiny_trace(model)` traces: `build(model)` with its random weights drawn from torch
    seed WEIGHTS_SEED (so a test can compare the exported graphs with the very model they came from)."""
    from emseg_rt.models import build

    torch.manual_seed(WEIGHTS_SEED)
    return build(model)


def tiny_trace(model: str):
    """`TracedGraphs` of `model` (a tiny registry name, weights from torch seed WEIGHTS_SEED), traced once."""
    from emseg_rt.export import trace_graphs

    if model not in _TRACES:
        _TRACES[model] = trace_graphs(tiny_model(model), _root() / f"{model}.trace", batch_max=BATCH_MAX)
    return _TRACES[model]


def tiny_package(model: str, precision: str = "fp32") -> Path:
    """Path of an exported package of `model` at `precision`; read-only by convention — copy it
    (`copy_package`) before changing anything. Parity misses are written (allow_parity_failure) so that
    the tests can show the measured numbers."""
    from emseg_rt.export import write_package

    key = (model, precision)
    if key not in _PACKAGES:
        _PACKAGES[key] = write_package(
            tiny_trace(model), _root() / f"{model}-{precision}", precision,
            parity_seed=PARITY_SEED, allow_parity_failure=True,
        )
    return _PACKAGES[key]


def copy_package(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
