"""Run a package's TensorRT engine on the current GPU with torch CUDA tensors as buffers (no pycuda).

    package = load_package("out/scsam-vit-b")
    runner = EngineRunner(package, component="full")        # picks the engine for this GPU's smXY
    outputs = runner.run({"tiles": tiles_uint8_cuda})          # {'logits': (B,K,T,T) f32, 'labels': (B,T,T) u8}

Before deserialising, the runner checks that the engine was built for this GPU's compute capability
and with the installed TensorRT flavour and version (engines from another version fail to load), and
says how to rebuild when not. Running needs an NVIDIA GPU with TensorRT (RTX-class for tensorrt-rtx).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emseg_rt.engines.build import current_target
from emseg_rt.engines.trt import flavour_version, import_flavour
from emseg_rt.errors import EmsegError
from emseg_rt.export.package import EngineRecord, ModelPackage

TORCH_DTYPES = {"uint8": "uint8", "float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
                "bool": "bool"}


def check_engine_compatible(record: EngineRecord, device_target: str, installed_version: str) -> None:
    """EmsegError unless `record` was built for `device_target` with exactly `installed_version`."""
    rebuild = f"run `emseg-rt build {record.path.parent.parent} --target {device_target} --engine-backend {record.flavour}`"
    if record.target != device_target:
        raise EmsegError(f"{record.file} was built for {record.target}, this GPU is {device_target}; {rebuild}")
    if record.trt_version != installed_version:
        raise EmsegError(
            f"{record.file} was built with {record.flavour} {record.trt_version}, installed is {installed_version}; "
            f"engines do not load across versions; {rebuild}"
        )


class EngineRunner:
    """One deserialised engine + execution context for one package component on the current GPU."""

    def __init__(self, package: ModelPackage, component: str = "full", target: str | None = None,
                 flavour: str | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EmsegError("running a TensorRT engine needs an NVIDIA GPU; none is visible (use the onnxruntime backend)")
        device_target = current_target()
        self.package = package
        self.component = package.component(component)
        candidates = package.engines.get(component, {})
        record = candidates.get(target or device_target)
        if record is None or (flavour and record.flavour != flavour):
            record = package.engine(component, target or device_target)
        self.record = record
        trt = import_flavour(record.flavour)
        check_engine_compatible(record, device_target, flavour_version(trt))
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(record.path.read_bytes())
        if self.engine is None:
            raise EmsegError(f"{record.file}: {record.flavour} could not deserialise the engine (see the log above)")
        self.context = self.engine.create_execution_context()
        self.input_names = [n for n in self._io_names() if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in self._io_names() if n not in self.input_names]
        self.device = torch.device("cuda", torch.cuda.current_device())

    def _io_names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    @property
    def batch_max(self) -> int:
        return self.record.batch_max

    def run(self, inputs: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
        """Run one batch.

        inputs:  {name: (B, ...) torch tensor (any device) or numpy array}, dtypes and shapes as the
                 component's manifest spec, 1 ≤ B ≤ batch_max.
        stream:  a torch.cuda.Stream (default: the current stream); outputs are ready on that stream.
        returns  {output name: torch CUDA tensor}.
        """
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EmsegError(f"engine {self.record.file}: missing input(s) {', '.join(missing)}")
        stream = stream or torch.cuda.current_stream(self.device)
        buffers: dict[str, torch.Tensor] = {}
        batch = None
        for name in self.input_names:
            spec = self.component.input(name)
            value = inputs[name]
            tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
            tensor = tensor.to(self.device, dtype=getattr(torch, TORCH_DTYPES[spec.dtype]), non_blocking=True).contiguous()
            batch = tensor.shape[0] if batch is None else batch
            expected = spec.concrete_shape(batch)
            if tuple(tensor.shape) != expected or not 1 <= batch <= self.batch_max:
                raise EmsegError(f"engine {self.record.file}: input {name} has shape {tuple(tensor.shape)}, "
                                 f"expected {expected} with batch 1..{self.batch_max}")
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            buffers[name] = tensor
        outputs: dict[str, torch.Tensor] = {}
        for name in self.output_names:
            spec = self.component.output(name)
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=getattr(torch, TORCH_DTYPES[spec.dtype]), device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        with torch.cuda.stream(stream):
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"engine {self.record.file}: execute_async_v3 failed")
        for tensor in buffers.values():
            tensor.record_stream(stream)
        return outputs
