"""TensorRT backend: a package's engine for this GPU, run by the engine runner in `emseg_rt.engines`.

Engines are tied to the GPU's compute capability and the TensorRT version: both are checked against the
manifest before anything is deserialised, and a mismatch is refused with a message that says what to rebuild.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import BackendSpec


def gpu_target() -> str | None:
    """'sm86' for the current CUDA device, None without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        return f"sm{major}{minor}"
    except Exception:
        return None


def installed_trt_version(flavour: str) -> str | None:
    module = "tensorrt_rtx" if flavour == "tensorrt-rtx" else "tensorrt"
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def select_engine(package: Any, target: str | None, component: str = "full") -> Any:
    """The package's engine record for `target`, or EmsegError saying which targets/versions exist and what to do."""
    engines = package.engines.get(component, {})
    if target is None:
        raise EmsegError("--backend tensorrt needs a CUDA GPU, and none is visible here; use --backend onnxruntime")
    if target not in engines:
        have = ", ".join(sorted(engines)) or "none"
        raise EmsegError(f"{package.root} has no {component} engine for this GPU ({target}; engines for: {have}); "
                         f"run `emseg-rt build {package.root} --target {target}`")
    record = engines[target]
    version = installed_trt_version(record.flavour)
    if version is None:
        raise EmsegError(f"engine {record.file} needs {record.flavour} {record.trt_version}, which is not installed")
    if version.split(".")[:2] != str(record.trt_version).split(".")[:2]:
        raise EmsegError(f"engine {record.file} was built with {record.flavour} {record.trt_version} but "
                         f"{version} is installed; rebuild it with `emseg-rt build {package.root}`")
    return record


class TensorRTBackend:
    """Runs a deserialised engine through `emseg_rt.engines`' runner (needs an NVIDIA GPU)."""

    name = "tensorrt"

    def __init__(self, runner: Any, package: Any, record: Any) -> None:
        self.runner = runner
        self.spec = BackendSpec(tile=package.tile, classes=tuple(package.classes),
                                identity=f"tensorrt|{record.target}|{record.flavour}{record.trt_version}|"
                                         f"{package.precision}|{package.manifest.get('files', {}).get(record.file, '')}",
                                details={"engine": str(record.path), "target": record.target,
                                         "batch_max": record.batch_max})

    @classmethod
    def from_package(cls, package: Any, device: str = "cuda") -> TensorRTBackend:
        record = select_engine(package, gpu_target())
        from emseg_rt.engines import EngineRunner  # deserialises; refuses a GPU/version mismatch itself too

        return cls(EngineRunner(package, component="full", target=record.target), package, record)

    def run(self, tiles: np.ndarray, want_logits: bool = False) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]."""
        outputs = self.runner.run({self.runner.input_names[0]: np.ascontiguousarray(tiles)})
        result = {"labels": outputs["labels"].cpu().numpy()}
        if want_logits:
            result["logits"] = outputs["logits"].float().cpu().numpy()
        return result

    def close(self) -> None:
        self.runner = None
