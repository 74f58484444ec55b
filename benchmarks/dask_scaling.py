#!/usr/bin/env python3
"""Throughput of `segment --dask` with 1 and 2 local workers (one thread each) on this machine.

For each worker count: a LocalCluster of N one-thread worker processes; a small warm-up run loads the model
in every worker (the per-process cache keeps it); then a timed `segment_volume` of a phantom volume. The
rate is the report's slices per second over the block loop (cluster start and model load excluded).
Scaling efficiency = rate(2 workers) / (2 × rate(1 worker)).

    python benchmarks/dask_scaling.py --model scsam-phantom --shape 48,256,256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from emseg_rt.bench.machine import machine_record
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.runtime import segment_volume

RESULTS = Path(__file__).resolve().parent / "results"


def measure(workers: int, source: Path, warmup: Path, workdir: Path, model: str, block: int) -> dict:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        address = client.scheduler.address
        segment_volume(warmup, workdir / f"warm{workers}.zarr", model=model, backend="torch", block=1,
                       dask=address, overwrite=True)
        report = segment_volume(source, workdir / f"out{workers}.zarr", model=model, backend="torch", block=block,
                                dask=address, overwrite=True)
    return {"workers": workers, "slices_per_second": report.slices_per_second,
            "loop_seconds": report.slices_computed / report.slices_per_second, "slices": report.slices_computed,
            "tiles": report.tiles_computed, "blocks": report.blocks_computed,
            "backend_seconds": report.compute_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scsam-phantom")
    parser.add_argument("--shape", default="48,256,256")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "dask_scaling")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = write_phantom(workdir / "phantom.zarr", generate_phantom(shape, seed=11))
        warmup = write_phantom(workdir / "warmup.zarr", generate_phantom((4, 64, 64), seed=12))
        records = [measure(n, source, warmup, workdir, args.model, args.block) for n in (1, 2)]
    efficiency = records[1]["slices_per_second"] / (2 * records[0]["slices_per_second"])
    result = {"benchmark": "dask_scaling", "machine": machine_record("cpu"), "model": args.model, "shape": list(shape),
              "block": args.block, "records": records, "scaling_efficiency_2_workers": efficiency}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# segment --dask: throughput with 1 and 2 local workers", "",
             f"{m['cpu']} ({m['cpu_cores']} cores), {m['date']}. Model `{args.model}` on the torch backend (CPU), "
             f"phantom {'×'.join(map(str, shape))}, block {args.block}; each worker one thread; models loaded "
             "before timing.", "", "| workers | slices/s | loop (s) | tiles |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['slices_per_second']:.2f} | {r['loop_seconds']:.1f} | {r['tiles']} |"
              for r in records]
    lines += ["", f"Scaling efficiency with 2 workers: {efficiency:.0%} (rate(2) / (2 × rate(1))).", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
