#!/usr/bin/env python3
"""Segmentation quality in 3D (issue 27): the default model on held-out phantoms, xy planes vs orthoplane fusion.

For each held-out phantom (seeds no training, test or demo uses; isotropic voxels, as --planes needs), the path
`emseg-rt segment` runs — `segment_volume` with the embedded default model on the torch backend, the runtime's
defaults and `--instances` for every class — once with xy planes only and once with `--planes xy,xz,yz`; the
label images are read back from the output and scored with `emseg_rt.metrics.evaluate` (Dice, IoU, AJI and PQ
per class; AJI / PQ take the predicted instances from the `<class>_instances` images, the truth's from the
connected components of each class). The phantoms are near-cubes (64×160×160): an xz or yz plane of a thin volume
is mostly its tiles' reflect padding. A context section runs a 24×384×384 phantom with a large nucleus (xy
planes) with larger halos and Gaussian blending: the tile/halo/blend measurement behind the defaults. Writes benchmarks/results/quality_3d.{json,md}.

    python benchmarks/quality_3d.py                     # ≈ 15 min on 2 idle CPU cores
    python benchmarks/quality_3d.py --quick             # one small phantom, to check the script
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from emseg_rt.bench.machine import machine_record, save_result
from emseg_rt.data.phantom import CLASS_NAMES, generate_phantom, write_phantom
from emseg_rt.metrics import evaluate
from emseg_rt.models.default_model import default_weights_path
from emseg_rt.runtime import segment_volume

RESULTS = Path(__file__).resolve().parent / "results" / "quality_3d"
# Held out: training uses seeds 1000.. (scripts/train_default.py), its card 2000.. (scripts/eval_default.py),
# tests and the demo 0..99.
# Cubes: an xz or yz plane of a thin volume is mostly the reflect padding of its tiles, no test of fusion.
PHANTOMS = [(3000, (64, 160, 160)), (3001, (64, 160, 160)), (3002, (64, 160, 160))]
CONTEXT_PHANTOM = (3003, (24, 384, 384))  # a large nucleus: the tile core inside it (issue 27's square hole)
QUICK = [(3000, (48, 96, 96))]
PLANES = {"xy": None, "xy+xz+yz": "xy,xz,yz"}
CONTEXT = [("halo 16 (default), center", {}), ("halo 32, center", {"halo": 32}), ("halo 48, center", {"halo": 48}),
           ("halo 16, gaussian", {"blend": "gaussian"}), ("halo 32, gaussian", {"halo": 32, "blend": "gaussian"})]


def segment_and_score(image: Path, truth: np.ndarray, out: Path, **choices) -> dict:
    """One segment run with every class's instances, read back and scored → scores and seconds."""
    began = time.perf_counter()
    report = segment_volume(image, out, backend="torch", device="cpu", instances=",".join(CLASS_NAMES), **choices)
    seconds = time.perf_counter() - began
    labels = np.asarray(zarr.open_array(str(out / "s0")))
    instances = {name: np.asarray(zarr.open_array(str(out / f"{name}_instances" / "s0"))) for name in CLASS_NAMES}
    scores = evaluate(labels, truth, tuple(CLASS_NAMES), pred_instances=instances)
    return {"seconds": round(seconds, 2), "segment_seconds": round(report.wall_seconds, 2),
            "plane_seconds": {k: round(v, 2) for k, v in report.plane_seconds.items()},
            "dice": scores.dice, "pq": scores.pq, "aji": scores.aji, "mean_dice": scores.mean_dice,
            "mean_pq": scores.mean_pq}


def phantom_case(seed: int, shape: tuple[int, int, int], workdir: Path, context: bool) -> dict:
    """Every --planes setting on one phantom; with `context`, the CONTEXT settings (xy) instead."""
    phantom = generate_phantom(shape, seed=seed, noise=1.0, anisotropy=1.0)
    image = write_phantom(workdir / f"p{seed}.zarr", phantom)
    case = {"seed": seed, "shape": list(shape), "planes": {}, "context": {}}
    for name, planes in PLANES.items() if not context else ():
        out = workdir / f"p{seed}-{name.replace('+', '-')}.zarr"
        case["planes"][name] = segment_and_score(image, phantom.labels, out, **({"planes": planes} if planes else {}))
    for name, choices in CONTEXT if context else ():
        out = workdir / f"p{seed}-{name.replace(' ', '').replace(',', '-')}.zarr"
        case["context"][name] = segment_and_score(image, phantom.labels, out, **choices)
    return case


def mean_over(cases: list[dict], planes: str, key: str) -> dict[str, float]:
    return {name: float(np.nanmean([c["planes"][planes][key][name] for c in cases])) for name in CLASS_NAMES}


def markdown(result: dict) -> str:
    m, cases = result["machine"], result["cases"]
    lines = ["# Quality in 3D: xy planes vs orthoplane fusion (default model, held-out phantoms)", "",
             f"{m['date']}, {m['cpu']} ({m['cpu_cores']} cores), torch {m['torch_threads']} thread(s); "
             "`segment_volume`, torch backend, runtime defaults, `--instances` for every class "
             f"(`python benchmarks/quality_3d.py`); default model weights sha256 `{result['weights_sha256'][:16]}…`.",
             "",
             "| seed | shape | planes | " + " | ".join(f"Dice {n}" for n in CLASS_NAMES) + " | mean Dice | "
             + " | ".join(f"PQ {n}" for n in CLASS_NAMES) + " | mean PQ | seconds |",
             "|---" * (6 + 2 * len(CLASS_NAMES)) + "|"]
    for case in cases:
        for planes, s in case["planes"].items():
            lines.append(f"| {case['seed']} | {'×'.join(map(str, case['shape']))} | {planes} | "
                         + " | ".join(f"{s['dice'][n]:.3f}" for n in CLASS_NAMES) + f" | {s['mean_dice']:.3f} | "
                         + " | ".join(f"{s['pq'][n]:.3f}" for n in CLASS_NAMES)
                         + f" | {s['mean_pq']:.3f} | {s['seconds']:.1f} |")
    lines += ["", "Means over the phantoms:", ""]
    for planes, summary in result["summary"].items():
        lines.append(f"- **{planes}**: mean Dice {summary['mean_dice']:.3f}, mean PQ {summary['mean_pq']:.3f}, "
                     f"{summary['seconds']:.1f} s in all")
    context = result["context"]
    if context:
        lines += ["", f"Context on seed {context['seed']} ({'×'.join(map(str, context['shape']))}, xy planes): "
                  "tile 128, halo and blending", "", "| setting | Dice nucleus | mean Dice | mean PQ | seconds |",
                  "|---|---|---|---|---|"]
        for name, s in context["context"].items():
            lines.append(f"| {name} | {s['dice']['nucleus']:.3f} | {s['mean_dice']:.3f} | {s['mean_pq']:.3f} | "
                         f"{s['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small phantom (checks the script)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    phantoms = QUICK if args.quick else PHANTOMS
    with tempfile.TemporaryDirectory(prefix="quality3d-") as tmp:
        cases = [phantom_case(seed, shape, Path(tmp), context=False) for seed, shape in phantoms]
        context = None if args.quick else phantom_case(*CONTEXT_PHANTOM, Path(tmp), context=True)
    summary = {}
    for planes in PLANES:
        dice, pq = mean_over(cases, planes, "dice"), mean_over(cases, planes, "pq")
        summary[planes] = {"dice": dice, "pq": pq, "mean_dice": float(np.mean(list(dice.values()))),
                           "mean_pq": float(np.mean(list(pq.values()))),
                           "seconds": float(sum(c["planes"][planes]["seconds"] for c in cases))}
    weights = hashlib.sha256(default_weights_path().read_bytes()).hexdigest()
    result = {"machine": machine_record("cpu"), "weights_sha256": weights, "cases": cases, "summary": summary,
              "context": context}
    save_result(RESULTS.with_name("quality_3d-quick") if args.quick else RESULTS, result, markdown(result))


if __name__ == "__main__":
    main()
