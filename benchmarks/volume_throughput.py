"""Streaming overhead and peak host memory of `segment_volume` on this machine.

For each volume size (uint8, planes of --plane × --plane):
  1. write a synthetic volume (smooth blobs + noise) as OME-Zarr;
  2. segment it in a fresh subprocess → wall time, the report's read/compute/write split, peak RSS;
  3. (--overhead) in another fresh subprocess, run the same backend on exactly the same tiles and batches with
     no streaming (the runtime's own `plan_tiles` and `tile_batches`; tiles prepared untimed, only backend
     calls timed) → the backend's own compute time.
Streaming overhead = segment streaming wall time (after model load) / backend-only time − 1.

    python benchmarks/volume_throughput.py --sizes 200,2000 --out benchmarks/results/volume_throughput
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_volume(path: Path, megabytes: int, plane: int, seed: int = 0) -> tuple[int, int, int]:
    from emseg_rt.io.ome_zarr import create_ome_image

    depth = max(1, round(megabytes * 1e6 / (plane * plane)))
    shape = (depth, plane, plane)
    if (path / "s0" / "zarr.json").exists():
        return shape
    array = create_ome_image(path, shape, np.uint8, voxel_size=(20.0, 5.0, 5.0), chunks=(8, plane, plane),
                             overwrite=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:plane, 0:plane].astype(np.float32)
    base = 110 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    for z0 in range(0, depth, 8):
        n = min(8, depth - z0)
        slab = base[None] + rng.normal(0, 20, (n, plane, plane)).astype(np.float32) + 3 * np.arange(n)[:, None, None]
        array[z0:z0 + n] = np.clip(slab, 0, 255).astype(np.uint8)
    return shape


def child_segment(args: argparse.Namespace) -> None:
    from emseg_rt.runtime import segment_volume

    report = segment_volume(args.input, args.output, model=args.model, backend=args.backend, batch=args.batch,
                            halo=args.halo, block=args.block, overwrite=True, device=args.device)
    result = report.to_dict()
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def child_backend_only(args: argparse.Namespace) -> None:
    from emseg_rt.io import open_volume
    from emseg_rt.runtime import load_backend
    from emseg_rt.runtime.slab import tile_batches
    from emseg_rt.tiling import plan_tiles

    engine = load_backend(args.model, args.backend, args.device)
    volume = open_volume(args.input)
    depth, h, w = volume.shape
    plan = plan_tiles((h, w), engine.spec.tile, args.halo)
    compute = 0.0
    tiles_run = 0
    for b0 in range(0, depth, args.block):  # segment's slabs: `block` planes, batches never span two
        slab = np.asarray(volume.array[b0:b0 + args.block])
        for item in list(tile_batches(slab, plan, args.batch)):  # tiles cut before timing starts
            t0 = time.perf_counter()
            engine.run(item.tiles)
            compute += time.perf_counter() - t0
            tiles_run += len(item.tiles)
    print(json.dumps({"backend_only_seconds": compute, "tiles": tiles_run}))


def run_child(mode: str, args: argparse.Namespace, input_path: Path, output: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--input", str(input_path), "--output", str(output),
           "--model", args.model, "--backend", args.backend, "--batch", str(args.batch), "--halo", str(args.halo),
           "--block", str(args.block), "--device", args.device]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def machine(device: str) -> dict:
    """The benchmarks' common machine record (`emseg_rt.bench.machine`), plus Python, zarr and the load."""
    import zarr

    from emseg_rt.bench.machine import machine_record

    record = machine_record(device)  # the device both children segment on
    record.update({"python": platform.python_version(), "zarr": zarr.__version__,
                   "load_average_at_start": os.getloadavg()})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["segment", "backend"])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--sizes", default="200,2000", help="volume sizes in MB, comma-separated")
    parser.add_argument("--overhead-sizes", default="200", help="sizes (MB) that also get the backend-only pass")
    parser.add_argument("--plane", type=int, default=1024)
    parser.add_argument("--model", default="scsam-tiny")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--halo", type=int, default=0)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="segment_volume's device (cpu, cuda)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/emseg-volume-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "volume_throughput")
    args = parser.parse_args()
    if args.child == "segment":
        return child_segment(args)
    if args.child == "backend":
        return child_backend_only(args)

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": "volume_throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": machine(args.device), "settings": {
                   k: v for k, v in vars(args).items()
                   if k in ("model", "backend", "batch", "halo", "block", "plane", "device")},
               "volumes": []}
    overhead_sizes = {int(s) for s in args.overhead_sizes.split(",") if s}
    for megabytes in (int(s) for s in args.sizes.split(",")):
        src = args.workdir / f"vol{megabytes}MB.zarr"
        shape = make_volume(src, megabytes, args.plane)
        print(f"{megabytes} MB volume {shape}: segmenting ...", flush=True)
        seg = run_child("segment", args, src, args.workdir / f"out{megabytes}MB.zarr")
        entry = {"megabytes": megabytes, "shape": list(shape), "voxels": int(np.prod(shape)),
                 "segment_wall_seconds": seg["wall_seconds"], "setup_seconds": seg["setup_seconds"],
                 "streaming_wall_seconds": seg["wall_seconds"] - seg["setup_seconds"],
                 "read_seconds": seg["read_seconds"], "compute_seconds": seg["compute_seconds"],
                 "stitch_seconds": seg["stitch_seconds"], "write_seconds": seg["write_seconds"],
                 "backend_idle_fraction": seg["backend_idle_fraction"], "tiles": seg["tiles_computed"],
                 "slices_per_second": seg["slices_per_second"], "voxels_per_second": seg["voxels_per_second"],
                 "peak_rss_bytes": seg["peak_rss_bytes"]}
        if megabytes in overhead_sizes:
            print(f"{megabytes} MB: backend-only pass ...", flush=True)
            only = run_child("backend", args, src, args.workdir / "unused")
            entry["backend_only_seconds"] = only["backend_only_seconds"]
            entry["streaming_overhead"] = entry["streaming_wall_seconds"] / only["backend_only_seconds"] - 1.0
        results["volumes"].append(entry)
        print(json.dumps(entry), flush=True)
    vols = results["volumes"]
    if len(vols) >= 2:
        results["peak_rss_growth_largest_vs_smallest"] = vols[-1]["peak_rss_bytes"] / vols[0]["peak_rss_bytes"] - 1.0
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# Volume throughput: streaming overhead and peak RSS of `segment`",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, device {m['device']} ({m['device_name']}); "
        f"Python {m['python']}, torch {m['libraries']['torch']}, onnxruntime {m['libraries']['onnxruntime']}, "
        f"zarr {m['zarr']}. Date {results['date']}. "
        f"Load average at start {tuple(round(v, 1) for v in m['load_average_at_start'])} "
        "(the machine is shared: absolute times vary, compare within this file only).",
        f"Model {s['model']} on {s['backend']} ({s.get('device', 'cpu')}), batch {s['batch']}, halo {s['halo']}, block {s['block']} slices, "
        f"planes {s['plane']}².",
        "",
        "| volume | shape | tiles | segment wall (s) | streaming wall (s) | backend-only (s) | overhead | "
        "backend idle | read / compute / stitch / write (s) | slices/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in results["volumes"]:
        only = f"{v['backend_only_seconds']:.1f}" if "backend_only_seconds" in v else "–"
        over = f"{v['streaming_overhead']:+.1%}" if "streaming_overhead" in v else "–"
        lines.append(
            f"| {v['megabytes']} MB | {'×'.join(map(str, v['shape']))} | {v['tiles']} | {v['segment_wall_seconds']:.1f} | "
            f"{v['streaming_wall_seconds']:.1f} | {only} | {over} | {v['backend_idle_fraction']:.1%} | "
            f"{v['read_seconds']:.1f} / {v['compute_seconds']:.1f} / {v['stitch_seconds']:.1f} / {v['write_seconds']:.1f} | "
            f"{v['slices_per_second']:.2f} | {v['peak_rss_bytes'] / 2**20:.0f} |")
    if "peak_rss_growth_largest_vs_smallest" in results:
        lines += ["", f"Peak RSS of the largest volume vs the smallest: "
                      f"{results['peak_rss_growth_largest_vs_smallest']:+.1%} (aim: <= +20%)."]
    lines += ["", "Streaming overhead = streaming wall time (segment wall minus model load) / the backend's own time "
                  "on the same tiles and batches − 1 (aim: <= 10%). Read, stitch and write run in reader/writer "
                  "threads and the compute thread on the same 2 cores as the backend, so on this machine they compete "
                  "with it for CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
