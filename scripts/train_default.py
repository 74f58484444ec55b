"""Train the embedded default model `scsam-phantom` from scratch on synthetic phantoms (reproducible).

What it does (and what the model card reports):
- data: training phantoms from seeds 1000.. (shape 24×256×256, noise drawn in [0.6, 1.6], anisotropy in
  {1, 1.5, 2}); validation phantom seed 900; seeds 0–99 are never used in training (tests, demo, card).
- model: `scsam-phantom` (emseg_rt/models/default_model.py), random init; no pretrained encoders exist
  here, so the SAM and MAE encoders are trained too: end-to-end, all parameters.
- loss: ScSAM eq. 9, 0.2·L_cos + L_NTX + L_Dice, plus a per-pixel BCE term (weight 1) that makes
  training from scratch converge faster (ScSAM trains heads on frozen pretrained encoders and needs none).
- optimiser: Adam lr 1e-3 (ScSAM §4.2), cosine decay to 1e-5 over the steps; batch 8 random 128² crops
  with flips and 90° rotations; torch.manual_seed(0).
- keeps the weights of the best validation mean Dice (checked every `--val-every` steps; validation runs
  `emseg_rt.runtime.slab.segment_array`, the runtime's tiler and torch backend) and writes
  them to emseg_rt/weights/scsam-phantom.pt, plus a JSON training record next to the model card.

    python scripts/train_default.py            # the shipped run: --steps 3500 --threads 1 (≈30 min, 2-core EPYC)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.metrics import evaluate
from emseg_rt.models import build
from emseg_rt.models.default_model import DEFAULT_MODEL, WEIGHTS_FILE
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.slab import segment_array
from emseg_rt.training.losses import scsam_loss
from emseg_rt.training.sampling import TileSampler

TRAIN_SEED0 = 1000
VAL_SEED = 900


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--phantoms", type=int, default=12)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bce-weight", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "emseg_rt" / "weights" / WEIGHTS_FILE)
    parser.add_argument("--record", type=Path, default=REPO / "models" / "scsam-phantom.training.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.time()
    volumes = []
    for i in range(args.phantoms):
        noise = float(rng.uniform(0.6, 1.6))
        anisotropy = float(rng.choice([1.0, 1.5, 2.0]))
        p = generate_phantom((24, 256, 256), seed=TRAIN_SEED0 + i, noise=noise, anisotropy=anisotropy)
        volumes.append((p.image, p.labels))
    val = generate_phantom((16, 256, 256), seed=VAL_SEED, noise=1.0, anisotropy=1.0)
    val_slices = slice(2, 16, 4)  # 4 slices
    print(f"phantoms ready in {time.time() - t0:.0f}s", flush=True)

    model = build(DEFAULT_MODEL)
    sampler = TileSampler(volumes, model.config.tile, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    record = {"model": DEFAULT_MODEL, "args": {k: str(v) for k, v in vars(args).items()},
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "log": [], "validation": []}
    best = (-1.0, None, 0)
    start = time.time()
    running: dict[str, float] = {}
    for step in range(1, args.steps + 1):
        model.train()
        tiles, labels = sampler.sample(args.batch)
        terms = scsam_loss(model.head, model.embed(tiles), labels, bce_weight=args.bce_weight)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        for k, v in terms.as_floats().items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if step % 50 == 0:
            elapsed = time.time() - start
            entry = {"step": step, "seconds": round(elapsed, 1), **{k: round(v, 4) for k, v in running.items()}}
            record["log"].append(entry)
            print(json.dumps(entry), flush=True)
        if step % args.val_every == 0 or step == args.steps:
            # Validate through the runtime's tiler and torch backend (what `segment` runs). The backend freezes
            # and patches the module it wraps, so it gets a copy; the model being trained is left as it is.
            validator = TorchBackend(copy.deepcopy(model), model_id=f"step-{step}")
            pred = segment_array(validator, val.image[val_slices], batch=16)
            validator.close()
            scores = evaluate(pred, val.labels[val_slices], instance_metrics=False)
            entry = {"step": step, "seconds": round(time.time() - start, 1), "dice": scores.dice,
                     "mean_dice": scores.mean_dice}
            record["validation"].append(entry)
            print("VAL", json.dumps(entry), flush=True)
            if scores.mean_dice > best[0]:
                best = (scores.mean_dice, copy.deepcopy(model.state_dict()), step)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.out.with_suffix(".tmp")
                torch.save(best[1], tmp)
                tmp.replace(args.out)
        record["train_seconds"] = round(time.time() - start, 1)
        record["best"] = {"step": best[2], "mean_dice": best[0]}
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=1))
    print(f"done: best val mean Dice {best[0]:.4f} at step {best[2]}; {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
