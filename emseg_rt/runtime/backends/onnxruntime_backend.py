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


def providers_for(device: str) -> list[str]:
    """Execution providers in preference order: TensorRT, CUDA for --device cuda; CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.startswith("cuda") else []
    chosen = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    if device.startswith("cuda") and len(chosen) == 1:
        raise EmsegError("--device cuda requested but onnxruntime has no CUDA/TensorRT provider here "
                         "(install onnxruntime-gpu); use --device cpu")
    return chosen


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
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers_for(device))
    except EmsegError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EmsegError(f"onnxruntime could not load {onnx_path}: {str(exc).splitlines()[0]}") from exc


class OnnxGraph:
    """One ONNX graph in a session: `run({input name: array}) → {output name: array}`."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(onnx_path)
        self.session = open_session(self.path, device, threads)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.providers = tuple(self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """feeds: every graph input by name (batch first); returns the named outputs (all by default)."""
        wanted = list(outputs or self.output_names)
        values = self.session.run(wanted, {name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
        return dict(zip(wanted, values))


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

    def close(self) -> None:
        self.graph = None  # type: ignore[assignment]
