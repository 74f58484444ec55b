"""PyTorch backend: a `SegmentationPipeline` on CPU or CUDA, and the project's only torch fast path.

Two modes, both reachable from `segment` and timed by `bench` through this one class:

- reference (`fast=False`): the research code's way, segment_anything's attention, fp32 or autocast.
- fast (`fast=True`, the default): SAM attention through `F.scaled_dot_product_attention` with the
  decomposed relative position as an additive bias (`emseg_rt.models.attention`), autocast to the
  requested precision with the Linear and convolution weights stored in it (`cast_matmul_weights`), and
  on CUDA `torch.compile(mode="max-autotune")` with static shapes (CUDA graphs; `segment` pads every batch
  to full size, so shapes never change).

Precision names what runs: 'fp32', 'fp16' (autocast float16: the fast choice on CUDA) or 'bf16'
(autocast bfloat16: the fast choice on CPUs with AVX-512 bf16, where fp16 matmuls have no fast kernels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.attention import use_sdpa_attention
from emseg_rt.models.checkpoint import state_dict_digest
from emseg_rt.runtime.backends.base import TORCH_PRECISIONS, BackendSpec, check_outputs
from emseg_rt.runtime.device_path import DevicePath
from emseg_rt.runtime.devices import cpu_has_bf16
from emseg_rt.tiling import TilePlan

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def fast_precision(device: str) -> str:
    """The precision the fast path uses by default on `device`: fp16 on CUDA, bf16 on a CPU that has bf16
    instructions, else fp32."""
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights and biases of every Linear and convolution in `dtype` (fp16/bf16); returns how many
    modules were cast. Everything else (LayerNorm and other norms, embeddings, SAM's relative-position
    tables, class prototypes, cluster centres) stays fp32.

    Under autocast these layers compute in `dtype` anyway, and autocast casts their fp32 weights on every
    call (for ViT-H, 2.5 GB read and 1.3 GB written per call: about 1 ms of an H100's ~8 ms floor). Cast once,
    the numbers are the same (the same round-to-nearest cast) and the weights take half the memory."""
    cast = 0
    for module in model.modules():
        if isinstance(module, MATMUL_MODULES):
            module.to(dtype)
            cast += 1
    return cast


def _class_merge_threshold(model: nn.Module) -> float:
    merge = getattr(getattr(model, "head", None), "class_merge", None)
    return float(getattr(merge, "threshold", 0.0) or 0.0)


class TorchBackend:
    """Runs a PyTorch pipeline (fast path by default; see the module docstring). It takes the model over: the
    fast path changes it in place (SDPA attention, Linear/conv weights in fp16/bf16), so pass a model of its own."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32", model_id: str = "", *,
                 fast: bool = True, compile: bool | None = None) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EmsegError("--device cuda requested but torch sees no CUDA GPU here; use --device cpu")
        if precision not in TORCH_PRECISIONS:
            raise EmsegError(f"--precision {precision!r}: the torch backend runs {', '.join(TORCH_PRECISIONS)}")
        self.device = torch.device(device)
        self.precision = precision
        self._device_path = DevicePath(self.device)  # run_planes: upload, tiling, stitching on this device
        self.fast = fast
        self.compiled = bool(fast and (self.device.type == "cuda" if compile is None else compile))
        self.model = model.eval().requires_grad_(False).to(self.device)
        if fast:
            use_sdpa_attention(self.model)
            if precision in AUTOCAST_DTYPES:
                cast_matmul_weights(self.model, AUTOCAST_DTYPES[precision])
        # max-autotune on CUDA (GEMM autotuning, CUDA graphs); Inductor's default mode on a CPU, where
        # max-autotune took 338 s to compile scsam-vit-b (on a loaded machine) and default mode 71 s (quiet)
        mode = "max-autotune" if self.device.type == "cuda" else None
        self.forward = torch.compile(self.model, mode=mode, dynamic=False) if self.compiled else self.model
        if not model_id:
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
            reference_window=getattr(config, "reference_window", None),
        )

    def cpu_threads(self) -> int | None:
        """torch's intra-op thread count on a CPU (its reductions, and so the last bits of the logits, depend on
        it; a run records it: `runtime.plan.run_config`); None on a GPU."""
        return torch.get_num_threads() if self.device.type == "cpu" else None

    def run(self, tiles: np.ndarray, want_logits: bool = False,
            prompts: Mapping[str, np.ndarray] | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """tiles (B, 1, T, T) uint8 [+ prompts by name] → labels (B, T, T) uint8 [+ logits (B, K, T, T) float32]
        [+ the named extra outputs, float32]."""
        extras = check_outputs(self.spec, outputs)
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, non_blocking=True)
        extra = {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                 for name, value in (prompts or {}).items()}
        extra.update(self._output_flags(want_logits, extras))
        dtype = AUTOCAST_DTYPES.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.forward(batch, **extra)
        result = {"labels": out["labels"].cpu().numpy()}
        if want_logits:
            result["logits"] = out["logits"].float().cpu().numpy()
        for name in extras:
            result[name] = out[name].float().cpu().numpy()
        return result

    def _output_flags(self, want_logits: bool, extras: Sequence[str]) -> dict[str, bool]:
        """The forward's want_* flags: want_logits where the head can skip logits (the clustering head's fused
        labels-only kernel on CUDA), want_<name>=False for each extra output not in `extras`."""
        flags = {"want_logits": want_logits} if getattr(self.model, "can_skip_logits", False) else {}
        for name in self.spec.extra_outputs:
            if name not in extras:
                flags[f"want_{name}"] = False
        return flags

    def run_planes(self, slab: np.ndarray, plan: TilePlan, *, batch: int, blend: str, label_type: np.dtype,
                   threshold: float, timings: dict | None = None) -> np.ndarray:
        """Segment a slab with tiling, stitching and the class merge on this backend's device.

        slab:    (N, H, W) uint8 planes, uploaded once (on CUDA from pinned memory, on a side stream).
        plan:    the planes' `TilePlan`; tiles are cut on the device (`tiling.extract_tiles`) and
                 run in the batches `slab.tile_batches` makes (same order, the last batch padded with copies
                 of its last tile), so centre-stitched labels equal the host path's bit for bit.
        blend:   'center' (the model's tile labels, centre-cropped) or 'gaussian' (tile logits blended with
                 `tiling.gaussian_weights`, then merged at `threshold`).
        returns  labels (N, H, W) label_type, the only thing downloaded.
        `timings` (optional) accumulates 'compute' (the model calls; on CUDA their GPU time from CUDA events)
        and 'stitch' (the rest: upload, tiling, stitching, merge, download).
        """
        flags = self._output_flags(blend == "gaussian", ())
        name = "logits" if blend == "gaussian" else "labels"
        dtype = AUTOCAST_DTYPES.get(self.precision)

        def run_batch(tiles: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                return self.forward(tiles, **flags)[name]

        with torch.inference_mode():
            return self._device_path.run(slab, plan, run_batch, batch=batch, blend=blend, label_type=label_type,
                                         threshold=threshold, timings=timings)

    def close(self) -> None:
        self.model = self.forward = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
