#!/usr/bin/env python3
"""The user's alternative, side by side (issue 30.6): the research code's path against every emseg-rt CPU path.

In one process on one machine: segment_anything's `SamPredictor.set_image` (the research code's way to run the
SAM ViT-B encoder on a 1024² image: resize, normalise, eager encoder) timed on a random uint8 image, then
`emseg-rt bench`'s library (`run_bench`, the loader `segment` uses) on vanilla-sam-vit-b (the same ViT-B encoder
plus SAM's mask decoder and the class merge, per 1024² slice) and scsam-vit-b, for every CPU path given, with
the run's dense matmul ceilings. Weights are random (no checkpoints here): times do not depend on them.

    python benchmarks/research_vs_emseg.py [--iters 2 --warmup 1]
    → benchmarks/results/research_vs_emseg.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from emseg_rt.bench import BenchConfig, run_bench
from emseg_rt.bench.machine import machine_record, save_result

RESULTS = Path(__file__).resolve().parent / "results" / "research_vs_emseg"
BACKENDS = ("torch-eager-fp32", "torch-fp32", "torch-bf16", "onnxruntime", "onnxruntime-fp32-fused")


def time_predictor(iters: int, warmup: int) -> list[float]:
    """Seconds of `SamPredictor.set_image` on a 1024×1024 RGB uint8 image, each call after `warmup` calls."""
    from segment_anything import SamPredictor, sam_model_registry

    predictor = SamPredictor(sam_model_registry["vit_b"]().eval())
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    seconds = []
    with torch.inference_mode():
        for call in range(warmup + iters):
            began = time.perf_counter()
            predictor.set_image(image)
            if call >= warmup:
                seconds.append(time.perf_counter() - began)
    return seconds


def markdown(result: dict) -> str:
    m, research = result["machine"], result["research"]
    base = research["median_s"]
    lines = ["# The research code's path vs emseg-rt on the CPU (SAM ViT-B, 1024²)", "",
             f"{m['date']}, {m['cpu']} ({m['cpu_cores']} cores), torch {m['torch_threads']} threads; "
             "`python benchmarks/research_vs_emseg.py`. Random weights.", "",
             "| path | model | s per 1024² image / slice | vs research code | fraction of the run's fp32 matmul rate |",
             "|---|---|---|---|---|",
             f"| segment_anything `SamPredictor.set_image` (eager) | SAM ViT-B encoder | {base:.2f} | 1.00× | – |"]
    for record in result["emseg_rt"]:
        fraction = record["fraction_of_matmul_rates"].get("fp32")
        lines.append(f"| emseg-rt {record['backend']} | {record['registry_name']} | {record['median_s']:.2f} | "
                     f"{base / record['median_s']:.2f}× | {'–' if fraction is None else f'{fraction:.2f}'} |")
    ceilings = result.get("matmul_tflops", {})
    lines += ["", "emseg-rt's times hold the whole per-slice graph (for vanilla-sam: the same ViT-B encoder plus "
              "SAM's mask decoder and the class merge); the research code's hold the encoder only. Dense matmul "
              "ceilings this run measured (TFLOP/s): "
              + ", ".join(f"{k} {v:.4f}" for k, v in ceilings.items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", default="vanilla-sam,scsam")
    args = parser.parse_args()
    research = time_predictor(args.iters, args.warmup)
    config = BenchConfig(models=tuple(args.models.split(",")), size="vit-b", backends=BACKENDS, batches=(1,),
                         warmup=args.warmup, iters=args.iters, device="cpu", breakdown=False, agreement=False)
    bench = run_bench(config, say=print).to_dict()
    records = [{"registry_name": r["model_name"], "backend": r["backend"], "median_s": r["median_s_per_slice"],
                "fraction_of_matmul_rates": r.get("fraction_of_matmul_rates") or {}}
               for r in bench["records"] if r.get("median_s_per_slice")]
    result = {"machine": machine_record("cpu"), "research": {"path": "SamPredictor.set_image", "seconds": research,
                                                              "median_s": statistics.median(research)},
              "emseg_rt": records, "matmul_tflops": bench.get("matmul_tflops", {}), "bench": bench}
    save_result(RESULTS, result, markdown(result))


if __name__ == "__main__":
    main()
