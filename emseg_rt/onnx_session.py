"""ONNX Runtime sessions: the only code in emseg-rt that opens one.

- `open_session(path, device)`: one session with the project's options (sleeping intra-op workers, quiet
  log, the best providers for the device).
- `OnnxGraph`: any graph of a package (an encoder, the head, the full graph) run by name → arrays, or by IO
  binding on torch tensors.

Export parity, training's embedding cache and the runtime's ONNX Runtime backend all use these (a bottom-floor
module beside `package.py`, so each of them can import it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from emseg_rt.errors import EmsegError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preference order on --device cuda


def device_index(device: str) -> int:
    """'cuda' → 0, 'cuda:N' → N, 'cpu' → 0 (ONNX Runtime's device_id)."""
    return int(device.partition(":")[2] or 0)


def providers_for(device: str) -> list[str]:
    """Execution provider names in preference order: TensorRT, CUDA for --device cuda[:N]; CPU always last.
    EmsegError on --device cuda when this onnxruntime has no GPU provider (the CPU-only wheel)."""
    available = ort.get_available_providers()
    wanted = list(GPU_PROVIDERS) if device.startswith("cuda") else []
    chosen = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    if device.startswith("cuda") and len(chosen) == 1:
        raise EmsegError(f"--device {device} requested but onnxruntime has no CUDA/TensorRT provider here "
                         "(replace onnxruntime by onnxruntime-gpu: pip uninstall onnxruntime && pip install "
                         "onnxruntime-gpu); use --device cpu")
    return chosen


def provider_options(providers: Sequence[str], device: str) -> list[dict[str, str]]:
    """Per-provider options: the GPU providers run on GPU N of --device cuda:N (ONNX Runtime's default is GPU 0
    whatever was asked); the CPU provider takes none."""
    return [{"device_id": str(device_index(device))} if name in GPU_PROVIDERS else {} for name in providers]


def open_session(onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An `onnxruntime.InferenceSession` for `onnx_path` (external data is found beside the file).

    Idle intra-op workers sleep rather than spin: the runtime's reader and writer threads share the CPU
    with the session, and spinning workers take the cores they need (and vice versa).
    EmsegError when the file is missing or ONNX Runtime refuses it.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EmsegError(f"ONNX graph {onnx_path} does not exist")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers_for(device)
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers,
                                    provider_options=provider_options(providers, device))
    except EmsegError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EmsegError(f"onnxruntime could not load {onnx_path}: {str(exc).splitlines()[0]}") from exc


class OnnxGraph:
    """One ONNX graph in a session: `run({input name: array}) → {output name: array}`."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(onnx_path)
        self.device = device
        self.session = open_session(self.path, device, threads)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.output_types = {o.name: o.type for o in self.session.get_outputs()}
        self.providers = tuple(self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """feeds: every graph input by name (batch first); returns the named outputs (all by default)."""
        wanted = list(outputs or self.output_names)
        values = self.session.run(wanted, {name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
        return dict(zip(wanted, values))

    def run_bound(self, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None:
        """IO binding on torch tensors: ONNX Runtime reads every input from, and writes each named output into,
        the given tensors' memory where they lie (CPU or CUDA, no copy through numpy).

        feeds:   every graph input by name, contiguous torch tensors of the graph's dtype and shape.
        outputs: the outputs wanted, preallocated contiguous torch tensors of their exact shape and dtype (the
                 rest of the graph's outputs are not copied anywhere).
        """
        cuda = {t.device for t in (*feeds.values(), *outputs.values()) if t.device.type == "cuda"}
        for device in cuda:  # torch's kernels that wrote the inputs are asynchronous; ONNX Runtime has its own stream
            torch.cuda.current_stream(device).synchronize()
        binding = self.session.io_binding()
        for name in self.input_names:
            _bind(binding.bind_input, name, feeds[name])
        for name, tensor in outputs.items():
            _bind(binding.bind_output, name, tensor)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the outputs are written before torch reads them


def _bind(bind: Any, name: str, tensor: torch.Tensor) -> None:
    """`IOBinding.bind_input/bind_output` on a torch tensor's memory (device, dtype, shape, pointer)."""
    if not tensor.is_contiguous():
        raise ValueError(f"{name}: IO binding needs a contiguous tensor")
    element = torch.empty((), dtype=tensor.dtype).numpy().dtype
    bind(name, tensor.device.type, tensor.device.index or 0, element, list(tensor.shape), tensor.data_ptr())
