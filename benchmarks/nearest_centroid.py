#!/usr/bin/env python3
"""Nearest-centroid labelling of upsampled HiS4MAE tokens: naive (upsample features, distances, argmin) vs the
torch score reference vs the fused Triton kernel (CUDA only), tokens → labels, per 1024² slice.

Layouts and sizes: emseg_rt.bench.kernels. K: HiS4MAE does not state its K-means cluster count (Table 1's
k = 512 is the codebook size; the evaluation matches clusters to 4 classes), so both a small K and 512 run.

    python benchmarks/nearest_centroid.py                       # CUDA if present, else CPU, one thread
    python benchmarks/nearest_centroid.py --device cpu --slice-pixels 512 --iters 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emseg_rt.bench.machine import machine_record
from emseg_rt.bench.kernels import (
    add_timing_arguments,
    host_tag,
    implementations,
    paper_layouts,
    time_layout,
    timing_settings,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", default="16,512", help="comma-separated K values")
    parser.add_argument("--slice-pixels", type=int, default=1024,
                        help="side of the slice; smaller than 1024 on slow machines (the report says so)")
    add_timing_arguments(parser, RESULTS)
    args = parser.parse_args()
    on_cuda, warmup, iters = timing_settings(args)
    clusters = [int(k) for k in args.clusters.split(",")]

    machine = machine_record(args.device)
    records = []
    for layout in paper_layouts(args.slice_pixels):
        for k in clusters:
            records.append(time_layout(layout, k, args.device, warmup=warmup, iters=iters))
            print(json.dumps({key: records[-1][key] for key in ("layout", "clusters")}
                             | {impl: round(n["median_ms"], 2) for impl, n in records[-1]["impls"].items()}),
                  flush=True)
    result = {"benchmark": "nearest_centroid", "machine": machine, "slice_pixels": args.slice_pixels,
              "paper_slice_pixels": 1024, "warmup": warmup, "iters": iters,
              "implementations": implementations(args.device), "records": records}
    stem = args.out_dir / f"nearest_centroid-{host_tag(args.device, machine['device_name'])}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    m = machine
    threads = "" if on_cuda else f", {m['torch_threads']} torch thread(s)"
    lines = ["# Nearest-centroid labels of upsampled HiS4MAE tokens", "",
             f"{m['device_name']} ({args.device}{threads}; {m['cpu']}, {m['cpu_cores']} cores), {m['date']}, "
             f"torch {m['libraries']['torch']}. C = 192. Tokens → labels for one slice of "
             f"{args.slice_pixels}² pixels, median of {iters} calls after {warmup} warm-up"
             + (" (CUDA events)." if on_cuda else " (wall clock)."), ""]
    if args.slice_pixels != 1024:
        lines += [(f"**Smaller than the paper's slice**: {args.slice_pixels}² instead of 1024² pixels, to keep "
                   "the run short on this machine; all three implementations scale linearly in pixels, so the "
                   "ratios carry over."), ""]
    if not on_cuda:
        lines += [("No GPU here: the Triton kernel is not timed (its correctness is tested under the Triton "
                   "interpreter only)."), ""]
    lines += [("Layouts: `fov` = 80² FOVs of 16² tokens each upsampled on its own (HiS4MAE §3.3 expand-stride, "
               "stride 80); `slice` = one token grid upsampled to the whole slice."), "",
              "| layout | tokens → pixels | K | impl | median ms | p90 ms | Mpx/s | × naive | largest array MB"
              + (" | peak device MB" if on_cuda else "") + " | labels ≠ naive |",
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if on_cuda else "") + "---|"]
    for r in records:
        grid = f"{r['batch']}×{r['token_hw'][0]}² → {r['out_hw'][0]}²"
        for impl, n in r["impls"].items():
            peak = f" {n['peak_device_memory_mb']:.0f} |" if on_cuda else ""
            lines.append(f"| {r['layout']} | {grid} | {r['clusters']} | {impl} | {n['median_ms']:.1f} | "
                         f"{n['p90_ms']:.1f} | {n['megapixels_per_s']:.2f} | {n['speedup_vs_naive']:.1f} | "
                         f"{n['largest_intermediate_mb']:.0f} |{peak} "
                         f"{n['labels_differing_from_naive']} of {r['pixels']} |")
    lines += ["", "Largest array MB: the largest float32 intermediate the implementation builds, by construction "
              "(naive: features or distances; torch: one chunk of 64 upsampled score planes; triton: the token "
              "scores)." + (" Peak device MB: measured extra CUDA memory per call." if on_cuda else ""), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
