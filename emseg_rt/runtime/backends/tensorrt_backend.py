"""TensorRT backend: a package's engine for this GPU, run by `emseg_rt.engines.EngineRunner`.

Which engine fits this GPU and TensorRT version is decided once, in `emseg_rt.engines` (`select_engine`):
a mismatch is refused there with a message that says what to rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emseg_rt.engines import EngineRunner, gpu_target, select_engine
from emseg_rt.package import ModelPackage
from emseg_rt.runtime.backends.base import BackendSpec, check_outputs


class TensorRTBackend:
    """Runs a deserialised engine of a package's full graph (needs an NVIDIA GPU the engine was built for)."""

    name = "tensorrt"

    def __init__(self, runner: Any, package: ModelPackage) -> None:
        record = runner.record
        self.runner = runner
        threshold = float(package.manifest.get("parity", {}).get("label_threshold", 0.0) or 0.0)
        file_hash = package.manifest.get("files", {}).get(record.file, "")
        self.spec = BackendSpec(
            tile=package.tile, classes=tuple(package.classes), threshold=threshold, precision=package.precision,
            prompts=tuple(package.manifest.get("prompts", ())),
            extra_outputs=tuple(n for n in getattr(runner, "output_names", ()) if n not in ("logits", "labels")),
            identity=f"tensorrt|{record.target}|{record.flavour}{record.trt_version}|{package.precision}|{file_hash}",
            details={"engine": str(record.path), "target": record.target, "flavour": record.flavour,
                     "batch_max": record.batch_max},
        )

    @classmethod
    def from_package(cls, package: ModelPackage) -> TensorRTBackend:
        """EmsegError (from `engines.select_engine`) when no engine fits this GPU and TensorRT version."""
        record = select_engine(package, gpu_target())
        return cls(EngineRunner(package, component="full", target=record.target), package)

    def run(self, tiles: np.ndarray, want_logits: bool = False,
            prompts: Mapping[str, np.ndarray] | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 [+ prompts] → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]
        [+ the named extra outputs (the engine's other outputs), float32]."""
        extras = check_outputs(self.spec, outputs)
        got = self.runner.run({self.runner.input_names[0]: tiles, **(prompts or {})})
        result = {"labels": got["labels"].cpu().numpy()}
        if want_logits:
            result["logits"] = got["logits"].float().cpu().numpy()
        for name in extras:
            result[name] = got[name].float().cpu().numpy()
        return result

    def close(self) -> None:
        self.runner = None
