#!/usr/bin/env python3
"""What a user sees on the README's own phantom: the README's first commands, run as written, scored.

Runs, with the installed `emseg-rt`, in a temporary folder (a fresh package cache unless $EMSEG_RT_CACHE is set):

    emseg-rt phantom cell.zarr --shape 64,512,512 --seed 3
    emseg-rt segment cell.zarr --out cell-seg.zarr
    emseg-rt eval cell-seg.zarr cell.zarr --json

and writes the scores per class, the seconds of each command and the machine to
benchmarks/results/readme_phantom.{json,md}: the figures README.md quotes for "Using it".

    python benchmarks/readme_phantom.py [--shape 64,512,512 --seed 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emseg_rt.bench.machine import machine_record, save_result

RESULTS = Path(__file__).resolve().parent / "results"


def run(command: list[str], workdir: Path) -> tuple[str, float]:
    """Run one command in `workdir` → (stdout, seconds); exits with its stderr when it fails."""
    began = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout, seconds


def measure(shape: str, seed: int, workdir: Path) -> dict:
    cli = shutil.which("emseg-rt") or sys.exit("emseg-rt is not installed (pip install -e .)")
    commands = [[cli, "phantom", "cell.zarr", "--shape", shape, "--seed", str(seed)],
                [cli, "segment", "cell.zarr", "--out", "cell-seg.zarr"],
                [cli, "eval", "cell-seg.zarr", "cell.zarr", "--json"]]
    seconds, stdout = [], ""
    for command in commands:
        stdout, took = run(command, workdir)
        seconds.append(round(took, 1))
    scores = json.loads(stdout)
    return {"commands": [" ".join(["emseg-rt", *c[1:]]) for c in commands], "seconds": seconds, "scores": scores}


def markdown(result: dict) -> str:
    m, scores = result["machine"], result["scores"]
    classes = list(scores["dice"])
    lines = [
        "# The README's phantom, segmented as the README says",
        "",
        f"{m['cpu']} ({m['cpu_cores']} cores, load average {result['load_average_1min_at_end']} at the end: the "
        f"seconds are not a benchmark where other jobs shared the machine), {m['date']}, emseg-rt "
        f"{m['libraries']['emseg-rt']}. Commands, run in order with the installed `emseg-rt` (seconds each, "
        "start-up included):",
        "",
    ]
    lines += [f"    {command}    # {took} s" for command, took in zip(result["commands"], result["seconds"])]
    lines += ["", "| class | Dice | IoU |", "|---|---|---|"]
    lines += [f"| {name} | {scores['dice'][name]:.3f} | {scores['iou'][name]:.3f} |" for name in classes]
    lines.append(f"| mean | {scores['mean_dice']:.3f} | {scores['mean_iou']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,512,512")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "readme_phantom")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        os.environ.setdefault("EMSEG_RT_CACHE", str(Path(workdir) / "cache"))  # a fresh machine's first run
        measured = measure(args.shape, args.seed, Path(workdir))
    result = {"benchmark": "readme_phantom", "machine": machine_record("cpu"), "shape": args.shape,
              "seed": args.seed, "load_average_1min_at_end": round(os.getloadavg()[0], 2), **measured}
    save_result(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
