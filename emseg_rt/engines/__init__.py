"""ONNX → TensorRT engines (TensorRT for RTX ahead of time, or standard TensorRT) and the engine runner.

    build_engines(package_dir, targets=("sm86",), flavour="tensorrt-rtx") -> list[EngineRecord]
    EngineRunner(package, component="full")  # needs a GPU; see runner.py
"""

from emseg_rt.engines.build import FLAVOURS, build_engines, parse_targets
from emseg_rt.engines.runner import EngineRunner

__all__ = ["FLAVOURS", "EngineRunner", "build_engines", "parse_targets"]
