#!/usr/bin/env python3
"""Reproduce ScSAM Table 5 on this machine and commit-ready results under benchmarks/results/.

    python benchmarks/table5.py                      # the paper's configuration (ViT-H) on the GPU
    python benchmarks/table5.py --size vit-b --device cpu --iters 3 --warmup 1

Writes benchmarks/results/<device>-table5[-<size>].{json,md,png}; <device> is the GPU's name, or
'cpu-<model>' on a CPU. The logic lives in `emseg_rt.bench`; `emseg-rt bench` runs the same code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from emseg_rt.bench.machine import device_name
from emseg_rt.bench.report import markdown_table, write_json, write_markdown, write_plot
from emseg_rt.bench.runners import BACKENDS
from emseg_rt.bench.table5 import PAPER_ROWS, BenchConfig, run_bench

RESULTS = Path(__file__).resolve().parent / "results"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="vit-h")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(PAPER_ROWS))
    parser.add_argument("--backends", default="auto", help="comma-separated, from " + ", ".join(BACKENDS))
    parser.add_argument("--batch", default="1")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)  # the report writers create no folders (emseg_rt.io.outputs)

    config = BenchConfig(
        models=tuple(args.models.split(",")), size=args.size,
        backends=() if args.backends == "auto" else tuple(args.backends.split(",")),
        batches=tuple(int(b) for b in args.batch.split(",")), warmup=args.warmup, iters=args.iters,
        device=args.device,
    )
    result = run_bench(config, say=lambda message: print(message, file=sys.stderr, flush=True))
    device = slug(device_name(args.device)) if args.device.startswith("cuda") else "cpu-" + slug(device_name("cpu"))[:24]
    stem = f"{device}-table5" + ("" if args.size == "vit-h" else f"-{args.size}")
    write_json(result, args.out_dir / f"{stem}.json")
    write_markdown(result, args.out_dir / f"{stem}.md")
    write_plot(result, args.out_dir / f"{stem}.png")
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
