"""ONNX Runtime backend: the package's full per-slice graph on the best provider this machine has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import BackendSpec


def providers_for(device: str) -> list[str]:
    """Execution providers in preference order: TensorRT, CUDA for --device cuda; CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.startswith("cuda") else []
    chosen = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    if device.startswith("cuda") and len(chosen) == 1:
        raise EmsegError("--device cuda requested but onnxruntime has no CUDA/TensorRT provider here "
                         "(install onnxruntime-gpu) ; use --device cpu")
    return chosen


class OnnxRuntimeBackend:
    """Runs an ONNX graph `tiles (B,1,T,T) uint8 → logits, labels` in an InferenceSession."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, tile: int, classes: tuple[str, ...], *, device: str = "cpu",
                 input_name: str = "tiles", output_names: tuple[str, ...] = ("logits", "labels"),
                 model_id: str = "", precision: str = "fp32", threads: int | None = None,
                 batch_max: int | None = None) -> None:
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise EmsegError(f"ONNX graph {onnx_path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # The runtime's reader and writer threads share the CPU with this session: idle intra-op workers
        # must sleep, not spin, or they take the cores the reader/writer need (and vice versa).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EmsegError(f"onnxruntime could not load {onnx_path}: {str(exc).splitlines()[0]}") from exc
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in output_names if n not in names]
        if missing:
            raise EmsegError(f"{onnx_path} has no output(s) {missing}; outputs are {sorted(names)}")
        self.input_name = input_name
        self.output_names = output_names
        identity = f"onnxruntime|{self.providers[0]}|{precision}|{model_id}"
        self.spec = BackendSpec(tile=tile, classes=tuple(classes), input_name=input_name,
                                output_names=tuple(output_names), identity=identity,
                                details={"onnxruntime": ort.__version__, "providers": self.providers,
                                         "onnx": str(onnx_path), "batch_max": batch_max})

    def run(self, tiles: np.ndarray, want_logits: bool = False) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]."""
        logits_name, labels_name = self.output_names[0], self.output_names[1]
        wanted = [labels_name, logits_name] if want_logits else [labels_name]
        outputs = self.session.run(wanted, {self.input_name: np.ascontiguousarray(tiles)})
        result = {"labels": outputs[0]}
        if want_logits:
            result["logits"] = outputs[1].astype(np.float32, copy=False)
        return result

    def close(self) -> None:
        self.session = None
