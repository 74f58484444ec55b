#!/usr/bin/env python3
"""The fused class-merge and relative-position attention kernels against their torch references: class merge
from SAM's 256² low-res masks to 1024² labels (with and without the tile-size logits), and SAM ViT-H / ViT-B
attention with decomposed relative position (SDPA with the materialised bias vs the flash-attention kernel).

Cases and sizes: emseg_rt.bench.kernels_fused. The Triton kernels run on CUDA only; on a CPU the script
times the torch paths (and `--small` shrinks the sizes for a dry run).

    python benchmarks/kernels.py                                 # CUDA if present, fp16 and fp32
    python benchmarks/kernels.py --device cpu --small --iters 1 --warmup 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from emseg_rt.bench.machine import machine_record
from emseg_rt.bench.kernels import add_timing_arguments, host_tag, timing_settings
from emseg_rt.bench.kernels_fused import (
    attention_cases,
    implementations,
    merge_cases,
    time_class_merge,
    time_rel_pos_attention,
)

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def markdown(result: dict, on_cuda: bool) -> list[str]:
    """The report: one table per kernel."""
    m = result["machine"]
    threads = "" if on_cuda else f", {m['torch_threads']} torch thread(s)"
    lines = ["# Fused class merge and relative-position attention against their torch references", "",
             f"{m['device_name']} ({result['device']}{threads}; {m['cpu']}, {m['cpu_cores']} cores), {m['date']}, "
             f"torch {m['libraries']['torch']}. Median of {result['iters']} calls after {result['warmup']} warm-up"
             + (" (CUDA events)." if on_cuda else " (wall clock)."), ""]
    if result["small"]:
        lines += ["**Small sizes** (`--small`, a dry run of the script): not SAM's sizes.", ""]
    if not on_cuda:
        lines += ["No GPU here: the Triton kernels are not timed (their correctness is tested under the Triton "
                  "interpreter only).", ""]
    peak_head = " | peak device MB" if on_cuda else ""
    lines += ["## Class merge (labels of B tiles)", "",
              f"| case | B × K × low² → tile² | dtype | impl | median ms | p90 ms | Mpx/s | × torch-logits{peak_head} "
              "| labels ≠ torch-logits |", "|---|---|---|---|---|---|---|---|" + ("---|" if on_cuda else "") + "---|"]
    for r in result["class_merge"]:
        shape = f"{r['batch']} × {r['classes']} × {r['low_hw']}² → {r['tile']}²"
        for impl, n in r["impls"].items():
            peak = f" {n['peak_device_memory_mb']:.1f} |" if on_cuda else ""
            lines.append(f"| {r['case']} | {shape} | {r['dtype']} | {impl} | {n['median_ms']:.3f} | "
                         f"{n['p90_ms']:.3f} | {n['megapixels_per_s']:.1f} | {n['speedup_vs_torch_logits']:.2f} |{peak} "
                         f"{n['labels_differing_from_torch_logits']} |")
    lines += ["", "torch-logits: the runtime's way before the kernel (tile-size float32 logits, then max over K); "
              "torch: the labels-only reference (the same ops); triton: the fused kernel.", "",
              "## Attention with decomposed relative position", "",
              f"| case | B × heads × N, D | dtype | bias MB | impl | median ms | p90 ms | × torch{peak_head} "
              "| max abs diff vs torch |", "|---|---|---|---|---|---|---|---|" + ("---|" if on_cuda else "") + "---|"]
    for r in result["rel_pos_attention"]:
        shape = f"{r['batch']} × {r['heads']} × {r['hw']}², {r['head_dim']}"
        for impl, n in r["impls"].items():
            peak = f" {n['peak_device_memory_mb']:.1f} |" if on_cuda else ""
            lines.append(f"| {r['case']} | {shape} | {r['dtype']} | {r['bias_mb']:.1f} | {impl} | "
                         f"{n['median_ms']:.3f} | {n['p90_ms']:.3f} | {n['speedup_vs_torch']:.2f} |{peak} "
                         f"{n['max_abs_diff_vs_torch']:.2e} |")
    lines += ["", "bias MB: the (B, heads, N, N) additive mask the torch path builds (the kernel builds none). "
              + ("Peak device MB: measured extra CUDA memory per call." if on_cuda else ""), ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default=None, help="comma-separated of fp32,fp16,bf16 (default fp16,fp32 on "
                        "CUDA, fp32 on a CPU)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a dry run of the script on a CPU)")
    add_timing_arguments(parser, RESULTS)
    args = parser.parse_args()
    on_cuda, warmup, iters = timing_settings(args)
    names = (args.dtypes or ("fp16,fp32" if on_cuda else "fp32")).split(",")
    if any(name not in DTYPES for name in names):
        parser.error(f"--dtypes: choose from {', '.join(DTYPES)}")

    machine = machine_record(args.device)
    merges, attentions = [], []
    for name in names:
        for case in merge_cases(args.small):
            merges.append(time_class_merge(case, args.device, DTYPES[name], warmup=warmup, iters=iters))
            print(json.dumps({"class_merge": case.name, "dtype": name}
                             | {i: round(n["median_ms"], 3) for i, n in merges[-1]["impls"].items()}), flush=True)
        for case in attention_cases(args.small):
            attentions.append(time_rel_pos_attention(case, args.device, DTYPES[name], warmup=warmup, iters=iters))
            print(json.dumps({"rel_pos_attention": case.name, "dtype": name}
                             | {i: round(n["median_ms"], 3) for i, n in attentions[-1]["impls"].items()}), flush=True)
    result = {"benchmark": "kernels", "machine": machine, "device": args.device, "small": args.small,
              "warmup": warmup, "iters": iters, "implementations": implementations(args.device),
              "class_merge": merges, "rel_pos_attention": attentions}
    stem = args.out_dir / f"kernels-{host_tag(args.device, machine['device_name'])}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = markdown(result, on_cuda)
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
