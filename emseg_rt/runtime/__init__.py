"""Backends (torch, onnxruntime, tensorrt) and tiled, resumable volume streaming.

    from emseg_rt.runtime import segment_volume
    report = segment_volume("cell.zarr", "cell-labels.zarr", model="scsam-tiny", backend="onnxruntime")

    from emseg_rt.runtime import segment_labels
    labels = segment_labels(numpy_or_dask_array, model="scsam-tiny")   # (Z, Y, X) labels, nothing written

    from emseg_rt.runtime import SegmentRequest, run_segment     # the request object the CLI builds
    report = run_segment(SegmentRequest.from_keywords("cell.zarr", "out.zarr", model="scsam-tiny", block=16))

    from emseg_rt.runtime import segment_files                   # a folder or glob: OUTDIR/<name>.zarr each
    outcomes = segment_files("raw/*.tif", "labels/", model="scsam-tiny", part=(1, 4))

    from emseg_rt.runtime import load_backend, segment_array
    labels = segment_array(load_backend("scsam-tiny", "torch"), volume)   # in-memory (Z, Y, X) uint8
"""

from importlib import import_module
from typing import Any

# Name → the submodule that defines it, imported on first access (PEP 562), so that a light module of the runtime
# (`runtime.status`, which `emseg-rt status` reads) loads without torch and the backends.
_PUBLIC = {"BACKENDS": "backends.base", "PRECISIONS": "backends.base", "Backend": "backends.base",
           "BackendSpec": "backends.base", "segment_files": "batch", "segment_labels": "labels",
           "default_model_name": "loader", "load_backend": "loader", "SegmentOptions": "options",
           "SegmentReport": "report", "SegmentRequest": "request", "run_segment": "segment",
           "segment_volume": "segment", "segment_array": "slab", "segment_slab": "slab", "tile_batches": "slab"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
