"""Where ScSAM's time goes: each stage of the per-slice graph timed on its own (eager and fast paths)."""

from __future__ import annotations

import torch

from emseg_rt.bench.timing import measure_latency
from emseg_rt.models import build
from emseg_rt.models.attention import use_sdpa_attention


def scsam_stage_breakdown(model_name: str, device: str, warmup: int, iters: int) -> list[dict[str, object]]:
    """Median seconds per slice (batch 1) of each stage, for fp32 eager and the SDPA + autocast path.

    Stages: host→device copy of the uint8 tile, SAM preprocessing (cast, grey→RGB, normalise), SAM
    image encoder, MAE encoder (with its tiling), head (FAFM + class prompt encoder + decoder), class
    merge (upsample + argmax), device→host copy of the labels.
    """
    rows: list[dict[str, object]] = []
    model = build(model_name).eval().requires_grad_(False).to(device)
    device_type = torch.device(device).type
    fast_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    host_tiles = model.example_inputs(batch=1, seed=0)["tiles"]
    if device_type == "cuda":
        host_tiles = host_tiles.pin_memory()
    for path in ("torch-eager-fp32", "torch-fp16"):
        if path == "torch-fp16":
            use_sdpa_attention(model)
        autocast = torch.autocast(device_type, dtype=fast_dtype, enabled=path == "torch-fp16")
        sam, mae, head = model.encoders["sam_encoder"], model.encoders["mae_encoder"], model.head
        with torch.inference_mode(), autocast:
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
                "head": lambda: head.low_res_logits(head.fusion(sam_embedding=sam_embedding,
                                                                mae_embedding=mae_embedding)),
                "class_merge": lambda: head.class_merge(low_res),
                "device_to_host": lambda: labels.cpu(),
            }
            timings = {name: measure_latency(fn, device, warmup, iters).median_s for name, fn in stages.items()}
        total = sum(timings.values())
        for name, seconds in timings.items():
            rows.append({"path": path, "stage": name, "median_s": seconds, "fraction": seconds / total})
    return rows
