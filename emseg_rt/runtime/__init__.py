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

from emseg_rt.runtime.backends.base import BACKENDS, PRECISIONS, Backend, BackendSpec
from emseg_rt.runtime.batch import segment_files
from emseg_rt.runtime.labels import segment_labels
from emseg_rt.runtime.loader import default_model_name, load_backend
from emseg_rt.runtime.options import SegmentOptions
from emseg_rt.runtime.report import SegmentReport
from emseg_rt.runtime.request import SegmentRequest
from emseg_rt.runtime.segment import run_segment, segment_volume
from emseg_rt.runtime.slab import segment_array, segment_slab, tile_batches

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendSpec", "SegmentOptions", "SegmentReport", "SegmentRequest",
           "default_model_name", "load_backend", "run_segment", "segment_array", "segment_files", "segment_labels",
           "segment_slab", "segment_volume", "tile_batches"]
