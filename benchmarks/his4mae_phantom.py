#!/usr/bin/env python3
"""Self-supervised HiS4MAE / MAESTER (tiny) on phantoms: pretrain, fit clusters, segment held-out phantoms,
and score them beside the supervised default model (scsam-phantom).

Protocol (every step is the library call the CLI runs):
1. `pretrain` (emseg-rt pretrain) on unlabelled training phantoms (seeds 1000–1003, 32×256×256).
2. `fit_clusters` (emseg-rt cluster fit) on training phantom 1000 with its labels: K-means centres on a 1/1000
   sample of expand-stride pixel features, clusters named by Hungarian matching on that phantom.
3. `segment_labels` (emseg-rt segment --backend torch) of held-out phantoms 16×256×256, seeds 1–5 and 7
   (the default model card's typical-noise set), Dice per class.
   Column "training mapping": the clusters keep the names they got on the training phantom (what a user
   deploys). Column "paper mapping": as HiS4MAE §4.4 evaluates, the clusters are re-matched by the Hungarian
   algorithm on each evaluated phantom's own truth (on a 1 % sample of its voxels), then segmented again.
4. The default model `scsam-phantom` (supervised) through the same `segment_labels`.

    python benchmarks/his4mae_phantom.py                      # ~10 min on 2 cores
    python benchmarks/his4mae_phantom.py --epochs 5 --families his4mae --out-dir /tmp/x   # smoke run
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
from emseg_rt.clustering.features import sample_pixel_features
from emseg_rt.clustering.fit import fit_clusters, labels_at, nearest_centre
from emseg_rt.clustering.matching import match_clusters
from emseg_rt.constants import DEFAULT_CLASSES
from emseg_rt.data.phantom import generate_phantom
from emseg_rt.metrics import dice
from emseg_rt.models import build
from emseg_rt.runtime import load_backend, segment_labels
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.training import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_SEEDS = (1000, 1001, 1002, 1003)
HELD_OUT_SEEDS = (1, 2, 3, 4, 5, 7)


def class_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    scores = {name: dice(pred, truth, label) for label, name in enumerate(DEFAULT_CLASSES, start=1)}
    scores["mean"] = float(np.nanmean(list(scores.values())))
    return scores


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}


def paper_mapping(model: torch.nn.Module, image: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    """Hungarian matching of the fitted clusters on the evaluated volume's own truth (HiS4MAE §4.4)."""
    features, positions = sample_pixel_features(model, image, fraction=1e-2, seed=seed)
    clusters = nearest_centre(features, model.head.centres.numpy())
    return match_clusters(clusters, labels_at(truth, positions), model.head.num_clusters, len(DEFAULT_CLASSES))


def train_family(family: str, train: list[np.ndarray], labelled, epochs: int, clusters: int,
                 workdir: Path) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build(f"{family}-tiny")
    report = pretrain(model, train, workdir / f"{family}.pt", epochs=epochs, seed=0)
    fit = fit_clusters(model.eval(), labelled.image, labelled.labels, clusters=clusters, seed=0)
    return model, {"pretrain_seconds": report.seconds, "epochs": report.end_epoch,
                   "loss_first": report.losses[0], "loss_last": report.losses[-1],
                   "cluster_fit": {"clusters": fit.clusters, "samples": fit.samples, "seconds": fit.seconds,
                                   "cluster_classes": fit.cluster_classes.tolist()}}


def evaluate(model: torch.nn.Module, held_out: list, halo: int | None) -> dict:
    engine = TorchBackend(model)
    fitted = model.head.cluster_classes.clone()
    deployed, paper = [], []
    for seed, phantom in zip(HELD_OUT_SEEDS, held_out):
        deployed.append(class_dice(segment_labels(phantom.image, backend=engine, halo=halo), phantom.labels))
        mapping = paper_mapping(model, phantom.image, phantom.labels, seed)
        model.head.set_clusters(model.head.centres, torch.from_numpy(mapping))
        paper.append(class_dice(segment_labels(phantom.image, backend=engine, halo=halo), phantom.labels))
        model.head.set_clusters(model.head.centres, fitted)
    return {"training_mapping": mean_scores(deployed), "paper_mapping": mean_scores(paper),
            "per_seed_training_mapping": deployed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="his4mae,maester")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=8, help="K-means K (more than the 4 categories)")
    parser.add_argument("--halo", type=int, default=None, help="runtime halo (default tile // 8)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    train = [generate_phantom((32, 256, 256), seed=s).image for s in TRAIN_SEEDS]
    labelled = generate_phantom((32, 256, 256), seed=TRAIN_SEEDS[0])
    held_out = [generate_phantom((16, 256, 256), seed=s) for s in HELD_OUT_SEEDS]
    record: dict = {"benchmark": "his4mae_phantom", "machine": machine_record("cpu"), "epochs": args.epochs,
                    "clusters": args.clusters, "train_seeds": TRAIN_SEEDS, "held_out_seeds": HELD_OUT_SEEDS,
                    "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            model, trained = train_family(family, train, labelled, args.epochs, args.clusters, Path(tmp))
            record["models"][f"{family}-tiny"] = trained | evaluate(model, held_out, args.halo)
            print(json.dumps({family: record["models"][f"{family}-tiny"]["training_mapping"]}), flush=True)
    supervised = load_backend(None, "torch")
    rows = [class_dice(segment_labels(p.image, backend=supervised), p.labels) for p in held_out]
    record["supervised_default"] = {"model": "scsam-phantom", "scores": mean_scores(rows)}
    record["seconds"] = time.perf_counter() - began
    write_report(record, args.out_dir)
    return 0


def write_report(record: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "his4mae_phantom.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    names = [*DEFAULT_CLASSES, "mean"]
    lines = ["# Self-supervised HiS4MAE / MAESTER (tiny) vs the supervised default model on held-out phantoms", "",
             f"{m['cpu']} ({m['cpu_cores']} cores, 1 torch thread), {m['date']}, torch {m['libraries']['torch']}; "
             f"{record['seconds'] / 60:.1f} min in all. Pretraining: {record['epochs']} epochs on unlabelled "
             f"phantoms {record['train_seeds']} (32×256×256); K = {record['clusters']} clusters fitted on phantom "
             f"{record['train_seeds'][0]}; held-out phantoms {record['held_out_seeds']} (16×256×256). Dice per "
             "class, mean over the held-out phantoms.", "",
             "| model | cluster names from | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for name, result in record["models"].items():
        for key, label in (("training_mapping", "training phantom"), ("paper_mapping", "each held-out phantom")):
            lines.append(f"| {name} | {label} | " + " | ".join(f"{result[key][n]:.3f}" for n in names) + " |")
    sup = record["supervised_default"]["scores"]
    lines.append("| scsam-phantom (supervised) | — | " + " | ".join(f"{sup[n]:.3f}" for n in names) + " |")
    lines += ["", "Pretraining (total loss, first → last epoch) and cluster fit:", ""]
    for name, result in record["models"].items():
        fit = result["cluster_fit"]
        lines.append(f"- {name}: {result['loss_first']['total']:.4f} → {result['loss_last']['total']:.4f} in "
                     f"{result['pretrain_seconds']:.0f} s; {fit['samples']} sampled voxels, cluster classes "
                     f"{fit['cluster_classes']} (0 = background), {fit['seconds']:.1f} s.")
    lines += ["", "\"each held-out phantom\" is HiS4MAE's evaluation (§4.4: clusters re-matched to the truth of the "
              "volume being scored); \"training phantom\" is what a deployment gets.", ""]
    (out_dir / "his4mae_phantom.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
