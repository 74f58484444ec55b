"""ONNX Runtime backend: a package's full per-slice graph behind the `Backend` interface (the session itself,
`OnnxGraph`, lives in `emseg_rt.onnx_session`, which export parity and the embedding cache use too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.onnx_session import OnnxGraph
from emseg_rt.runtime.backends.base import BackendSpec, check_outputs
from emseg_rt.runtime.device_path import DevicePath


class OnnxRuntimeBackend:
    """Runs a full per-slice graph `tiles (B,1,T,T) uint8 [+ prompts] → logits, labels` in ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, tile: int, classes: tuple[str, ...], *, device: str = "cpu",
                 input_name: str = "tiles", output_names: tuple[str, ...] = ("logits", "labels"),
                 model_id: str = "", precision: str = "fp32", threads: int | None = None,
                 batch_max: int | None = None, threshold: float = 0.0) -> None:
        self.graph = OnnxGraph(onnx_path, device, threads)
        missing = [n for n in output_names if n not in self.graph.output_names]
        if missing:
            raise EmsegError(f"{onnx_path} has no output(s) {missing}; outputs are {sorted(self.graph.output_names)}")
        self.input_name = input_name
        self.output_names = output_names
        self.providers = list(self.graph.providers)
        self._device_path = None  # run_planes' upload and stitching on the session's device, made on first use
        prompts = tuple(n for n in self.graph.input_names if n != input_name)
        extras = tuple(n for n in self.graph.output_names if n not in output_names)
        self.spec = BackendSpec(tile=tile, classes=tuple(classes), input_name=input_name,
                                output_names=tuple(output_names), extra_outputs=extras, threshold=threshold, prompts=prompts,
                                precision=precision,
                                identity=f"onnxruntime|{self.providers[0]}|{precision}|{model_id}",
                                details={"onnxruntime": ort.__version__, "providers": self.providers,
                                         "onnx": str(onnx_path), "batch_max": batch_max})

    def run(self, tiles: np.ndarray, want_logits: bool = False,
            prompts: Mapping[str, np.ndarray] | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 [+ prompts by name] → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]
        [+ the named extra outputs, float32]."""
        extras = check_outputs(self.spec, outputs)
        logits_name, labels_name = self.output_names[0], self.output_names[1]
        wanted = ([labels_name, logits_name] if want_logits else [labels_name]) + list(extras)
        got = self.graph.run({self.input_name: tiles, **(prompts or {})}, wanted)
        result = {"labels": got[labels_name]}
        if want_logits:
            result["logits"] = got[logits_name].astype(np.float32, copy=False)
        for name in extras:
            result[name] = got[name].astype(np.float32, copy=False)
        return result

    def run_planes(self, slab: np.ndarray, plan: Any, *, batch: int, blend: str, label_type: np.dtype,
                   threshold: float, timings: dict | None = None) -> np.ndarray:
        """Segment a slab with tiling, stitching and the class merge on the session's device (the torch
        backend's `run_planes`, with the graph run by IO binding on torch tensors: on CUDA the tiles are read
        and the labels or logits written where they lie, nothing crosses the bus but the uint8 slab and labels).

        slab (N, H, W) uint8, plan its `TilePlan` → labels (N, H, W) label_type; see
        `device_path.DevicePath.run` for batches, blending and `timings`.
        """
        if self._device_path is None:
            self._device_path = DevicePath(torch.device(self.graph.device))
        name = self.output_names[0] if blend == "gaussian" else self.output_names[1]
        dtype = _torch_dtype(self.graph.output_types[name])

        def run_batch(tiles: torch.Tensor) -> torch.Tensor:
            b, _, t, _ = tiles.shape
            shape = (b, len(self.spec.classes), t, t) if blend == "gaussian" else (b, t, t)
            out = torch.empty(shape, dtype=dtype, device=tiles.device)
            self.graph.run_bound({self.input_name: tiles}, {name: out})
            return out

        return self._device_path.run(slab, plan, run_batch, batch=batch, blend=blend, label_type=label_type,
                                     threshold=threshold, timings=timings)

    def close(self) -> None:
        self.graph = None  # type: ignore[assignment]


def _torch_dtype(onnx_type: str) -> Any:
    """ONNX Runtime's type string of a tensor ('tensor(float16)') → the torch dtype."""
    names = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(uint8)": torch.uint8,
             "tensor(int32)": torch.int32, "tensor(int64)": torch.int64, "tensor(uint16)": torch.uint16}
    if onnx_type not in names:
        raise EmsegError(f"an ONNX output of type {onnx_type} cannot be bound to a torch tensor")
    return names[onnx_type]
