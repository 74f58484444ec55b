"""Run a package's TensorRT engine on the current GPU with torch CUDA tensors as buffers (no pycuda).

    package = load_package("out/scsam-vit-b")
    runner = EngineRunner(package, component="full")        # the engine for this GPU's smXY
    outputs = runner.run({"tiles": tiles_uint8_cuda})          # {'logits': (B,K,T,T) f32, 'labels': (B,T,T) u8}

Which engine runs is `select_engine`'s decision (select.py): built for this GPU's compute capability,
with exactly the installed TensorRT flavour and version; otherwise an EmsegError says what to rebuild,
before anything is deserialised. Running needs an NVIDIA GPU with TensorRT (RTX-class for tensorrt-rtx).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emseg_rt.engines.select import gpu_target, select_engine
from emseg_rt.engines.trt import import_flavour
from emseg_rt.errors import EmsegError
from emseg_rt.package import FULL, ModelPackage

TORCH_DTYPES = {"uint8": "uint8", "float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
                "bool": "bool"}


class EngineRunner:
    """One deserialised engine + execution context for one package component on the current GPU.

    package:   a loaded package (`emseg_rt.package.load_package`).
    component: which graph's engine ('full', an encoder, 'head').
    target, flavour: optional expectations ('sm86', 'tensorrt-rtx'); an EmsegError when the engine
               `select_engine` picks for this GPU does not meet them.
    """

    def __init__(self, package: ModelPackage, component: str = FULL, target: str | None = None,
                 flavour: str | None = None) -> None:
        import torch  # deferred: the engine layer loads torch only to drive a GPU (test_package)

        self.component = package.component(component)
        record = select_engine(package, gpu_target(), component)
        if target is not None and record.target != target:
            raise EmsegError(f"{record.file}: asked for a {target} engine, but this GPU is {record.target}")
        if flavour is not None and record.flavour != flavour:
            raise EmsegError(f"{record.file} was built with {record.flavour}, not {flavour}; "
                             f"run `emseg-rt build {package.root} --target {record.target} --engine-backend {flavour}`")
        self.package = package
        self.record = record
        trt = import_flavour(record.flavour)
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
        import torch  # deferred: the engine layer loads torch only to drive a GPU (test_package)

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
