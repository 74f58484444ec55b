"""Where ScSAM's time goes: each stage of the per-slice graph timed on its own, on the torch backend's
reference path and on its fast path (the same `TorchBackend` modules and autocast that `segment` runs)."""

from __future__ import annotations

import torch

from emseg_rt.bench.timing import measure_latency
from emseg_rt.models import build_model
from emseg_rt.runtime.backends.torch_backend import AUTOCAST_DTYPES, TorchBackend
from emseg_rt.runtime.backends.torch_backend import fast_precision as default_fast_precision


def scsam_stage_breakdown(model_name: str, device: str, warmup: int, iters: int,
                          fast_backend: str | None = None) -> list[dict[str, object]]:
    """Median seconds per slice (batch 1) of each stage, for torch-eager-fp32 and `fast_backend`
    ('torch-bf16', 'torch-fp16' or 'torch-fp32'; None: the device's fast precision).

    Stages: host→device copy of the uint8 tile, SAM preprocessing (cast, grey→RGB, normalise), SAM
    image encoder, MAE encoder (with its tiling), head (FAFM + class prompt encoder + decoder), class
    merge (upsample + argmax), device→host copy of the labels. Stages run uncompiled: compilation fuses
    across them, so the compiled whole is timed by the main table, not here.
    """
    fast_precision = (fast_backend or "").removeprefix("torch-") or default_fast_precision(device)
    rows: list[dict[str, object]] = []
    for path, precision, fast in (("torch-eager-fp32", "fp32", False), (f"torch-{fast_precision}", fast_precision, True)):
        backend = TorchBackend(build_model(model_name), device=device, precision=precision, fast=fast,
                               compile=False)
        timings = _stage_timings(backend, warmup, iters)
        total = sum(timings.values())
        for name, seconds in timings.items():
            rows.append({"path": path, "stage": name, "median_s": seconds, "fraction": seconds / total})
        backend.close()
    return rows


def _stage_timings(backend: TorchBackend, warmup: int, iters: int) -> dict[str, float]:
    model, device = backend.model, str(backend.device)
    dtype = AUTOCAST_DTYPES.get(backend.precision)
    host_tiles = model.example_inputs(batch=1, seed=0)["tiles"]
    if backend.device.type == "cuda":
        host_tiles = host_tiles.pin_memory()
    sam, mae, head = model.encoders["sam_encoder"], model.encoders["mae_encoder"], model.head
    with torch.inference_mode(), torch.autocast(backend.device.type, dtype=dtype, enabled=dtype is not None):
        tiles = host_tiles.to(device)
        pre = sam.preprocess(tiles)
        sam_embedding = sam.image_encoder(pre)
        mae_embedding = mae(tiles)
        low_res = head.low_res_logits(head.fusion(sam_embedding=sam_embedding, mae_embedding=mae_embedding))
        labels = head.class_merge(low_res)["labels"]
        stages = {
            "host_to_device": lambda: host_tiles.to(device, non_blocking=True),
            "sam_preprocess": lambda: sam.preprocess(tiles),
            "sam_encoder": lambda: sam.image_encoder(pre),
            "mae_encoder": lambda: mae(tiles),
            "head": lambda: head.low_res_logits(head.fusion(sam_embedding=sam_embedding, mae_embedding=mae_embedding)),
            "class_merge": lambda: head.class_merge(low_res),
            "device_to_host": lambda: labels.cpu(),
        }
        return {name: measure_latency(fn, device, warmup, iters).median_s for name, fn in stages.items()}
