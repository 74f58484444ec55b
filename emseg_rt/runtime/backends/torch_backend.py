"""PyTorch backend: a `SegmentationPipeline` in eager mode on CPU or CUDA, fp32 or fp16 (autocast)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import BackendSpec


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TorchBackend:
    """Runs a PyTorch pipeline. fp16 uses autocast (matmuls/convs in fp16, the rest as the model asks)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32", model_id: str = "") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EmsegError("--device cuda requested but torch sees no CUDA GPU here; use --device cpu")
        if precision not in ("fp32", "fp16"):
            raise EmsegError(f"--precision {precision!r} is not supported by the torch backend (fp32, fp16)")
        self.device = torch.device(device)
        self.precision = precision
        self.model = model.eval().to(self.device)
        config = model.config
        self.threshold = float(getattr(getattr(model.head, "class_merge", None), "threshold", 0.0) or 0.0)
        identity = f"torch|{device.split(':')[0]}|{precision}|{model_id or state_dict_digest(model)}"
        self.spec = BackendSpec(tile=config.tile, classes=tuple(config.classes), threshold=self.threshold,
                                identity=identity, details={"torch": torch.__version__, "device": str(self.device)})

    def run(self, tiles: np.ndarray, want_logits: bool = False) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                    enabled=self.precision == "fp16"):
            out = self.model(batch)
        result = {"labels": out["labels"].cpu().numpy()}
        if want_logits:
            result["logits"] = out["logits"].float().cpu().numpy()
        return result

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
