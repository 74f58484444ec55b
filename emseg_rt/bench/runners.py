"""What `emseg-rt bench` times: the runtime's own backends, loaded and called exactly as `segment` does.

A bench backend name is a (backend, precision, torch mode) choice that `segment` can make too:

    torch-eager-fp32   --backend torch --precision fp32, reference attention (the research code's way;
                       `load_backend(..., fast=False)`)
    torch-fp32         --backend torch --precision fp32 (fast path: SDPA attention, compile on CUDA)
    torch-bf16         --backend torch --precision bf16 (the CPU's fast path)
    torch-fp16         --backend torch --precision fp16 (the GPU's fast path)
    onnxruntime        --backend onnxruntime --precision fp32 (the cached fp32 package's full graph)
    onnxruntime-fp16   --backend onnxruntime --precision fp16 (the cached mixed-fp16 package)
    onnxruntime-int8   --backend onnxruntime --precision int8 (the cached int8 QDQ package, calibrated on phantoms)
    onnxruntime-fp32-fused  --backend onnxruntime --precision fp32-fused (fp32 with fused attention)
    tensorrt           --backend tensorrt on the cached fp16 package, with its engine for this GPU (built on
                       first use: `load_backend(..., build_engine=True)`)

Every backend is loaded by `emseg_rt.runtime.load_backend`, the loader `segment` uses, so the object timed is
the one `segment` runs; each timed call is `slab.segment_slab` on a slab of uint8 slices, the call `segment`
makes (the backend's device path where it has one). Nothing here opens a session, exports or compiles a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emseg_rt.constants import BENCH_BACKENDS, label_dtype
from emseg_rt.engines import engine_flavour_for, gpu_target
from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.onnx_session import providers_for
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.backends.torch_backend import fast_precision
from emseg_rt.runtime.devices import cpu_has_bf16
from emseg_rt.runtime.loader import load_backend
from emseg_rt.runtime.slab import segment_slab, takes_device_path
from emseg_rt.tiling import plan_tiles

BACKENDS = BENCH_BACKENDS


CPU_PATHS = ("torch-eager-fp32", "torch-fp32", "torch-bf16", "onnxruntime", "onnxruntime-fp32-fused",
             "onnxruntime-int8")  # every path a CPU runs (torch-bf16 only where it has bf16 instructions)


def default_backends(device: str) -> tuple[str, ...]:
    """What `--backends auto` times on a device. On CUDA the Table 5 columns: eager baseline, the fast torch path
    (fp16), ONNX Runtime, TensorRT. On a CPU every path it can run (issue 30.5): eager, torch fp32, torch bf16
    where the CPU computes bf16 natively (`cpu_has_bf16`; emulated bf16 is slower than fp32), ONNX Runtime fp32,
    fused attention and int8."""
    if device.startswith("cuda"):
        return ("torch-eager-fp32", f"torch-{fast_precision(device)}", "onnxruntime", "tensorrt")
    return tuple(name for name in CPU_PATHS if name != "torch-bf16" or cpu_has_bf16())


@dataclass(frozen=True)
class BenchTarget:
    """How to load one bench backend name with `load_backend`."""

    name: str
    backend: str
    precision: str
    fast: bool = True

    @classmethod
    def parse(cls, name: str) -> BenchTarget:
        if name not in BACKENDS:
            raise EmsegError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        if name == "torch-eager-fp32":
            return cls(name, "torch", "fp32", fast=False)
        if name == "tensorrt":
            return cls(name, "tensorrt", "fp16")
        backend, _, precision = name.partition("-")
        return cls(name, backend, precision or "fp32")

    def unavailable_reason(self, device: str) -> str | None:
        """None when this target can run on `device` here, else one line saying why not."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
        if self.backend == "onnxruntime":
            try:
                providers_for(device)
            except EmsegError as exc:
                return str(exc)
        if self.backend == "tensorrt":
            if not device.startswith("cuda"):
                return "no CUDA GPU here: TensorRT engines run only on a GPU"
            flavour, reason = engine_flavour_for(gpu_target())
            return None if flavour else reason
        return None


@dataclass
class PreparedBatch:
    """A loaded backend and a staged batch: `run()` is one `Backend.run` call, as `segment` makes it."""

    run: Callable[[], object]
    backend: Backend
    details: dict[str, object] = field(default_factory=dict)


def load_target(target: BenchTarget, model_name: str, device: str, batch_max: int,
                checkpoints: Sequence[str] = ()) -> Backend:
    """The backend `segment --model <model_name> --weights ... --backend ... --precision ...` runs, from
    `load_backend` (for tensorrt: the cached fp16 package with this GPU's engine, what `segment --model
    <package>` runs); `checkpoints` as segment's --weights (() the model's own: shipped or seeded random)."""
    return load_backend(model_name, target.backend, device, target.precision, checkpoints, fast=target.fast,
                        batch_max=batch_max, build_engine=True)


def stage_batch(backend: Backend, model_name: str, batch: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Random uint8 tiles (batch, 1, T, T) and, for prompted models, their prompts (host arrays)."""
    with torch.device("meta"):
        shapes_only = build(model_name)  # example_inputs' shapes and dtypes, no weights
    example = shapes_only.example_inputs(batch=batch, seed=seed, device="cpu")
    prompts = {name: example[name].numpy() for name in backend.spec.prompts}
    return example["tiles"].numpy(), prompts


def prepare(backend: Backend, model_name: str, batch: int) -> PreparedBatch:
    """Stage `batch` slices for `backend`; `run()` is the call `segment` makes on a slab of them:
    `slab.segment_slab` (labels only, centre blend), which takes the backend's device path (`run_planes`:
    upload, tiling, model, stitching, download) where it has one, else `Backend.run` on host tiles. Each slice
    is one tile (T × T, halo 0), so the time per slice is Table 5's per-image time."""
    tiles, prompts = stage_batch(backend, model_name, batch, seed=batch)
    tile = backend.spec.tile
    plan = plan_tiles((tile, tile), tile, 0)  # one tile per slice
    slab = np.ascontiguousarray(tiles[:, 0])  # (batch, T, T) uint8
    label_type = np.dtype(label_dtype(len(backend.spec.classes)))

    def run() -> object:
        return segment_slab(backend, slab, plan, batch=batch, blend="center", probabilities=False,
                            label_type=label_type, prompts=prompts or None)

    path = "run_planes" if takes_device_path(backend) else "run"
    return PreparedBatch(run, backend, {"identity": backend.spec.identity, "call": path, **backend.spec.details})
