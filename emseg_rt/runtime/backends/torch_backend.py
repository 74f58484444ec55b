"""PyTorch backend: a `SegmentationPipeline` on CPU or CUDA, and the project's only torch fast path.

Two modes, both reachable from `segment` and timed by `bench` through this one class:

- reference (`fast=False`): the research code's way, segment_anything's attention, fp32 or autocast.
- fast (`fast=True`, the default): SAM attention through `F.scaled_dot_product_attention` with the
  decomposed relative position as an additive bias (`emseg_rt.models.attention`), autocast to the
  requested precision, and on CUDA `torch.compile(mode="max-autotune")` with static shapes (CUDA graphs;
  `segment` pads every batch to full size, so shapes never change).

Precision names what runs: 'fp32', 'fp16' (autocast float16: the fast choice on CUDA) or 'bf16'
(autocast bfloat16: the fast choice on CPUs with AVX-512 bf16, where fp16 matmuls have no fast kernels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import TORCH_PRECISIONS, BackendSpec, check_outputs

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Without it torch emulates bf16 and
    autocast is slower than fp32 (measured 2.3x slower on a Xeon with AVX-512 but no BF16:
    benchmarks/results/bench_vs_segment.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_precision(device: str) -> str:
    """The precision the fast path uses by default on `device`: fp16 on CUDA, bf16 on a CPU that has bf16
    instructions, else fp32."""
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def _class_merge_threshold(model: nn.Module) -> float:
    merge = getattr(getattr(model, "head", None), "class_merge", None)
    return float(getattr(merge, "threshold", 0.0) or 0.0)


class TorchBackend:
    """Runs a PyTorch pipeline (fast path by default; see the module docstring)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32", model_id: str = "", *,
                 fast: bool = True, compile: bool | None = None) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EmsegError("--device cuda requested but torch sees no CUDA GPU here; use --device cpu")
        if precision not in TORCH_PRECISIONS:
            raise EmsegError(f"--precision {precision!r}: the torch backend runs {', '.join(TORCH_PRECISIONS)}")
        self.device = torch.device(device)
        self.precision = precision
        self.fast = fast
        self.compiled = bool(fast and (self.device.type == "cuda" if compile is None else compile))
        self.model = model.eval().requires_grad_(False).to(self.device)
        if fast:
            from emseg_rt.models.attention import use_sdpa_attention

            use_sdpa_attention(self.model)
        self.forward = torch.compile(self.model, mode="max-autotune", dynamic=False) if self.compiled else self.model
        if not model_id:
            from emseg_rt.models.checkpoint import state_dict_digest

            model_id = state_dict_digest(model)
        mode = ("sdpa+compile" if self.compiled else "sdpa") if fast else "reference"
        config = model.config
        extras = tuple(n for n in getattr(model, "output_names", ()) if n not in ("logits", "labels"))
        self.spec = BackendSpec(
            tile=config.tile, classes=tuple(config.classes), threshold=_class_merge_threshold(model),
            extra_outputs=extras,
            prompts=tuple(getattr(model, "prompt_names", ())), precision=precision,
            identity=f"torch|{self.device.type}|{precision}|{mode}|{model_id}",
            details={"torch": torch.__version__, "device": str(self.device), "mode": mode},
        )

    def run(self, tiles: np.ndarray, want_logits: bool = False,
            prompts: Mapping[str, np.ndarray] | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 [+ prompts by name] → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]
        [+ the named extra outputs, float32]."""
        extras = check_outputs(self.spec, outputs)
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, non_blocking=True)
        extra = {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                 for name, value in (prompts or {}).items()}
        if getattr(self.model, "can_skip_logits", False):
            extra["want_logits"] = want_logits  # labels only: the clustering head's fused kernel on CUDA
        for name in self.spec.extra_outputs:  # heads skip extra outputs nobody asked for (want_<name>=False)
            if name not in extras:
                extra[f"want_{name}"] = False
        dtype = AUTOCAST_DTYPES.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.forward(batch, **extra)
        result = {"labels": out["labels"].cpu().numpy()}
        if want_logits:
            result["logits"] = out["logits"].float().cpu().numpy()
        for name in extras:
            result[name] = out[name].float().cpu().numpy()
        return result

    def close(self) -> None:
        self.model = self.forward = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
