"""Benchmark runners: one per backend configuration, behind one small interface.

A runner loads a registered model its way and returns a callable that runs one prepared batch; the
timing, memory and reporting code never asks which runner it holds.

- torch-eager-fp32: the research code's way: eager PyTorch, fp32, segment_anything's attention.
- torch-fp16:       our best PyTorch path: SDPA attention, autocast (fp16 on CUDA; bf16 on CPU, where
                    fp16 matmuls have no fast kernels), and on CUDA torch.compile with CUDA graphs.
- onnxruntime:      the exported fp32 full graph in ONNX Runtime (CUDA provider when present).
- tensorrt:         an engine built for this GPU; needs TensorRT (or TensorRT for RTX) and a GPU it targets.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.models.attention import use_sdpa_attention

BACKENDS = ("torch-eager-fp32", "torch-fp16", "onnxruntime", "tensorrt")


@dataclass
class PreparedBatch:
    """A batch ready to run: `run()` executes the whole per-slice graph once on it."""

    run: Callable[[], object]
    precision: str
    details: dict[str, object] = field(default_factory=dict)


class BenchRunner(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when this runner can run here, else one line saying why not."""
        ...

    def prepare(self, model_name: str, batch: int) -> PreparedBatch:
        """Load `model_name` (cached between batch sizes) and stage a random batch of `batch` tiles."""
        ...

    def close(self) -> None:
        ...


def _example_inputs(model: nn.Module, batch: int, device: str) -> dict[str, torch.Tensor]:
    return model.example_inputs(batch=batch, seed=batch, device=device)


class TorchEagerRunner:
    """Eager PyTorch in fp32, as the papers' research code runs."""

    name = "torch-eager-fp32"

    def __init__(self, device: str) -> None:
        self.device = device
        self._models: dict[str, nn.Module] = {}

    def unavailable_reason(self) -> str | None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
        return None

    def model(self, model_name: str) -> nn.Module:
        if model_name not in self._models:
            self._models.clear()  # one model resident at a time
            self._models[model_name] = self._load(model_name)
        return self._models[model_name]

    def _load(self, model_name: str) -> nn.Module:
        return build(model_name).eval().requires_grad_(False).to(self.device)

    def prepare(self, model_name: str, batch: int) -> PreparedBatch:
        model = self.model(model_name)
        inputs = _example_inputs(model, batch, self.device)

        def run() -> object:
            with torch.inference_mode():
                return model(**inputs)

        return PreparedBatch(run, "fp32")

    def close(self) -> None:
        self._models.clear()


class TorchFastRunner(TorchEagerRunner):
    """SDPA attention + autocast (+ torch.compile with CUDA graphs on CUDA)."""

    name = "torch-fp16"

    def __init__(self, device: str, compile_model: bool | None = None) -> None:
        super().__init__(device)
        self.compile_model = device.startswith("cuda") if compile_model is None else compile_model
        self.dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16

    def _load(self, model_name: str) -> nn.Module:
        model = super()._load(model_name)
        use_sdpa_attention(model)
        return model

    def prepare(self, model_name: str, batch: int) -> PreparedBatch:
        model = self.model(model_name)
        inputs = _example_inputs(model, batch, self.device)
        device_type = torch.device(self.device).type
        forward: Callable[..., object] = model
        if self.compile_model:
            forward = torch.compile(model, mode="max-autotune", dynamic=False)

        def run() -> object:
            with torch.inference_mode(), torch.autocast(device_type, dtype=self.dtype):
                return forward(**inputs)

        precision = "fp16" if self.dtype == torch.float16 else "bf16"
        return PreparedBatch(run, precision, {"sdpa": True, "compiled": self.compile_model,
                                              "cuda_graphs": self.compile_model})


class OnnxRuntimeRunner:
    """The fp32 full per-slice graph (what a package's `full.onnx` holds) in an ONNX Runtime session."""

    name = "onnxruntime"

    def __init__(self, device: str, cache_dir: Path, batch_max: int, threads: int | None = None) -> None:
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.batch_max = batch_max
        self.threads = threads
        self._sessions: dict[str, tuple[object, nn.Module, list[str]]] = {}

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        if self.device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
        return None

    def _full_graph(self, model_name: str) -> Path:
        """The model's whole per-slice graph as the package's `full.onnx` would hold it (same exporter,
        batch dynamic up to batch_max), cached; exported alone, without components or parity runs."""
        from emseg_rt.export.onnx_export import FullGraph, export_onnx

        target = self.cache_dir / f"{model_name}-full-fp32-b{self.batch_max}.onnx"
        if target.is_file():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        model = build(model_name).eval()
        example = model.example_inputs(batch=min(2, self.batch_max))
        names = list(example)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as staging_dir:
            staged = Path(staging_dir) / target.name  # external data keeps its relative name when moved
            export_onnx(FullGraph(model, model.prompt_names), [example[n] for n in names], names,
                        ("logits", "labels"), staged, self.batch_max)
            for data in Path(staging_dir).glob(target.name + ".data"):
                data.rename(target.with_name(data.name))
            staged.rename(target)
        return target

    def _session(self, model_name: str) -> tuple[object, nn.Module, list[str]]:
        if model_name not in self._sessions:
            import onnxruntime as ort

            self._sessions.clear()
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            options.log_severity_level = 3
            providers = (["CUDAExecutionProvider"] if self.device.startswith("cuda") else []) + ["CPUExecutionProvider"]
            session = ort.InferenceSession(str(self._full_graph(model_name)), options, providers=providers)
            with torch.device("meta"):
                shapes_only = build(model_name)  # for example_inputs' shapes and dtypes
            names = [i.name for i in session.get_inputs()]
            self._sessions[model_name] = (session, shapes_only, names)
        return self._sessions[model_name]

    def prepare(self, model_name: str, batch: int) -> PreparedBatch:
        session, shapes_only, names = self._session(model_name)
        example = shapes_only.example_inputs(batch=batch, seed=batch, device="cpu")
        feeds = {name: np.ascontiguousarray(example[name].numpy()) for name in names}

        def run() -> object:
            return session.run(None, feeds)  # type: ignore[attr-defined]

        return PreparedBatch(run, "fp32", {"providers": session.get_providers()})  # type: ignore[attr-defined]

    def close(self) -> None:
        self._sessions.clear()


class TensorRtRunner:
    """The fp16 package's full-graph engine for this GPU, built on first use and run by `EngineRunner`.

    TensorRT for RTX targets RTX parts only (sm75–sm121, no Hopper); standard TensorRT (NVIDIA's index)
    builds for the GPU it runs on. Either way the engine runs only on a GPU it was built for.
    """

    name = "tensorrt"

    def __init__(self, device: str, cache_dir: Path, batch_max: int) -> None:
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.batch_max = batch_max
        self._runners: dict[str, object] = {}

    def _flavour(self) -> tuple[str | None, str]:
        """(flavour that can build and run for this GPU, or None; the reason when None)."""
        if not (self.device.startswith("cuda") and torch.cuda.is_available()):
            return None, "no CUDA GPU here: TensorRT engines run only on a GPU"
        from emseg_rt.engines.build import RTX_TARGETS

        major, minor = torch.cuda.get_device_capability(torch.device(self.device))
        target = f"sm{major}{minor}"
        reasons = []
        for flavour, module in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx")):
            try:
                __import__(module)
            except ImportError:
                reasons.append(f"{module} is not installed")
                continue
            if flavour == "tensorrt-rtx" and target not in RTX_TARGETS:
                reasons.append(f"tensorrt_rtx has no {target} target ({torch.cuda.get_device_name()})")
                continue
            return flavour, ""
        return None, "; ".join(reasons)

    def unavailable_reason(self) -> str | None:
        flavour, reason = self._flavour()
        return None if flavour else reason

    def _runner(self, model_name: str) -> object:
        if model_name not in self._runners:
            from emseg_rt.engines.build import build_engines, current_target
            from emseg_rt.engines.runner import EngineRunner
            from emseg_rt.export.onnx_export import export_package
            from emseg_rt.export.package import load_package

            self._runners.clear()
            flavour, reason = self._flavour()
            if flavour is None:
                raise EmsegError(reason)
            target_dir = self.cache_dir / f"{model_name}-fp16-b{self.batch_max}"
            try:
                package = load_package(target_dir)
            except EmsegError:
                export_package(model_name, target_dir, precision="fp16", batch_max=self.batch_max, overwrite=True)
                package = load_package(target_dir)
            target = current_target()
            if target not in package.engines.get("full", {}):
                build_engines(target_dir, targets=[target], flavour=flavour, components=["full"])
                package = load_package(target_dir)
            self._runners[model_name] = EngineRunner(package, component="full", target=target, flavour=flavour)
        return self._runners[model_name]

    def prepare(self, model_name: str, batch: int) -> PreparedBatch:
        runner = self._runner(model_name)
        with torch.device("meta"):
            shapes_only = build(model_name)
        inputs = shapes_only.example_inputs(batch=batch, seed=batch, device=self.device)

        def run() -> object:
            return runner.run(inputs)  # type: ignore[attr-defined]

        return PreparedBatch(run, "fp16", {"flavour": runner.record.flavour, "target": runner.record.target})  # type: ignore[attr-defined]

    def close(self) -> None:
        self._runners.clear()


def make_runner(name: str, device: str, cache_dir: Path, batch_max: int) -> BenchRunner:
    """The runner for a backend name in BACKENDS."""
    if name == "torch-eager-fp32":
        return TorchEagerRunner(device)
    if name == "torch-fp16":
        return TorchFastRunner(device)
    if name == "onnxruntime":
        return OnnxRuntimeRunner(device, cache_dir, batch_max)
    if name == "tensorrt":
        return TensorRtRunner(device, cache_dir, batch_max)
    raise EmsegError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
