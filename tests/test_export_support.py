"""Shared, cached tiny packages for the export / package / engine tests (exported once per session).

Not a test module by itself; the other test_export*/test_package*/test_engines* modules import it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

_CACHE: dict[tuple[str, str], Path] = {}
_ROOT: Path | None = None


def tiny_package(model: str, precision: str = "fp32") -> Path:
    """Path of an exported package of `model` (a tiny registry name) at `precision`; read-only by convention —
    copy it (`copy_package`) before changing anything."""
    global _ROOT
    from emseg_rt.export.onnx_export import export_package

    key = (model, precision)
    if key not in _CACHE:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="emseg-export-tests-"))
        torch.manual_seed(1234)
        _CACHE[key] = export_package(
            model, _ROOT / f"{model}-{precision}", precision=precision, batch_max=4,
            parity_seed=7, allow_parity_failure=True,
        )
    return _CACHE[key]


def copy_package(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
