#!/usr/bin/env python3
"""Every CPU path of emseg-rt on one machine (issue 30): seconds per slice and label agreement with fp32.

Runs `emseg-rt bench`'s library (`emseg_rt.bench.run_bench`, the loader `segment` uses) once per size with
`--backends auto` on the CPU: eager fp32, torch fp32, torch bf16 (where the CPU has native bf16), ONNX Runtime
fp32, fp32 with fused attention (export/fused.py) and int8 QDQ (export/int8.py, calibrated on phantoms), each
with its label agreement with `torch-eager-fp32` on phantom tiles and its fraction of the run's best matmul
rate. Records the CPU's model and its bf16 / AMX / VNNI flags, and the machine's load (the 1-minute load
average before and after each size: the figures are only as good as the machine was idle).

    python benchmarks/cpu_precisions.py --sizes tiny,vit-b --models scsam
    → benchmarks/results/cpu-<cpu>-precisions.{json,md}
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from emseg_rt.bench import BenchConfig, run_bench
from emseg_rt.bench.machine import cpu_model, machine_record, save_result
from emseg_rt.bench.report import markdown_table
from emseg_rt.bench.runners import default_backends
from emseg_rt.runtime.devices import cpu_flags

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,vit-b", help="comma-separated: tiny, vit-b, vit-h")
    parser.add_argument("--models", default="scsam", help="comma-separated families (Table 5 rows)")
    parser.add_argument("--backends", default="auto", help="comma-separated bench backends, or auto")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default: results/cpu-<cpu>-precisions")
    parser.add_argument("--weights", type=Path, action="append", default=[],
                        help="checkpoint(s) for the one model of --models, loaded in order by every path and by "
                             "the fp32 reference (as `emseg-rt bench --weights`)")
    args = parser.parse_args()
    backends = default_backends("cpu") if args.backends == "auto" else tuple(args.backends.split(","))
    runs, tables = [], []
    for size in args.sizes.split(","):
        config = BenchConfig(models=tuple(args.models.split(",")), size=size, backends=backends, batches=(1,),
                             warmup=args.warmup, iters=args.iters, device="cpu", breakdown=False,
                             checkpoints=tuple(str(path) for path in args.weights))
        before = load_average()
        result = run_bench(config, say=print)
        load = {"before": before, "after": load_average(), "cpu_count": os.cpu_count()}
        runs.append({**result.to_dict(), "load_average_1min": load})
        tables.append(markdown_table(result) + f"\nLoad average (1 min) before / after this size: "
                      f"{load['before']:.2f} / {load['after']:.2f} on {load['cpu_count']} cores.\n")
        _save(args, runs, tables)  # after each size: a long run that stops later keeps what it measured


def _save(args: argparse.Namespace, runs: list[dict], tables: list[str]) -> None:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    out = args.out or RESULTS / f"cpu-{slug}-precisions"
    flags = cpu_flags()
    header = (f"# emseg-rt CPU paths on {cpu_model()}\n\nCPU flags: "
              + ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in flags.items())
              + f". Written by `benchmarks/cpu_precisions.py --sizes {args.sizes} --models {args.models} --backends "
              f"{args.backends}{''.join(f' --weights {p.name}' for p in args.weights)}`; sizes measured: "
              f"{', '.join(run['config']['size'] for run in runs)}.\n\n")
    save_result(out, {"benchmark": "cpu-precisions", "machine": machine_record("cpu"), "cpu_flags": flags,
                      "runs": runs}, header + "\n".join(tables))


if __name__ == "__main__":
    main()
