"""ONNX → TensorRT engines (TensorRT for RTX ahead of time, or standard TensorRT), engine selection, runner.

    build_engines(package_dir, targets=("sm86",), flavour="tensorrt-rtx") -> list[EngineRecord]
    gpu_target() -> 'sm86' | None;  current_target() -> 'sm86' (EmsegError without a GPU)
    engine_flavour_for(target) -> (flavour | None, reason)
    select_engine(package, target, component="full") -> EngineRecord   (the version rule lives here)
    EngineRunner(package, component="full")  # needs a GPU; see runner.py
"""

from emseg_rt.engines.build import QUANTISED_MIN_TARGET, build_engines, parse_targets
from emseg_rt.engines.runner import EngineRunner
from emseg_rt.engines.select import (
    check_engine_compatible,
    current_target,
    engine_flavour_for,
    gpu_target,
    select_engine,
    trt_versions_compatible,
)
from emseg_rt.engines.trt import FLAVOURS, RTX_TARGETS

__all__ = [
    "FLAVOURS", "QUANTISED_MIN_TARGET", "RTX_TARGETS", "EngineRunner", "build_engines", "check_engine_compatible", "current_target",
    "engine_flavour_for", "gpu_target", "parse_targets", "select_engine", "trt_versions_compatible",
]
