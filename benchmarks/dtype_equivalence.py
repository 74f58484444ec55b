#!/usr/bin/env python3
"""Does a linear rescale of the same image segment the same? uint8 phantoms against their exact rescales.

Each held-out phantom (uint8, `emseg_rt.data.generate_phantom`, seeds never used in training) is rescaled exactly
and linearly to uint16, int16, int32, uint32, int8, float32 and float64 (`RESCALES`) and segmented with the
embedded default model (torch backend, one thread) through `segment_labels`, the runtime's reader,
normalisation, tiler and blocks. For each intensity mapping (`CANDIDATES`) it records the share of voxels whose
label equals the uint8 run's (uint8 itself is identity in every design) and the Dice against the ground truth.

The candidates: the runtime's default (the volume's 0.5/99.5 percentiles mapped onto the model's reference
window); the earlier default (the same percentiles stretched onto 0..255, `--window p0.5,p99.5` today); the
README's `--window 1%,99%`; and other statistics mapped onto the same statistic of the training data (other
percentile pairs, mean ± std). Each non-default candidate runs as the `--window LOW,HIGH` values its mapping
amounts to. The reference window is recomputed from the training phantoms (`scripts/train_default.py`'s
seeds, noise and anisotropy) and compared with the one the model's config records.

    python benchmarks/dtype_equivalence.py            # ≈ 10 min on a 2-core CPU
    python benchmarks/dtype_equivalence.py --quick    # the test-size phantoms only
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emseg_rt.bench.machine import machine_record
from emseg_rt.data.phantom import generate_phantom
from emseg_rt.metrics import evaluate
from emseg_rt.models import get_config
from emseg_rt.models.default_model import DEFAULT_MODEL
from emseg_rt.runtime import load_backend, segment_labels
from emseg_rt.runtime.normalise import DEFAULT_PERCENTILES, FULL_RANGE, dataset_normalisation, sample_planes

RESULTS = Path(__file__).resolve().parent / "results"

# Exact linear rescales of uint8 values u (every one invertible: no two grey levels merge).
RESCALES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "uint16": lambda u: u.astype(np.uint16) * 257,  # 0..65535, the full 16-bit range
    "int16": lambda u: u.astype(np.int16) * 100 - 12800,  # -12800..12700
    "int32": lambda u: u.astype(np.int32) * 1_000_000 - 2**27,
    "uint32": lambda u: u.astype(np.uint32) * 16_777_216,  # up to 4.28e9
    "int8": lambda u: (u.astype(np.int16) - 128).astype(np.int8),  # -128..127
    "float32": lambda u: u.astype(np.float32) / 255,  # 0..1
    "float64": lambda u: u.astype(np.float64) * 0.37 + 12.5,
}
OTHER_STATISTICS = ((1.0, 99.0), (2.0, 98.0), (5.0, 95.0), "mean±std")
SETS = {"test size": ((4, 160, 160), tuple(range(10))), "larger": ((16, 256, 256), (0, 1, 2))}
TRAIN_SEED0, TRAIN_PHANTOMS = 1000, 12  # scripts/train_default.py


def training_sample() -> np.ndarray:
    """The voxels `segment` would sample from each training phantom of the default model, pooled (N,) float64."""
    rng = np.random.default_rng(0)  # the draws of scripts/train_default.py, in its order
    samples = []
    for i in range(TRAIN_PHANTOMS):
        noise, anisotropy = float(rng.uniform(0.6, 1.6)), float(rng.choice([1.0, 1.5, 2.0]))
        image = generate_phantom((24, 256, 256), seed=TRAIN_SEED0 + i, noise=noise, anisotropy=anisotropy).image
        samples.append(sample_planes(image, "training phantom", max_planes=16, samples_per_plane=65536, seed=0)[0])
    return np.concatenate(samples)


def statistic(values: np.ndarray, kind: tuple[float, float] | str) -> tuple[float, float]:
    """The two numbers a candidate anchors on: a percentile pair, or mean − std and mean + std."""
    if kind == "mean±std":
        return float(values.mean() - values.std()), float(values.mean() + values.std())
    return tuple(float(v) for v in np.percentile(values, kind))


def window_text(array: np.ndarray, kind: tuple[float, float] | str, reference: tuple[float, float]) -> str:
    """`--window LOW,HIGH` values that map the volume's `kind` statistic onto `reference` (uint8 values)."""
    if kind == "mean±std":
        values, _ = sample_planes(array, "input", max_planes=16, samples_per_plane=65536, seed=0)
        low, high = statistic(values, kind)
        per_level = (high - low) / (reference[1] - reference[0])
        window = (low - reference[0] * per_level, high + (FULL_RANGE[1] - reference[1]) * per_level)
    else:
        window = dataset_normalisation(array, reference=reference, percentiles=kind).window
    return f"{window[0]!r},{window[1]!r}"


def candidates(training: np.ndarray) -> dict[str, Callable[[np.ndarray], str | None]]:
    """{name: array → the `--window` text segment gets (None: the runtime's default)}."""
    found: dict[str, Callable[[np.ndarray], str | None]] = {
        "reference p0.5/p99.5 (default)": lambda array: None,
        "stretch p0.5/p99.5 → 0..255 (before)": lambda array: "p0.5,p99.5",
        "--window 1%,99%": lambda array: "1%,99%",
    }
    for kind in OTHER_STATISTICS:
        name = f"reference {kind}" if isinstance(kind, str) else f"reference p{kind[0]:g}/p{kind[1]:g}"
        found[name] = (lambda k, ref: lambda array: window_text(array, k, ref))(kind, statistic(training, kind))
    return found


def score(labels: np.ndarray, uint8_labels: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    scores = evaluate(labels, truth, instance_metrics=False)
    return {"agreement": float((labels == uint8_labels).mean()), "mean_dice": round(float(scores.mean_dice), 5),
            "dice": {name: round(float(value), 5) for name, value in scores.dice.items()}}


def run_phantom(engine, shape, seed, designs, all_dtypes) -> dict[str, dict[str, dict[str, object]]]:
    """{design: {dtype: score}} for one phantom; `all_dtypes` names the designs run on every rescale (the
    others run on uint16)."""
    phantom = generate_phantom(shape, seed=seed)
    uint8_labels = segment_labels(phantom.image, backend=engine)
    found = {"uint8": {"uint8": score(uint8_labels, uint8_labels, phantom.labels)}}
    for design, window_of in designs.items():
        dtypes = RESCALES if design in all_dtypes else ("uint16",)
        found[design] = {}
        for dtype in dtypes:
            array = RESCALES[dtype](phantom.image)
            labels = segment_labels(array, backend=engine, window=window_of(array))
            found[design][dtype] = score(labels, uint8_labels, phantom.labels)
        print(f"{shape} seed {seed} {design}: "
              + " ".join(f"{d} {100 * s['agreement']:.2f}%" for d, s in found[design].items()), flush=True)
    return found


def summarise(per_seed: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{design: {dtype: mean/min agreement, phantoms ≥ 99.5 %, mean and worst |Dice − uint8 Dice|}}."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    designs = [d for d in next(iter(per_seed.values())) if d != "uint8"]
    for design in designs:
        summary[design] = {}
        for dtype in next(iter(per_seed.values()))[design]:
            agree = np.array([run[design][dtype]["agreement"] for run in per_seed.values()])
            gap = np.array([abs(run[design][dtype]["mean_dice"] - run["uint8"]["uint8"]["mean_dice"])
                            for run in per_seed.values()])
            dice = np.array([run[design][dtype]["mean_dice"] for run in per_seed.values()])
            summary[design][dtype] = {
                "agreement_mean": round(float(agree.mean()), 5), "agreement_min": round(float(agree.min()), 5),
                "phantoms_at_99_5": int((agree >= 0.995).sum()), "phantoms": int(agree.size),
                "mean_dice": round(float(dice.mean()), 4), "dice_gap_mean": round(float(gap.mean()), 4),
                "dice_gap_max": round(float(gap.max()), 4)}
    return summary


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = ["# Dtype equivalence (`benchmarks/dtype_equivalence.py`)", "",
             f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['libraries']['torch']}, one "
             f"thread; {record['date']}. Model: {record['model']} (torch backend), `segment_labels`.", "",
             f"Reference window recorded in the model's config: {record['reference_window']['config']}; recomputed "
             f"from the {TRAIN_PHANTOMS} training phantoms: {record['reference_window']['recomputed']}.", "",
             "Agreement: share of voxels labelled as in the uint8 run; ≥ 99.5 %: phantoms at or above it; Dice gap: "
             "|mean Dice − the uint8 run's mean Dice| against the ground truth.", ""]
    for name, part in record["sets"].items():
        uint8_dice = np.mean([run["uint8"]["uint8"]["mean_dice"] for run in part["per_seed"].values()])
        lines += [f"## {name}: {part['shape']}, seeds {part['seeds']} (uint8 mean Dice {uint8_dice:.4f})", "",
                  "| mapping | dtype | agreement mean | agreement min | ≥ 99.5 % | mean Dice | Dice gap mean | "
                  "Dice gap max |", "|---|---|---|---|---|---|---|---|"]
        for design, dtypes in part["summary"].items():
            for dtype, s in dtypes.items():
                lines.append(f"| {design} | {dtype} | {100 * s['agreement_mean']:.2f} % | "
                             f"{100 * s['agreement_min']:.2f} % | {s['phantoms_at_99_5']}/{s['phantoms']} | "
                             f"{s['mean_dice']:.4f} | {s['dice_gap_mean']:.4f} | {s['dice_gap_max']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test-size phantoms only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    training = training_sample()
    config = get_config(DEFAULT_MODEL).reference_window
    recomputed = statistic(training, DEFAULT_PERCENTILES)
    engine = load_backend(None, "torch")
    designs = candidates(training)
    all_dtypes = {"reference p0.5/p99.5 (default)", "stretch p0.5/p99.5 → 0..255 (before)"}
    record: dict[str, object] = {
        "machine": machine_record("cpu"), "date": machine_record("cpu")["date"], "model": DEFAULT_MODEL,
        "reference_window": {"config": list(config), "recomputed": list(recomputed),
                             "percentiles": list(DEFAULT_PERCENTILES)},
        "rescales": {"uint16": "u*257", "int16": "u*100-12800", "int32": "u*1e6-2**27", "uint32": "u*2**24",
                     "int8": "u-128", "float32": "u/255", "float64": "u*0.37+12.5"},
        "sets": {}}
    for name, (shape, seeds) in SETS.items():
        if args.quick and name != "test size":
            continue
        per_seed = {seed: run_phantom(engine, shape, seed, designs, all_dtypes if name == "test size"
                                      else {"reference p0.5/p99.5 (default)"}) for seed in seeds}
        record["sets"][name] = {"shape": list(shape), "seeds": list(seeds), "summary": summarise(per_seed),
                                "per_seed": per_seed}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dtype_equivalence.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "dtype_equivalence.md").write_text(markdown(record))
    json.dump(record["reference_window"], sys.stdout)


if __name__ == "__main__":
    main()
