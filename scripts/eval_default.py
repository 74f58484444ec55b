"""Score the shipped default model on held-out phantoms (seeds never used in training or tests) for its card.

    python scripts/eval_default.py            # writes models/scsam-phantom.eval.json, prints the card's tables
    python scripts/eval_default.py --weights candidate.pt --out /tmp/candidate.eval.json   # a candidate
    python scripts/eval_default.py --card-only   # rewrite the card's tables from the JSON files, run nothing

Writing the default JSON also rewrites the tables of models/scsam-phantom.md between its
`<!-- eval_default.py: begin -->` and `<!-- eval_default.py: end -->` markers, so every number there comes
from models/scsam-phantom.eval.json (and earlier weights' from models/scsam-phantom.stage{1,3,4}.eval.json).

The held-out phantoms are seeds 2000–2006 (no test, script, demo or training run uses them: training uses
1000–1219, validation 900–902, tests and the demo 0–99), of several sizes — the 384² and 512² ones have a
nucleus wider than a 128² tile, where a tile's core can lie entirely inside it (2005 and 2006 are where the
first default model left tile-sized holes in the nucleus) — and several noise levels and anisotropies.
Each is written as OME-Zarr and segmented by `segment_volume`, the path `emseg-rt segment`
runs: the default model on the torch backend, the runtime's defaults (128² tiles, halo tile // 8 = 16 px,
centre-crop stitching, batch 4), one torch thread. The labels are read back from the output (an OME-Zarr
label image) and scored with emseg_rt.metrics over the whole volume (AJI and PQ on 3D connected components).
"""

from __future__ import annotations

import argparse
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

BACKEND = "torch"
CASES = [  # (seed, shape (Z, Y, X), noise, anisotropy): held out from training and tests
    (2000, (16, 256, 256), 1.0, 1.0),
    (2001, (16, 384, 384), 1.0, 1.0),
    (2002, (32, 512, 512), 1.0, 1.0),
    (2003, (24, 320, 320), 1.4, 1.5),
    (2004, (24, 256, 384), 0.7, 2.0),
    (2005, (16, 512, 512), 1.0, 1.0),
    (2006, (16, 512, 512), 1.0, 1.0),
]


def score_case(workdir: Path, case: tuple, checkpoint: Path | None) -> dict:
    """Write one held-out phantom, segment it with `segment_volume`, read the labels back and score them.

    case: (seed, shape, noise, anisotropy); checkpoint: weights for `scsam-phantom` (None: the embedded ones).
    """
    seed, shape, noise, anisotropy = case
    phantom = generate_phantom(shape, seed=seed, noise=noise, anisotropy=anisotropy)
    source = write_phantom(workdir / f"phantom-{seed}.zarr", phantom)
    start = time.perf_counter()
    report = segment_volume(source, workdir / f"segmentation-{seed}.zarr", model=default_model_name(),
                            checkpoints=[checkpoint] if checkpoint else (), backend=BACKEND, overwrite=True)
    seconds = time.perf_counter() - start
    prediction = read_volume(report.label_path)  # dataset path taken from the label group's multiscales
    scores = evaluate(prediction, phantom.labels, CLASS_NAMES)
    return {"seed": seed, "shape": list(shape), "noise": noise, "anisotropy": anisotropy,
            "seconds": round(seconds, 2),
            "dice": scores.dice, "iou": scores.iou, "aji": scores.aji, "pq": scores.pq,
            "mean_dice": scores.mean_dice, "mean_iou": scores.mean_iou, "mean_aji": scores.mean_aji}


def card_tables(record: dict) -> str:
    """The model card's score table and summary lines, formatted from `record` (never typed by hand)."""
    header = ("| seed | shape | noise | anisotropy | Dice nucleus | Dice mitochondria | Dice granules | mean Dice "
              "| mean IoU | mean AJI | seconds |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in record["cases"]:
        dice = " | ".join(f"{case['dice'][name]:.3f}" for name in CLASS_NAMES)
        shape = "×".join(str(s) for s in case["shape"])
        lines.append(f"| {case['seed']} | {shape} | {case['noise']} | {case['anisotropy']} | {dice} "
                     f"| {case['mean_dice']:.3f} | {case['mean_iou']:.3f} | {case['mean_aji']:.3f} "
                     f"| {case['seconds']:.1f} |")
    dice, pq, machine = record["mean_dice"], record["mean_pq"], record["machine"]
    lines += ["",
              "- mean over the held-out phantoms: Dice "
              + ", ".join(f"{name} {dice[name]:.3f}" for name in CLASS_NAMES) + f", **mean Dice {dice['mean']:.3f}**",
              "- PQ (3D connected components of the semantic labels, no instance post-processing): "
              + ", ".join(f"{name} {pq[name]:.2f}" for name in CLASS_NAMES),
              f"- segment_volume, all phantoms: {record['total_segment_seconds']:.0f} s on {machine['cpu']} "
              f"({machine['cpu_cores']} cores shared with other jobs, {machine['torch_threads']} torch thread, "
              f"torch {machine['libraries']['torch']}), {machine['date'][:10]}"]
    return "\n".join(lines)


CARD = REPO / "models" / "scsam-phantom.md"
EVAL_JSON = REPO / "models" / "scsam-phantom.eval.json"
# earlier shipped weights, scored by this script on the same phantoms: (name in the card, record)
EARLIER_JSON = [("first (stage 1)", REPO / "models" / "scsam-phantom.stage1.eval.json"),
                ("stage 3, no pixel refinement", REPO / "models" / "scsam-phantom.stage3.eval.json"),
                ("stage 4, refinement trained alone", REPO / "models" / "scsam-phantom.stage4.eval.json")]
BEGIN, END = "<!-- eval_default.py: begin -->", "<!-- eval_default.py: end -->"


def comparison_table(records: list[tuple[str, dict]]) -> str:
    """Mean Dice per class and mean PQ of each (name, record): earlier shipped weights, then the current ones."""
    lines = ["| weights | Dice nucleus | Dice mitochondria | Dice granules | mean Dice | PQ nucleus | PQ mitochondria "
             "| PQ granules |", "|---|---|---|---|---|---|---|---|"]
    for name, record in records:
        dice = " | ".join(f"{record['mean_dice'][c]:.3f}" for c in CLASS_NAMES)
        pq = " | ".join(f"{record['mean_pq'][c]:.2f}" for c in CLASS_NAMES)
        lines.append(f"| {name} `{record['weights_sha256'][:12]}` | {dice} | {record['mean_dice']['mean']:.3f} "
                     f"| {pq} |")
    return "\n".join(lines)


def update_card() -> None:
    """Rewrite the card's tables between BEGIN and END from EVAL_JSON (and EARLIER_JSON where present)."""
    record = json.loads(EVAL_JSON.read_text())
    text = card_tables(record)
    earlier = [(name, json.loads(path.read_text())) for name, path in EARLIER_JSON if path.is_file()]
    if earlier:
        text += "\n\nEarlier shipped weights on the same phantoms, same path:\n\n"
        text += comparison_table([*earlier, ("current", record)])
    card = CARD.read_text()
    if BEGIN not in card or END not in card:
        raise SystemExit(f"{CARD} has no {BEGIN} … {END} markers")
    head, rest = card.split(BEGIN, 1)
    CARD.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="candidate weights (default: the embedded ones)")
    parser.add_argument("--out", type=Path, default=EVAL_JSON)
    parser.add_argument("--card-only", action="store_true", help="only rewrite the card's tables from the JSON")
    args = parser.parse_args()
    if args.card_only:
        update_card()
        return
    torch.set_num_threads(1)  # the default model is small; one thread is fastest on a shared 2-core machine
    results = []
    with tempfile.TemporaryDirectory(prefix="emseg-eval-default-") as workdir:
        for case in CASES:
            results.append(score_case(Path(workdir), case, args.weights))
            print(json.dumps(results[-1]), flush=True)
    dice = {name: float(np.mean([r["dice"][name] for r in results])) for name in CLASS_NAMES}
    dice["mean"] = float(np.mean([dice[name] for name in CLASS_NAMES]))
    pq = {name: float(np.mean([r["pq"][name] for r in results])) for name in CLASS_NAMES}
    weights = args.weights.read_bytes() if args.weights else default_weights_path().read_bytes()
    record = {"model": default_model_name(), "weights_sha256": hashlib.sha256(weights).hexdigest(),
              "path": f"segment_volume(model={default_model_name()!r}, backend={BACKEND!r}) with the runtime's "
                      "defaults",
              "machine": machine_record("cpu"),
              "total_segment_seconds": round(sum(r["seconds"] for r in results), 1),
              "mean_dice": dice, "mean_pq": pq, "cases": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(card_tables(record))
    if args.out.resolve() == EVAL_JSON.resolve() and args.weights is None:
        update_card()


if __name__ == "__main__":
    main()
