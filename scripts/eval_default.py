"""Score the shipped default model on held-out phantoms (seeds never used in training) for its model card.

    python scripts/eval_default.py            # writes models/scsam-phantom.eval.json, prints the card's tables

Each phantom (16×256×256) is written as OME-Zarr and segmented by `segment_volume`, the path `emseg-rt
segment` runs: the embedded default model on the torch backend, the runtime's defaults (128² tiles, halo
tile // 8 = 16 px, centre-crop stitching, batch 4), one torch thread. The labels are read back from the
output (an OME-Zarr label image) and scored with emseg_rt.metrics over the whole volume.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emseg_rt.bench.machine import machine_record
from emseg_rt.data.phantom import CLASS_NAMES, generate_phantom, write_phantom
from emseg_rt.io import read_volume
from emseg_rt.metrics import evaluate
from emseg_rt.models.default_model import default_model_name, default_weights_path
from emseg_rt.runtime import segment_volume

SHAPE = (16, 256, 256)
BACKEND = "torch"
CASES = [  # (seed, noise, anisotropy)
    (1, 1.0, 1.0), (2, 1.0, 1.0), (3, 1.0, 1.0), (4, 1.0, 1.0), (5, 1.0, 1.0),
    (6, 0.5, 1.0), (7, 1.0, 1.0), (8, 1.5, 1.0), (9, 1.0, 2.0),
]


def score_case(workdir: Path, seed: int, noise: float, anisotropy: float) -> dict:
    """Write one held-out phantom, segment it with `segment_volume`, read the labels back and score them."""
    phantom = generate_phantom(SHAPE, seed=seed, noise=noise, anisotropy=anisotropy)
    source = write_phantom(workdir / f"phantom-{seed}.zarr", phantom)
    start = time.perf_counter()
    report = segment_volume(source, workdir / f"segmentation-{seed}.zarr", model=None, backend=BACKEND,
                            overwrite=True)
    seconds = time.perf_counter() - start
    prediction = read_volume(report.label_path)  # dataset path taken from the label group's multiscales
    scores = evaluate(prediction, phantom.labels, CLASS_NAMES)
    return {"seed": seed, "noise": noise, "anisotropy": anisotropy, "seconds": round(seconds, 2),
            "dice": scores.dice, "iou": scores.iou, "aji": scores.aji, "pq": scores.pq,
            "mean_dice": scores.mean_dice, "mean_iou": scores.mean_iou, "mean_aji": scores.mean_aji}


def card_tables(record: dict) -> str:
    """The model card's score table and summary lines, formatted from `record` (never typed by hand)."""
    header = ("| seed | noise | anisotropy | Dice nucleus | Dice mitochondria | Dice granules | mean Dice | mean IoU "
              "| mean AJI |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for case in record["cases"]:
        dice = " | ".join(f"{case['dice'][name]:.3f}" for name in CLASS_NAMES)
        lines.append(f"| {case['seed']} | {case['noise']} | {case['anisotropy']} | {dice} | {case['mean_dice']:.3f} "
                     f"| {case['mean_iou']:.3f} | {case['mean_aji']:.3f} |")
    summary = record["mean_dice_noise1_aniso1"]
    pq = record["mean_pq_seeds_1_to_5"]
    seconds = [case["seconds"] for case in record["cases"]]
    lines += ["",
              "typical noise: " + ", ".join(f"{name} {summary[name]:.3f}" for name in CLASS_NAMES)
              + f", mean Dice {summary['mean']:.3f}",
              "PQ seeds 1–5: " + ", ".join(f"{name} {pq[name]:.2f}" for name in CLASS_NAMES),
              (f"segment_volume seconds per phantom: {min(seconds):.1f}–{max(seconds):.1f}, "
               f"all {record['total_segment_seconds']:.0f} s")]
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)  # the default model is small; one thread is fastest on a shared 2-core machine
    results = []
    with tempfile.TemporaryDirectory(prefix="emseg-eval-default-") as workdir:
        for seed, noise, anisotropy in CASES:
            results.append(score_case(Path(workdir), seed, noise, anisotropy))
            print(json.dumps(results[-1]), flush=True)
    typical = [r for r in results if r["noise"] == 1.0 and r["anisotropy"] == 1.0]
    summary = {name: float(np.mean([r["dice"][name] for r in typical])) for name in CLASS_NAMES}
    summary["mean"] = float(np.mean([summary[name] for name in CLASS_NAMES]))
    pq = {name: float(np.mean([r["pq"][name] for r in results if r["seed"] <= 5])) for name in CLASS_NAMES}
    record = {"model": default_model_name(),
              "weights_sha256": hashlib.sha256(default_weights_path().read_bytes()).hexdigest(),
              "path": f"segment_volume(model=None, backend={BACKEND!r}) with the runtime's defaults",
              "shape": list(SHAPE), "machine": machine_record("cpu"),
              "total_segment_seconds": round(sum(r["seconds"] for r in results), 1),
              "mean_dice_noise1_aniso1": summary, "mean_pq_seeds_1_to_5": pq, "cases": results}
    out = REPO / "models" / "scsam-phantom.eval.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(card_tables(record))


if __name__ == "__main__":
    main()
