"""Timing of the fused class-merge and relative-position attention kernels against their torch references
(benchmarks/kernels.py; on a GPU via benchmarks/gpu_suite.sh step `kernels`).

Sizes are SAM's (segment_anything build_sam): low-resolution masks of 256² upsampled to 1024² tiles; ViT-H
attention with 16 heads of dimension 80 over the 64² global grid (one image) and over 14² windows (a 1024²
tile padded to 70² tokens is 5 × 5 = 25 windows per image); ViT-B with 12 heads of dimension 64. `small`
shrinks everything for a CPU dry run of the script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from emseg_rt.bench.timing import measure_latency
from emseg_rt.kernels.class_merge import class_merge_labels, labels_from_logits, upsample_class_logits
from emseg_rt.kernels.dispatch import triton_available
from emseg_rt.kernels.rel_pos_attention import rel_pos_attention


@dataclass(frozen=True)
class MergeCase:
    """`batch` tiles of `classes` low-res logit planes low_hw² → tile²."""

    name: str
    batch: int
    classes: int
    low_hw: int
    tile: int


@dataclass(frozen=True)
class AttentionCase:
    """`batch` attention problems (images or windows) of `heads` heads over hw² tokens, head dim `head_dim`."""

    name: str
    batch: int
    heads: int
    hw: int
    head_dim: int


def merge_cases(small: bool = False) -> list[MergeCase]:
    """ScSAM's 3 organelle classes and Prompt-DAS's 1, 8 tiles of 1024² from SAM's 256² masks."""
    if small:
        return [MergeCase("k3-small", 2, 3, 16, 64)]
    return [MergeCase("scsam-k3", 8, 3, 256, 1024), MergeCase("prompt-das-k1", 8, 1, 256, 1024)]


def attention_cases(small: bool = False) -> list[AttentionCase]:
    """Per image: ViT-H global (64²) and windowed (25 windows of 14²) attention, ViT-B global."""
    if small:
        return [AttentionCase("small-global", 1, 2, 8, 16)]
    return [AttentionCase("vit-h-global", 1, 16, 64, 80), AttentionCase("vit-h-windows", 25, 16, 14, 80),
            AttentionCase("vit-b-global", 1, 12, 64, 64)]


def implementations(device: str) -> list[str]:
    """'torch' everywhere, 'triton' on CUDA when triton imports."""
    return ["torch"] + (["triton"] if device.startswith("cuda") and triton_available() else [])


def _timed(fn: Callable[[], torch.Tensor], device: str, warmup: int, iters: int) -> tuple[dict, torch.Tensor]:
    """Median/p90 ms of `fn`, and on CUDA its measured peak of extra device memory per call; its last output."""
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    stats = measure_latency(fn, device, warmup=warmup, iters=iters)
    peak_mb = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if on_cuda else None
    return {"median_ms": stats.median_s * 1e3, "p90_ms": stats.p90_s * 1e3, "iters": iters,
            "peak_device_memory_mb": peak_mb}, fn()


def time_class_merge(case: MergeCase, device: str, dtype: torch.dtype, *, warmup: int, iters: int,
                     seed: int = 0) -> dict:
    """The runtime's labels before the kernel ('torch-logits': tile-size logits, then the merge), the labels-only
    reference ('torch', the same ops) and the fused kernel ('triton', CUDA) on random logits of `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    low_res = torch.randn(case.batch, case.classes, case.low_hw, case.low_hw, generator=generator).to(device, dtype)
    runs = {"torch-logits": lambda: labels_from_logits(upsample_class_logits(low_res, case.tile), 0.0, torch.uint8)}
    for impl in implementations(device):
        runs[impl] = lambda impl=impl: class_merge_labels(low_res, case.tile, 0.0, torch.uint8, impl=impl)
    record: dict[str, object] = {"case": case.name, "batch": case.batch, "classes": case.classes,
                                 "low_hw": case.low_hw, "tile": case.tile, "dtype": str(dtype).split(".")[-1],
                                 "impls": {}}
    reference = None
    for impl, run in runs.items():
        numbers, labels = _timed(run, device, warmup, iters)
        reference = labels if reference is None else reference
        numbers["labels_differing_from_torch_logits"] = int((labels != reference).sum())
        numbers["megapixels_per_s"] = case.batch * case.tile**2 / (numbers["median_ms"] / 1e3) / 1e6
        record["impls"][impl] = numbers
    base = record["impls"]["torch-logits"]["median_ms"]
    for numbers in record["impls"].values():
        numbers["speedup_vs_torch_logits"] = base / numbers["median_ms"]
    return record


def time_rel_pos_attention(case: AttentionCase, device: str, dtype: torch.dtype, *, warmup: int, iters: int,
                           seed: int = 0) -> dict:
    """SDPA with the materialised bias ('torch', what SdpaAttention ran before) against the fused kernel
    ('triton', CUDA), from q, k, v, rel_h, rel_w to the attention output."""
    generator = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.heads, case.hw * case.hw, case.head_dim)
    q, k, v = (torch.randn(*shape, generator=generator).to(device, dtype) for _ in range(3))
    rel_shape = (case.batch, case.heads, case.hw, case.hw, case.hw)
    rel_h, rel_w = (torch.randn(*rel_shape, generator=generator).to(device, dtype) for _ in range(2))
    scale = case.head_dim**-0.5
    record: dict[str, object] = {"case": case.name, "batch": case.batch, "heads": case.heads, "hw": case.hw,
                                 "head_dim": case.head_dim, "dtype": str(dtype).split(".")[-1],
                                 "bias_mb": case.batch * case.heads * case.hw**4 * q.element_size() / 2**20,
                                 "impls": {}}
    reference = None
    for impl in implementations(device):
        numbers, out = _timed(lambda impl=impl: rel_pos_attention(q, k, v, rel_h, rel_w, scale, impl=impl),
                              device, warmup, iters)
        reference = out.float() if reference is None else reference
        numbers["max_abs_diff_vs_torch"] = float((out.float() - reference).abs().max())
        record["impls"][impl] = numbers
    base = record["impls"]["torch"]["median_ms"]
    for numbers in record["impls"].values():
        numbers["speedup_vs_torch"] = base / numbers["median_ms"]
    return record
