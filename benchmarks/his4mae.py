#!/usr/bin/env python3
"""HiS4MAE inference cost per 1024² slice: cover-stride (MAESTER) vs expand-stride (HiS4MAE), and the
nearest-centroid step fused vs naive.

- Encoder forwards and FLOPs (torch's FlopCounterMode on one FOV window, times the window count).
- Expand-stride time: `segment_labels` on one slice, i.e. the runtime's tiler, batching and backend, the path
  `emseg-rt segment --model his4mae-...` runs (stride S = FOV − 2·halo).
- Cover-stride time: `emseg_rt.clustering.cover_stride_labels` on a crop (one window per pixel), scaled
  to the slice by the window count — the report says so.
- Peak memory: the extra resident memory (ru_maxrss) of a fresh process for each mode.
- Labels from tokens: `emseg_rt.bench.kernels.time_layout` (naive vs the torch score reference; the fused
  Triton kernel where a CUDA GPU is), FOV layout, at the head's K and at K = 64.

Random weights (speed does not depend on them).

    python benchmarks/his4mae.py                         # his4mae-fov80, 1024² slice, halo 10 (S = 60)
    python benchmarks/his4mae.py --model his4mae-tiny --slice 256 --cover-crop 8 --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from emseg_rt.bench.machine import machine_record
from emseg_rt.bench.kernels import Layout, host_tag, time_layout

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    from emseg_rt.models import build

    torch.manual_seed(seed)
    return build(name).eval()


def encoder_gflops(name: str) -> float:
    """FLOPs of one FOV window through the encoder (meta device, nothing allocated), in GFLOP."""
    from emseg_rt.models.registry import REGISTRY, get_config

    config = get_config(name)
    with torch.device("meta"):
        model = REGISTRY.build_from_config(config).eval()
        tiles = torch.empty(1, 1, config.tile, config.tile, dtype=torch.uint8)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.encoders["fov_encoder"](tiles)
    return counter.get_total_flops() / 1e9


def plane(side: int, seed: int = 0) -> np.ndarray:
    """A phantom slice (1, side, side) uint8: EM-like texture so timings see realistic data."""
    from emseg_rt.data.phantom import generate_phantom

    return generate_phantom((3, side, side), seed=seed).image[1:2]


def run_expand(name: str, side: int, halo: int, backend: str, batch: int) -> float:
    """Seconds for one slice through `segment_labels` (after one warm-up slice)."""
    from emseg_rt.runtime import load_backend, segment_labels
    from emseg_rt.runtime.backends.torch_backend import TorchBackend

    engine = TorchBackend(build_model(name)) if backend == "torch" else load_backend(name, backend)
    volume = plane(side)
    segment_labels(volume, backend=engine, halo=halo, batch=batch)
    t0 = time.perf_counter()
    segment_labels(volume, backend=engine, halo=halo, batch=batch)
    return time.perf_counter() - t0


def run_cover(name: str, crop: int, batch: int) -> float:
    """Seconds for cover-stride on a crop × crop region (one window per pixel)."""
    from emseg_rt.clustering.cover_stride import cover_stride_labels

    model = build_model(name)
    region = plane(max(crop, 64))[0, :crop, :crop]
    cover_stride_labels(model, region[:2, :2], batch=batch)
    t0 = time.perf_counter()
    cover_stride_labels(model, region, batch=batch)
    return time.perf_counter() - t0


def _child(job: tuple, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(job[-1])
    kind, args = job[0], job[1:-1]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        seconds = run_expand(*args) if kind == "expand" else run_cover(*args)
    except Exception as exc:  # reported by the parent, which would otherwise wait for ever
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        raise
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": seconds, "extra_peak_rss_mb": (peak - base) / 1024})


def in_fresh_process(job: tuple) -> dict:
    """Run one timing job in a spawned process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(job, queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise SystemExit(f"{job[0]} job failed: {result['error']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="his4mae-fov80")
    parser.add_argument("--slice", type=int, default=1024, help="side of the slice (the paper's: 1024)")
    parser.add_argument("--halo", type=int, default=10, help="runtime halo; expand stride S = FOV − 2·halo")
    parser.add_argument("--cover-crop", type=int, default=16, help="side of the crop cover-stride is timed on")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--batch", type=int, default=32, help="windows per backend call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernel-clusters", default="", help="K values for the labels step (default: head K, 64)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from emseg_rt.clustering.cover_stride import cover_stride_windows, expand_stride_windows
    from emseg_rt.models import get_config

    config = get_config(args.model)
    fov, grid, side = config.tile, config.fov_encoder.grid, args.slice
    gflops = encoder_gflops(args.model)
    windows = {"cover": cover_stride_windows((side, side)),
               "expand": expand_stride_windows((side, side), fov, args.halo)}
    record: dict = {"benchmark": "his4mae", "machine": machine_record("cpu"), "model": args.model, "fov": fov,
                    "slice": side, "halo": args.halo, "expand_stride": fov - 2 * args.halo,
                    "threads": args.threads, "batch": args.batch, "encoder_gflops_per_window": gflops,
                    "encoder_forwards": windows,
                    "encoder_tflops_per_slice": {k: v * gflops / 1e3 for k, v in windows.items()},
                    "encoder_flops_ratio": windows["cover"] / windows["expand"], "modes": []}
    for backend in args.backends.split(","):
        measured = in_fresh_process(("expand", args.model, side, args.halo, backend, args.batch, args.threads))
        record["modes"].append({"mode": "expand-stride", "backend": backend, "seconds_per_slice": measured["seconds"],
                                "measured_on": f"{side}²", "extra_peak_rss_mb": measured["extra_peak_rss_mb"]})
        print(json.dumps(record["modes"][-1]), flush=True)
    crop = args.cover_crop
    measured = in_fresh_process(("cover", args.model, crop, args.batch, args.threads))
    scale = windows["cover"] / cover_stride_windows((crop, crop))
    record["modes"].append({"mode": "cover-stride", "backend": "torch", "seconds_per_slice": measured["seconds"] * scale,
                            "measured_on": f"{crop}² crop, scaled ×{scale:.0f}", "crop_seconds": measured["seconds"],
                            "extra_peak_rss_mb": measured["extra_peak_rss_mb"]})
    print(json.dumps(record["modes"][-1]), flush=True)

    clusters = [int(k) for k in args.kernel_clusters.split(",")] if args.kernel_clusters else [
        build_model(args.model).head.num_clusters, 64]
    layout = Layout("fov", windows["expand"], (grid, grid), (fov, fov))
    record["labels_step"] = [time_layout(layout, k, "cpu", warmup=1, iters=3) for k in clusters]
    write_report(record, args.out_dir)
    return 0


def write_report(record: dict, out_dir: Path) -> None:
    m = record["machine"]
    stem = out_dir / f"his4mae-{record['model']}-{host_tag('cpu', m['device_name'])}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    side, w = record["slice"], record["encoder_forwards"]
    lines = [f"# {record['model']}: cover-stride vs expand-stride per {side}² slice", "",
             f"{m['cpu']} ({m['cpu_cores']} cores, {record['threads']} torch thread(s)), {m['date']}, torch "
             f"{m['libraries']['torch']}. FOV {record['fov']}, expand stride S = {record['expand_stride']} "
             f"(halo {record['halo']}), {record['batch']} windows per call, random weights.", "",
             "| | encoder forwards | encoder TFLOP | seconds per slice | measured on | extra peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for mode in record["modes"]:
        key = "cover" if mode["mode"] == "cover-stride" else "expand"
        lines.append(f"| {mode['mode']} ({mode['backend']}) | {w[key]:,} | "
                     f"{record['encoder_tflops_per_slice'][key]:.2f} | {mode['seconds_per_slice']:.2f} | "
                     f"{mode['measured_on']} | {mode['extra_peak_rss_mb']:.0f} |")
    lines += ["", f"Encoder FLOPs: cover-stride / expand-stride = **{record['encoder_flops_ratio']:.0f}×** "
              f"({record['encoder_gflops_per_window']:.2f} GFLOP per window). Cover-stride's seconds are the "
              "crop's, scaled by the window count (it is linear in windows).", "",
              "## Labels from tokens (per slice, FOV layout)", "",
              "| K | impl | median ms | × naive | largest array MB | labels ≠ naive |", "|---|---|---|---|---|---|"]
    for r in record["labels_step"]:
        for impl, n in r["impls"].items():
            lines.append(f"| {r['clusters']} | {impl} | {n['median_ms']:.1f} | {n['speedup_vs_naive']:.1f} | "
                         f"{n['largest_intermediate_mb']:.0f} | {n['labels_differing_from_naive']} of {r['pixels']} |")
    lines += ["", "Random tokens at the paper width C = 192 (emseg_rt.bench.kernels), one FOV layout as the runtime "
              "tiles the slice. No GPU here: the fused Triton kernel is not timed (tested under the Triton "
              "interpreter).", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
