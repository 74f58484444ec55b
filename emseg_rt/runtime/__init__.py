"""Backends (torch, onnxruntime, tensorrt) and tiled, resumable volume streaming.

    from emseg_rt.runtime import segment_volume
    report = segment_volume("cell.zarr", "cell-labels.zarr", model="scsam-tiny", backend="onnxruntime")
"""

from emseg_rt.runtime.backends.base import Backend, BackendSpec
from emseg_rt.runtime.loader import default_model_name, load_backend
from emseg_rt.runtime.segment import SegmentReport, segment_slab, segment_volume

__all__ = ["Backend", "BackendSpec", "SegmentReport", "default_model_name", "load_backend", "segment_slab",
           "segment_volume"]
