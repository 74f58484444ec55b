#!/usr/bin/env python3
"""Does `emseg-rt bench` time what `segment` runs? Per-tile backend time measured both ways, same process.

For each bench backend name (torch-eager-fp32, torch-bf16, onnxruntime, ... as `emseg-rt bench` names them):
  1. load the backend once, the way bench does (`emseg_rt.bench.runners.load_target` → `load_backend`);
  2. bench: `measure_latency` of the call bench times (`segment_slab` on `batch` one-tile slices, the device
     path where the backend has one) → median seconds per tile;
  3. segment: `segment_volume` of a phantom volume with that same backend object and batch → the report's
     compute seconds / tiles (`SegmentReport.per_tile_seconds`, the backend calls segment made).
The ratio segment / bench is 1 within noise when both time the same thing.

    python benchmarks/bench_vs_segment.py --model scsam-phantom --backends torch-eager-fp32,torch-bf16,onnxruntime
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from emseg_rt.bench.machine import machine_record, save_result
from emseg_rt.bench.runners import BenchTarget, load_target, prepare
from emseg_rt.bench.timing import measure_latency
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.runtime import segment_volume

RESULTS = Path(__file__).resolve().parent / "results"


def measure(name: str, model: str, batch: int, shape: tuple[int, int, int], iters: int, workdir: Path) -> dict:
    backend = load_target(BenchTarget.parse(name), model, "cpu", batch_max=max(8, batch))
    try:
        prepared = prepare(backend, model, batch)
        stats = measure_latency(prepared.run, "cpu", warmup=2, iters=iters)
        source = workdir / "phantom.zarr"
        if not source.exists():
            write_phantom(source, generate_phantom(shape, seed=7))
        report = segment_volume(source, workdir / f"{name}.zarr", backend=backend, batch=batch, overwrite=True)
    finally:
        backend.close()
    bench_per_tile = stats.median_s / batch
    return {"backend": name, "identity": backend.spec.identity, "batch": batch,
            "bench_median_s_per_tile": bench_per_tile, "bench_p90_s_per_tile": stats.p90_s / batch,
            "bench_iters": iters, "segment_s_per_tile": report.per_tile_seconds,
            "segment_tiles": report.tiles_computed, "segment_compute_seconds": report.compute_seconds,
            "ratio_segment_over_bench": report.per_tile_seconds / bench_per_tile}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# bench vs segment: per-tile backend time measured both ways",
        "",
        f"{m['cpu']} ({m['cpu_cores']} cores), torch threads {m['torch_threads']}, {m['date']}. Model "
        f"`{result['model']}`, batch {result['batch']}, phantom {'×'.join(map(str, result['shape']))}. "
        "bench = median of one `segment_slab` call on `batch` one-tile slices (the call segment makes) / batch; "
        "segment = the run's compute seconds (the model calls) / tiles.",
        "",
        "| backend | bench s/tile | segment s/tile | segment / bench |",
        "|---|---|---|---|",
    ]
    for r in result["records"]:
        lines.append(f"| {r['backend']} | {r['bench_median_s_per_tile']:.4f} | {r['segment_s_per_tile']:.4f} | "
                     f"{r['ratio_segment_over_bench']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scsam-phantom")
    parser.add_argument("--backends", default="torch-eager-fp32,torch-bf16,onnxruntime")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shape", default="8,384,384")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_vs_segment")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    with tempfile.TemporaryDirectory() as workdir:
        records = [measure(name, args.model, args.batch, shape, args.iters, Path(workdir))
                   for name in args.backends.split(",")]
    result = {"benchmark": "bench_vs_segment", "machine": machine_record("cpu"), "model": args.model,
              "batch": args.batch, "shape": list(shape), "records": records}
    save_result(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
