"""Train the embedded default model `scsam-phantom` on synthetic phantoms (reproducible, four stages).

Stage 1 (from random init; the first shipped run):

    python scripts/train_default.py --stage 1 --out stage1.pt   # 3500 steps, 12 phantoms 24×256×256, lr 1e-3

Stages 2 to 5 (fine-tune; stage 5's best is the shipped weights):

    python scripts/train_default.py --stage 2 --init stage1.pt --out stage2.pt  # varied phantoms, nucleus crops
    python scripts/train_default.py --stage 3 --init stage2.pt --out stage3.pt  # the same data, lr 1e-4, BCE 2
    python scripts/train_default.py --stage 4 --init stage3.pt --threads 2 --out stage4.pt  # + pixel refinement
    python scripts/train_default.py --stage 5 --init stage4.pt --threads 2      # + cubes, every axis, end to end

What it does (and what the model card reports):
- data, stage 1: 12 phantoms from seeds 1000.. (24×256×256, noise drawn in [0.6, 1.6], anisotropy in
  {1, 1.5, 2}), uniform random 128² crops of z-slices with flips and 90° rotations.
- data, stage 2: 20 phantoms from seeds 1100.. of varied sizes (24×256×256, 16×320×448, 12×384×384,
  8×512×512: the larger ones have nuclei wider than a tile), noise in [0.5, 1.8], anisotropy in
  {1, 1.5, 2, 2.5}; a quarter of each batch is crops centred on a random nucleus pixel, so crops that lie
  entirely inside a nucleus are common (the first model never saw one and left tile-sized holes inside
  large nuclei); mild intensity augmentation (contrast, brightness, gamma) on a quarter of the crops.
- validation: phantoms 900 (16×256×256, 4 slices) and 901 (8×512×512, 2 slices, a nucleus wider than a
  tile), segmented by `emseg_rt.runtime.slab.segment_array` (the runtime's tiler and torch backend).
  Seeds 0–99 (tests, demo), 2000–2006 (scripts/eval_default.py's held-out set) and 3000–3003
  (benchmarks/quality_3d.py) are never used here.
- model: `scsam-phantom` (emseg_rt/models/default_model.py); no pretrained encoders exist here, so the SAM
  and MAE encoders are trained too: end to end, all parameters.
- loss: ScSAM eq. 9, 0.2·L_cos + L_NTX + L_Dice, plus a per-pixel BCE term (weight 1; 2 in stage 3) that makes training
  from scratch converge faster (ScSAM trains heads on frozen pretrained encoders and needs none).
- stage 3: stage 2's phantoms, crops and augmentation, lr 1e-4, BCE weight 2, 1,500 steps.
- stage 4: the config's pixel refinement (`PixelRefineConfig`: a pixel encoder and a residual on the logits at
  full resolution, its last convolution zero) added to stage 3's weights and trained alone, everything else
  frozen; stage 3's data, crops and BCE weight, lr 2e-3, 1,500 steps; the loss's Dice and BCE terms are
  summed over the decoder's and the refined logits (only the refined ones have a gradient here).
- stage 5: end to end again (every parameter), lr 1e-4, 2,000 steps, BCE weight 2, on stage 2's phantoms plus
  20 near-cubes (`CUBES`: seeds 1200.., 64×160×160, 56×192×192, 64×128×224, noise in [0.5, 1.8], three in four
  isotropic). In a cube the nucleus ends inside the volume, and its z-caps (small double-membraned discs in xy)
  were called mitochondria; training phantoms 24 slices deep never showed one. A quarter of each batch is runtime
  tiles (`emseg_rt.training.sampling.runtime_tile`): the tiler's own cut of a random plane, with its reflect
  padding, along z for every phantom and along y or x too for the isotropic ones, the planes `--planes
  xy,xz,yz` feeds the model. Validation adds phantom 902 (64×160×160, 6 slices).
- optimiser: Adam, lr 1e-3 (stage 1, ScSAM §4.2), 3e-4 (stage 2), 1e-4 (stages 3, 5) or 2e-3 (stage 4)
  (stages 2-5: after a linear warm-up of 100 steps), cosine decay to 1% of it over the steps;
  batch 8; gradient norm clipped to 1; torch.manual_seed(0), one intra-op thread (`--threads 2` in stages 4, 5).
- keeps the weights of the best validation mean Dice (checked every `--val-every` steps), written to
  `--out` at every improvement (a run stopped early leaves its best so far), plus a JSON training record
  (loss curve and validation scores) next to the model card. Stage 1's validation was seed 900 alone.
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

from emseg_rt.data.phantom import NUCLEUS, generate_phantom
from emseg_rt.metrics import evaluate
from emseg_rt.models import build
from emseg_rt.models.default_model import DEFAULT_MODEL, WEIGHTS_FILE
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.slab import segment_array
from emseg_rt.training.losses import scsam_loss
from emseg_rt.training.sampling import TileSampler, runtime_tile

_VARIED = (1100, [(24, 256, 256), (16, 320, 448), (12, 384, 384), (8, 512, 512)], (0.5, 1.8), (1.0, 1.5, 2.0, 2.5))
STAGES = {  # stage → (first training seed, phantom shapes cycled through, noise range, anisotropies, lr, steps, BCE)
    1: (1000, [(24, 256, 256)], (0.6, 1.6), (1.0, 1.5, 2.0), 1e-3, 3500, 1.0),
    2: (*_VARIED, 3e-4, 2000, 1.0),
    3: (*_VARIED, 1e-4, 1500, 2.0),
    4: (*_VARIED, 2e-3, 1500, 2.0),  # the pixel refinement alone, on stage 3's frozen weights
    5: (*_VARIED, 1e-4, 2000, 2.0),  # end to end, stage 2's phantoms plus CUBES, runtime tiles of every axis
}
# stage 5's extra phantoms: (first seed, shapes cycled, noise range, anisotropies): near-cubes whose nuclei end
# inside the volume (their z-caps look like mitochondria in xy) and whose xz / yz planes are isotropic
CUBES = (1200, [(64, 160, 160), (56, 192, 192), (64, 128, 224)], (0.5, 1.8), (1.0, 1.0, 1.0, 1.5))
REFINEMENT_KEYS = ("encoders.pixel_encoder.", "head.refiner.")  # new in stage 4: absent from older weights
VALIDATION = [(900, (16, 256, 256), slice(2, 16, 4)), (901, (8, 512, 512), slice(2, 8, 3))]
VALIDATION_CUBE = (902, (64, 160, 160), slice(4, 64, 10))  # stage 5 on: a cube, nucleus caps included


class StageTwoSampler(TileSampler):
    """TileSampler plus nucleus-centred crops and mild intensity augmentation.

    nucleus_fraction: share of each batch cropped around a random nucleus pixel of a random slice that has
    one (the crop is shifted to lie inside the slice); augment_fraction: share of crops whose grey values
    get a random contrast (×0.8–1.25 about the crop mean), brightness (±12) and gamma (0.8–1.25).
    """

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], tile: int, seed: int = 0,
                 nucleus_fraction: float = 0.25, augment_fraction: float = 0.25) -> None:
        super().__init__(volumes, tile, seed)
        self.nucleus_fraction, self.augment_fraction = nucleus_fraction, augment_fraction
        # (volume index, z) of every slice with nucleus in it
        self.nucleus_slices = [(v, z) for v, (_, labels) in enumerate(volumes)
                               for z in range(labels.shape[0]) if (labels[z] == NUCLEUS).any()]

    def _nucleus_crop(self) -> tuple[np.ndarray, np.ndarray]:
        v, z = self.nucleus_slices[int(self.rng.integers(len(self.nucleus_slices)))]
        image, truth = self.volumes[v]
        ys, xs = np.nonzero(truth[z] == NUCLEUS)
        k = int(self.rng.integers(len(ys)))
        t = self.tile
        y = int(np.clip(ys[k] - t // 2, 0, image.shape[1] - t))
        x = int(np.clip(xs[k] - t // 2, 0, image.shape[2] - t))
        return image[z, y:y + t, x:x + t], truth[z, y:y + t, x:x + t]

    def _augment(self, crop: np.ndarray) -> np.ndarray:
        grey = crop.astype(np.float32)
        mean = float(grey.mean())
        grey = (grey - mean) * self.rng.uniform(0.8, 1.25) + mean + self.rng.uniform(-12.0, 12.0)
        grey = 255.0 * (np.clip(grey, 0.0, 255.0) / 255.0) ** self.rng.uniform(0.8, 1.25)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """→ tiles (B, 1, T, T) uint8 and labels (B, T, T) uint8; the first round(B·nucleus_fraction)
        crops are nucleus-centred."""
        tiles, labels = super().sample(batch)
        n_nucleus = int(round(batch * self.nucleus_fraction)) if self.nucleus_slices else 0
        for i in range(batch):
            if i < n_nucleus:
                crop, crop_labels = self._nucleus_crop()
                k = int(self.rng.integers(4))
                tiles[i, 0] = torch.from_numpy(np.ascontiguousarray(np.rot90(crop, k)))
                labels[i] = torch.from_numpy(np.ascontiguousarray(np.rot90(crop_labels, k)))
            if self.rng.random() < self.augment_fraction:
                tiles[i, 0] = torch.from_numpy(self._augment(tiles[i, 0].numpy()))
        return tiles, labels


class StageFiveSampler(StageTwoSampler):
    """StageTwoSampler plus runtime tiles: a share of each batch (after the nucleus crops) is one tile of the
    runtime's own plan (`emseg_rt.training.sampling.runtime_tile`: reflect padding at the plane's edges) of a
    random plane: xy of any volume, xz or yz as well of isotropic ones (what `--planes xy,xz,yz` feeds the
    model)."""

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], tile: int, isotropic: list[bool],
                 seed: int = 0, runtime_fraction: float = 0.25) -> None:
        super().__init__(volumes, tile, seed)
        self.isotropic, self.runtime_fraction = isotropic, runtime_fraction

    def _runtime_tile(self) -> tuple[np.ndarray, np.ndarray]:
        v = int(self.rng.integers(len(self.volumes)))
        image, truth = self.volumes[v]
        axis = int(self.rng.integers(3)) if self.isotropic[v] else 0
        return runtime_tile(image, truth, axis, int(self.rng.integers(image.shape[axis])), self.tile, self.rng)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """→ tiles (B, 1, T, T) uint8 and labels (B, T, T) uint8: nucleus crops, then runtime tiles, then
        random crops."""
        tiles, labels = super().sample(batch)
        first = int(round(batch * self.nucleus_fraction)) if self.nucleus_slices else 0
        for i in range(first, min(batch, first + int(round(batch * self.runtime_fraction)))):
            crop, crop_labels = self._runtime_tile()
            k = int(self.rng.integers(4))
            crop, crop_labels = np.rot90(crop, k), np.rot90(crop_labels, k)
            if self.rng.random() < self.augment_fraction:
                crop = self._augment(np.ascontiguousarray(crop))
            tiles[i, 0] = torch.from_numpy(np.ascontiguousarray(crop))
            labels[i] = torch.from_numpy(np.ascontiguousarray(crop_labels))
        return tiles, labels


def make_phantoms(seed0: int, shapes: list, noise_range: tuple, anisotropies: tuple, count: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """`count` phantoms [(image, labels, anisotropy)] from seeds seed0.., shapes cycled, noise and anisotropy
    drawn from `rng`."""
    phantoms = []
    for i in range(count):
        noise = float(rng.uniform(*noise_range))
        anisotropy = float(rng.choice(list(anisotropies)))
        p = generate_phantom(shapes[i % len(shapes)], seed=seed0 + i, noise=noise, anisotropy=anisotropy)
        phantoms.append((p.image, p.labels, anisotropy))
    return phantoms


def make_training_volumes(stage: int, count: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The stage's training phantoms [(image, labels, anisotropy)]: `count` from the stage's seeds (the draws
    from rng(0), as every stage made them), and from stage 5 on `count` CUBES too (drawn from rng(1))."""
    phantoms = make_phantoms(*STAGES[stage][:4], count, np.random.default_rng(0))
    if stage >= 5:
        phantoms += make_phantoms(*CUBES, count, np.random.default_rng(1))
    return phantoms


def validate(model: torch.nn.Module, step: int, phantoms: list) -> dict:
    """Mean Dice of each validation phantom through the runtime's tiler and torch backend, and their mean.
    The backend freezes and patches the module it wraps, so it gets a copy; the model is left as it is."""
    validator = TorchBackend(copy.deepcopy(model), model_id=f"step-{step}")
    scores = {}
    for seed, phantom, slices in phantoms:
        pred = segment_array(validator, phantom.image[slices], batch=16)
        scores[seed] = evaluate(pred, phantom.labels[slices], instance_metrics=False)
    validator.close()
    return {"dice": {seed: s.dice for seed, s in scores.items()},
            "mean_dice": float(np.mean([s.mean_dice for s in scores.values()]))}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), default=2)
    parser.add_argument("--init", type=Path, default=None, help="weights to start from (the previous stage's)")
    parser.add_argument("--steps", type=int, default=None, help="default: 3500, 2000, 1500, 1500, 2000 (stages 1-5)")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3, 3e-4, 1e-4, 2e-3, 1e-4 (stages 1-5)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--phantoms", type=int, default=None, help="default: 12 (stage 1), 20 (stages 2-5; stage 5 adds as many cubes)")
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bce-weight", type=float, default=None, help="default: 1, 1, 2, 2, 2 (stages 1-5)")
    parser.add_argument("--out", type=Path, default=REPO / "emseg_rt" / "weights" / WEIGHTS_FILE)
    parser.add_argument("--record", type=Path, default=None,
                        help="default: models/scsam-phantom.training.json (stage 1), .stage<N>.training.json")
    args = parser.parse_args()
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such file")  # before the phantoms are generated
    args.steps = args.steps or STAGES[args.stage][5]
    args.lr = args.lr or STAGES[args.stage][4]
    args.bce_weight = STAGES[args.stage][6] if args.bce_weight is None else args.bce_weight
    args.phantoms = args.phantoms or (12 if args.stage == 1 else 20)
    args.record = args.record or REPO / "models" / ("scsam-phantom.training.json" if args.stage == 1
                                                    else f"scsam-phantom.stage{args.stage}.training.json")
    return args


def make_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then cosine decay of the learning rate to 1% of its start."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s - warmup, steps) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_parameters(model: torch.nn.Module, stage: int) -> list[torch.nn.Parameter]:
    """Every parameter, except in stage 4: the pixel refinement's only (the rest frozen, so no gradient flows
    through the encoders: a probe that also fine-tuned them for 1,000 steps scored no better)."""
    if stage != 4:
        return list(model.parameters())
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(REFINEMENT_KEYS))
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def load_init(model: torch.nn.Module, path: Path) -> None:
    """Load the previous stage's weights; weights from before stage 4 lack only the pixel refinement (which
    then starts as built: its last convolution zero, the identity on the decoder's logits)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    other = [key for key in missing if not key.startswith(REFINEMENT_KEYS)]
    if unexpected or other:
        raise SystemExit(f"{path} does not fit {DEFAULT_MODEL}: unexpected {unexpected[:3]}, missing {other[:3]}")


def save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    training = make_training_volumes(args.stage, args.phantoms)
    volumes, isotropic = [(image, labels) for image, labels, _ in training], [a == 1.0 for *_, a in training]
    validation = VALIDATION + ([VALIDATION_CUBE] if args.stage >= 5 else [])
    phantoms = [(seed, generate_phantom(shape, seed=seed), slices) for seed, shape, slices in validation]
    phantom_seconds = round(time.time() - t0, 1)
    print(f"phantoms ready in {phantom_seconds:.0f}s", flush=True)

    model = build(DEFAULT_MODEL)
    if args.init:
        load_init(model, args.init)
    tile = model.config.tile
    sampler = (TileSampler(volumes, tile, seed=0) if args.stage == 1 else
               StageTwoSampler(volumes, tile, seed=0) if args.stage < 5 else
               StageFiveSampler(volumes, tile, isotropic, seed=0))
    optimizer = torch.optim.Adam(trainable_parameters(model, args.stage), lr=args.lr)
    schedule = make_schedule(optimizer, args.steps, 0 if args.stage == 1 else 100)
    record = {"model": DEFAULT_MODEL, "args": {k: str(v) for k, v in vars(args).items()},
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "phantom_seconds": phantom_seconds, "log": [], "validation": []}
    if args.init:
        record["validation"].append({"step": 0, **validate(model, 0, phantoms)})
        print("VAL", json.dumps(record["validation"][-1]), flush=True)
    train(model, sampler, optimizer, schedule, args, phantoms, record)


def train(model, sampler, optimizer, schedule, args, phantoms, record) -> None:
    """The training loop; writes `args.out` at every validation improvement and `args.record` every time."""
    best = (record["validation"][-1]["mean_dice"] if record["validation"] else -1.0, 0)
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
            entry = {"step": step, "seconds": round(time.time() - start, 1),
                     **{k: round(v, 4) for k, v in running.items()}}
            record["log"].append(entry)
            print(json.dumps(entry), flush=True)
        if step % args.val_every == 0 or step == args.steps:
            entry = {"step": step, "seconds": round(time.time() - start, 1), **validate(model, step, phantoms)}
            record["validation"].append(entry)
            print("VAL", json.dumps(entry), flush=True)
            if entry["mean_dice"] > best[0]:
                best = (entry["mean_dice"], step)
                save(model.state_dict(), args.out)
            record["train_seconds"] = round(time.time() - start, 1)
            record["best"] = {"step": best[1], "mean_dice": best[0]}
            args.record.parent.mkdir(parents=True, exist_ok=True)
            args.record.write_text(json.dumps(record, indent=1))
    print(f"done: best val mean Dice {best[0]:.4f} at step {best[1]}; {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
