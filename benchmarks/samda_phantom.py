#!/usr/bin/env python3
"""SAMDA's three steps (samda-tiny) on phantoms: target-domain Dice after each step.

Domains (both `emseg_rt.data.phantom` FIB-SEM phantoms, different cells):
- source: noise 1.0, the phantom's own contrast;
- target: noise 4.0 and a gamma curve on the intensities (x/255)^γ·255, γ = 0.4 (a brighter, flatter image;
  nnU-Net's per-tile z-score does not undo a non-linear change, and the SAM encoder sees raw intensities).

Protocol (each step is the library call `emseg-rt train samda-tiny --recipe ...` runs):
1. `samda-source`: Dice + CE on the labelled source phantom (seed 11).
2. `samda-uda`: L_feat + L_style on unlabelled (source, target) pairs (source seed 11, target training slices).
3. `samda-fewshot`: Dice + CE on N = 10 annotated target training slices (§4: 10 target images).
The target is one phantom (seed 21, 32 slices) split as SAMDA §4 splits EPFL: a random half of the slices is
the target test set, the other half the target training set (raw for step 2, N annotated for step 3).
After each step, `segment_volume` (torch backend, the runtime's tiler) on the target test slices and on a
held-out source phantom (seed 31), Dice per class (`emseg_rt.metrics.dice`); also the model before training.

    python benchmarks/samda_phantom.py                             # ~4 min on 1 thread
    python benchmarks/samda_phantom.py --scale 0.1 --out-dir /tmp/x  # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emseg_rt.bench.machine import machine_record
from emseg_rt.data.phantom import CLASS_NAMES, generate_phantom
from emseg_rt.metrics import dice
from emseg_rt.models.reproducible import build_model
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.training.samda import few_shot_slices, train_samda

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "samda-tiny"
SHAPE = (16, 256, 256)
SOURCE_NOISE, TARGET_NOISE, TARGET_GAMMA = 1.0, 4.0, 0.4
TRAIN_SEED, TARGET_SEED, TEST_SEED = 11, 21, 31
STEPS = {"samda-source": 400, "samda-uda": 100, "samda-fewshot": 200}
SHOTS = 10  # SAMDA §4: 10 annotated target images for step 3


def target_domain(image: np.ndarray) -> np.ndarray:
    """The target's contrast: a gamma curve on uint8 intensities."""
    return np.clip(np.rint(255.0 * (image / 255.0) ** TARGET_GAMMA), 0, 255).astype(np.uint8)


def target_split(depth: int) -> tuple[list[int], list[int]]:
    """SAMDA §4's split of the target volume: a random half of its slices for testing, the rest for training."""
    order = np.random.default_rng(TARGET_SEED).permutation(depth)
    return sorted(int(z) for z in order[depth // 2:]), sorted(int(z) for z in order[: depth // 2])


def domains() -> dict[str, dict[str, np.ndarray]]:
    source = generate_phantom(SHAPE, seed=TRAIN_SEED, noise=SOURCE_NOISE)
    source_test = generate_phantom(SHAPE, seed=TEST_SEED, noise=SOURCE_NOISE)
    target = generate_phantom((2 * SHAPE[0], *SHAPE[1:]), seed=TARGET_SEED, noise=TARGET_NOISE)
    image, labels = target_domain(target.image), target.labels
    train, test = target_split(2 * SHAPE[0])
    return {
        "source": {"image": source.image, "labels": source.labels},
        "target": {"image": image[train], "labels": labels[train]},
        "source_test": {"image": source_test.image, "labels": source_test.labels},
        "target_test": {"image": image[test], "labels": labels[test]},
    }


def evaluate(model: torch.nn.Module, volume: dict[str, np.ndarray], work: Path, name: str) -> dict[str, float]:
    """Dice per class and their mean on `volume`, segmented by `segment_volume` with the torch backend."""
    out = work / f"{name}.zarr"
    segment_volume(volume["image"], out, backend=TorchBackend(model.eval()), overwrite=True)
    from emseg_rt.io import read_volume

    labels = np.asarray(read_volume(out))
    scores = {cls: dice(labels, volume["labels"], k) for k, cls in enumerate(CLASS_NAMES, start=1)}
    scores["mean"] = float(np.mean(list(scores.values())))
    return {k: round(float(v), 4) for k, v in scores.items()}


def run(scale: float, work: Path) -> dict:
    data = domains()
    model = build_model(MODEL)
    steps = {name: max(2, int(round(n * scale))) for name, n in STEPS.items()}
    shots = few_shot_slices(SHAPE[0], SHOTS)
    stages = [("samda-source", {"volumes": [data["source"]["image"]], "labels": [data["source"]["labels"]]}),
              ("samda-uda", {"volumes": [data["source"]["image"]], "target": [data["target"]["image"]]}),
              ("samda-fewshot", {"volumes": [data["target"]["image"][shots]],
                                 "labels": [data["target"]["labels"][shots]]})]
    rows = [{"after": "initialisation", "steps": 0, "seconds": 0.0,
             "target": evaluate(model, data["target_test"], work, "init-t"),
             "source": evaluate(model, data["source_test"], work, "init-s")}]
    for recipe, inputs in stages:
        tick = time.perf_counter()
        report = train_samda(model, recipe, work / f"{recipe}.pt", steps=steps[recipe], batch=4,
                             checkpoint_every=max(1, steps[recipe] // 10), **inputs)
        seconds = round(time.perf_counter() - tick, 1)
        rows.append({"after": recipe, "steps": steps[recipe], "seconds": seconds,
                     "losses": report.losses, "target": evaluate(model, data["target_test"], work, f"{recipe}-t"),
                     "source": evaluate(model, data["source_test"], work, f"{recipe}-s")})
        print(f"{recipe}: {seconds} s, target Dice {rows[-1]['target']}", file=sys.stderr)
    return {"rows": rows, "steps": steps, "shots": shots}


def markdown(result: dict) -> str:
    setup = result["setup"]
    lines = [
        "# SAMDA on phantoms (samda-tiny, CPU)",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}, {setup['torch_threads']} torch thread(s), no GPU; "
        f"{result['date']}.",
        f"Source: phantom seed {TRAIN_SEED}, noise {SOURCE_NOISE}, {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]}; held out: seed "
        f"{TEST_SEED}. Target: seed {TARGET_SEED}, noise {TARGET_NOISE}, gamma {TARGET_GAMMA}, {2 * SHAPE[0]} slices "
        f"split in half at random (test / training, as SAMDA §4 splits EPFL). Few-shot: training slices "
        f"{result['shots']}. Steps: {result['steps']} (batch 4).",
        "",
        "| after | steps | train s | target Dice: nucleus | mito | granules | mean | source mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        t = row["target"]
        lines.append(f"| {row['after']} | {row['steps']} | {row['seconds']} | {t['nucleus']:.3f} | "
                     f"{t['mitochondria']:.3f} | {t['granules']:.3f} | **{t['mean']:.3f}** | "
                     f"{row['source']['mean']:.3f} |")
    lines += ["", "Dice from `segment_volume` (torch backend) on the held-out volumes, written by "
              "`benchmarks/samda_phantom.py`; phantoms and a tiny model: these numbers show the three steps "
              "working end to end, not SAMDA's accuracy on EM data.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (smoke runs)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samda-phantom-") as work:
        result = run(args.scale, Path(work))
    result.update({"model": MODEL, "machine": machine_record("cpu"), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                   time.gmtime()), "setup": {"torch_threads": torch.get_num_threads(), "scale": args.scale,
                                             "shape": SHAPE, "source_noise": SOURCE_NOISE,
                                             "target_noise": TARGET_NOISE, "target_gamma": TARGET_GAMMA},
                   "seconds": round(time.perf_counter() - began, 1)})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "samda_phantom.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "samda_phantom.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
