"""ONNX Runtime backend: the only code in emseg-rt that opens ONNX Runtime sessions.

- `open_session(path, device)`: one session with the project's options (sleeping intra-op workers, quiet
  log, the best providers for the device). Export parity, the embedding cache and the runtime all use it.
- `OnnxGraph`: any graph of a package (an encoder, the head, the full graph) run by name → arrays.
- `OnnxRuntimeBackend`: the package's full per-slice graph behind the `Backend` interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import BackendSpec, check_outputs

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preference order on --device cuda


def device_index(device: str) -> int:
    """'cuda' → 0, 'cuda:N' → N, 'cpu' → 0 (ONNX Runtime's device_id)."""
    return int(device.partition(":")[2] or 0)


def providers_for(device: str) -> list[str]:
    """Execution provider names in preference order: TensorRT, CUDA for --device cuda[:N]; CPU always last.
    EmsegError on --device cuda when this onnxruntime has no GPU provider (the CPU-only wheel)."""
    import onnxruntime as ort

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


def open_session(onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An `onnxruntime.InferenceSession` for `onnx_path` (external data is found beside the file).

    Idle intra-op workers sleep rather than spin: the runtime's reader and writer threads share the CPU
    with the session, and spinning workers take the cores they need (and vice versa).
    EmsegError when the file is missing or ONNX Runtime refuses it.
    """
    import onnxruntime as ort

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

    def run_bound(self, feeds: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """IO binding on torch tensors: ONNX Runtime reads every input from, and writes each named output into,
        the given tensors' memory where they lie (CPU or CUDA, no copy through numpy).

        feeds:   every graph input by name, contiguous torch tensors of the graph's dtype and shape.
        outputs: the outputs wanted, preallocated contiguous torch tensors of their exact shape and dtype (the
                 rest of the graph's outputs are not copied anywhere).
        """
        import torch

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


def _bind(bind: Any, name: str, tensor: Any) -> None:
    """`IOBinding.bind_input/bind_output` on a torch tensor's memory (device, dtype, shape, pointer)."""
    import torch

    if not tensor.is_contiguous():
        raise ValueError(f"{name}: IO binding needs a contiguous tensor")
    element = torch.empty((), dtype=tensor.dtype).numpy().dtype
    bind(name, tensor.device.type, tensor.device.index or 0, element, list(tensor.shape), tensor.data_ptr())


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
        import onnxruntime as ort

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
        `device_tiling.DevicePath.run` for batches, blending and `timings`.
        """
        import torch

        from emseg_rt.runtime.device_tiling import DevicePath

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
    import torch

    names = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(uint8)": torch.uint8,
             "tensor(int32)": torch.int32, "tensor(int64)": torch.int64, "tensor(uint16)": torch.uint16}
    if onnx_type not in names:
        raise EmsegError(f"an ONNX output of type {onnx_type} cannot be bound to a torch tensor")
    return names[onnx_type]
