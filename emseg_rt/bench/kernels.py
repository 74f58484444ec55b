"""Timing of the nearest-centroid implementations on HiS4MAE-sized inputs (benchmarks/nearest_centroid.py).

Two layouts of one 1024 × 1024 EM slice, paper-size encoder (C = 192, HiS4MAE Table 1):

- "fov": expand-stride as HiS4MAE §3.3 describes it: each 80 × 80 field of view (FOV, §3.1, as MAESTER) is
  encoded to 16 × 16 tokens (patch 5, MAESTER's; HiS4MAE does not restate it) and upsampled to its own
  80 × 80 pixels; at stride S = 80 a 1024² slice takes 13 × 13 = 169 FOVs (1040² pixels, the last row and
  column overhang). Batch = number of FOVs.
- "slice": one 205 × 205 token grid (1024 / 5, rounded up) upsampled to 1024 × 1024 at once.

Every implementation is timed from tokens to labels (the token–centre matmul included).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from emseg_rt.bench.timing import measure_latency
from emseg_rt.kernels.dispatch import triton_available
from emseg_rt.kernels.nearest_centroid import REFERENCE_CHUNK, nearest_centroid, token_scores

EMBED_DIM = 192  # HiS4MAE Table 1, embed_dim
FOV = 80  # HiS4MAE §3.1 (MAESTER's FOV)
PATCH = 5  # MAESTER's patch size (an 80-pixel FOV is 16 × 16 patches)


@dataclass(frozen=True)
class Layout:
    """`batch` token grids of token_hw upsampled to out_hw each."""

    name: str
    batch: int
    token_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.batch * self.out_hw[0] * self.out_hw[1]


def paper_layouts(slice_pixels: int = 1024) -> list[Layout]:
    """The two layouts of one slice_pixels² slice (module docstring); smaller slices for slow machines."""
    fovs_per_axis = -(-slice_pixels // FOV)
    tokens = -(-slice_pixels // PATCH)
    return [Layout("fov", fovs_per_axis**2, (FOV // PATCH, FOV // PATCH), (FOV, FOV)),
            Layout("slice", 1, (tokens, tokens), (slice_pixels, slice_pixels))]


def host_tag(device: str, device_name: str) -> str:
    """A file-name tag for the machine: 'cpu-intel-xeon-processor-2-80ghz-1t', 'cuda-nvidia-h100-80gb-hbm3'."""
    slug = re.sub(r"\((r|tm)\)|@", " ", device_name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return f"{kind}-{slug}" + ("" if kind == "cuda" else f"-{torch.get_num_threads()}t")


def implementations(device: str) -> list[str]:
    """What can run here: naive and torch everywhere, triton on CUDA when triton imports."""
    return ["naive", "torch"] + (["triton"] if device.startswith("cuda") and triton_available() else [])


def largest_intermediate_mb(impl: str, layout: Layout, clusters: int) -> float:
    """The largest float32 array an implementation builds (by construction, not measured): naive the
    (B, C, H, W) features or the (B, K, H·W) distances, torch (B, chunk, H, W) upsampled scores, triton only
    the (B, K, h, w) token scores (its output is the labels)."""
    pixels, tokens = layout.pixels, layout.batch * layout.token_hw[0] * layout.token_hw[1]
    elements = {"naive": pixels * max(EMBED_DIM, clusters), "torch": pixels * min(clusters, REFERENCE_CHUNK),
                "triton": tokens * clusters}[impl]
    return elements * 4 / 2**20


def time_layout(layout: Layout, clusters: int, device: str, *, warmup: int, iters: int, seed: int = 0) -> dict:
    """Median/p90 milliseconds per slice of every implementation on random tokens and centres, the largest
    intermediate array of each, and on CUDA the measured peak of extra device memory per call."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(layout.batch, EMBED_DIM, *layout.token_hw, generator=generator).to(device)
    centres = torch.randn(clusters, EMBED_DIM, generator=generator).to(device)
    on_cuda = device.startswith("cuda")
    record: dict[str, object] = {"layout": layout.name, "batch": layout.batch, "token_hw": list(layout.token_hw),
                                 "out_hw": list(layout.out_hw), "pixels": layout.pixels, "clusters": clusters,
                                 "channels": EMBED_DIM, "impls": {}}
    scores = measure_latency(lambda: token_scores(tokens, centres), device, warmup=warmup, iters=iters)
    record["token_scores_ms"] = scores.median_s * 1e3
    labels = {}
    for impl in implementations(device):
        if on_cuda:
            torch.cuda.synchronize()
            baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

        def label(impl: str = impl) -> None:
            labels[impl] = nearest_centroid(tokens, centres, layout.out_hw, impl=impl)

        stats = measure_latency(label, device, warmup=warmup, iters=iters)
        peak_mb = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if on_cuda else None
        record["impls"][impl] = {"median_ms": stats.median_s * 1e3, "p90_ms": stats.p90_s * 1e3, "iters": iters,
                                 "megapixels_per_s": layout.pixels / stats.median_s / 1e6,
                                 "largest_intermediate_mb": largest_intermediate_mb(impl, layout, clusters),
                                 "peak_device_memory_mb": peak_mb}
    naive_ms = record["impls"]["naive"]["median_ms"]
    for impl, numbers in record["impls"].items():
        numbers["speedup_vs_naive"] = naive_ms / numbers["median_ms"]
        numbers["labels_differing_from_naive"] = int((labels[impl] != labels["naive"]).sum())
    return record


def add_timing_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every kernel benchmark script takes: --device, --threads, --warmup, --iters, --out-dir."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 10 on CUDA, 1 on a CPU")
    parser.add_argument("--iters", type=int, default=None, help="default 50 on CUDA, 3 on a CPU")
    parser.add_argument("--out-dir", type=Path, default=results)


def timing_settings(args: argparse.Namespace) -> tuple[bool, int, int]:
    """(on_cuda, warmup, iters) from `add_timing_arguments`' options; on a CPU, torch's threads are set."""
    on_cuda = args.device.startswith("cuda")
    if not on_cuda:
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    iters = args.iters if args.iters is not None else (50 if on_cuda else 3)
    return on_cuda, warmup, iters
