"""SAMDA's three training steps (Wang & Xiao §2.2, §3.2) for samda-* pipelines.

| recipe          | data                                  | trains                  | loss                          |
|-----------------|---------------------------------------|-------------------------|-------------------------------|
| `samda-source`  | labelled source volumes               | U-Net + projector       | L_ce + L_dice (eq. 1)         |
| `samda-uda`     | unlabelled source and target volumes  | projector (U-Net frozen)| L_feat + L_style (eqs. 2–5)   |
| `samda-fewshot` | N annotated target slices             | U-Net + projector       | L_ce + L_dice (eq. 1)         |

The SAM-type encoder is frozen in every step (§3.2: "the parameters of the SAM ViT encoder are frozen"), so
the "SAM-based adaptation module" φ_s that step 2 adapts is encoder + projector, and φ_s(x) is the projection
that is concatenated at the bottleneck. Eq. 3: L_feat = ‖φ_s(s) − φ_s(t)‖²/(CHW); eq. 4: G_ij = Σ_hw φ_i φ_j /
(CHW); eq. 5: L_style = ‖G(s) − G(t)‖² (squared Frobenius norm), both averaged over the batch of (s, t) pairs,
L_perceptual = L_feat + L_style (eq. 2, unit weights). Optimiser: nnU-Net's SGD (momentum 0.99, Nesterov) with
the paper's initial learning rates (1e-2 for steps 1–2, 1e-3 for step 3), weight decay 3e-5 and nnU-Net's
polynomial decay (power 0.9).

Files written for `out` (CKPT), as the other trainers: CKPT holds the whole pipeline's state dict (the next step
loads it with `--checkpoint CKPT`), CKPT.state everything an exact resume needs; both rewritten atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.checks import check_number, check_seed
from emseg_rt.errors import EmsegError
from emseg_rt.models.checkpoint import state_dict_digest
from emseg_rt.progress import Say
from emseg_rt.training.loop import (
    LossRecord,
    Schedule,
    check_out,
    check_same_run,
    config_digest,
    cpu_state_dict,
    read_resume_state,
    restoring,
    run_loop,
    volumes_digest,
)
from emseg_rt.training.prompt_das import WindowSampler, check_volumes, poly_lr
from emseg_rt.training.sampling import TileSampler
from emseg_rt.training.trainer import check_training_data

STATE_FORMAT = "emseg-rt samda train state 1"
WEIGHT_DECAY = 3e-5  # SAMDA §3.2 (nnU-Net's default)
MOMENTUM = 0.99  # nnU-Net's SGD, Nesterov
DICE_SMOOTH = 1e-5  # nnU-Net's soft Dice smoothing


@dataclass(frozen=True)
class Recipe:
    """One SAMDA step: what it trains, on what, with which loss and initial learning rate."""

    name: str
    lr: float
    trains: tuple[str, ...]  # submodules of the head that get gradients
    loss: str  # "dce" (Dice + cross-entropy on labels) or "perceptual" (source/target pairs)


RECIPES = {
    "samda-source": Recipe("samda-source", 1e-2, ("unet", "projector"), "dce"),  # §2.2 step 1; §3.2 lr 1e-2
    "samda-uda": Recipe("samda-uda", 1e-2, ("projector",), "perceptual"),  # step 2: U-Net frozen; lr 1e-2
    "samda-fewshot": Recipe("samda-fewshot", 1e-3, ("unet", "projector"), "dce"),  # step 3; lr 1e-3
}
STATE_KEYS = {"format": str, "model": str, "recipe": str, "data": str, "settings": dict, "step": int, "head": dict,
              "optimizer": dict, "rng": dict, "torch_rng": torch.Tensor, "losses": list}


@dataclass(frozen=True)
class SamdaConfig:
    """The settings of one SAMDA step's run (`emseg-rt train samda-* --recipe ...`)."""

    steps: int = 250  # ours: the run's and the poly schedule's length
    batch: int = 4  # ours
    lr: float | None = None  # None: the paper's initial rate for the step (Recipe.lr)
    checkpoint_every: int = 50  # steps between checkpoints (and loss records)
    stop_after: int | None = None  # end after this step (≤ steps) with everything saved; resume continues exactly
    resume: bool = False  # continue from CKPT.state (same model, data and settings)
    seed: int = 0

    def __post_init__(self) -> None:  # numbers checked before anything is read or written (nan, inf, <= 0)
        if self.lr is not None:
            check_number(self.lr, "--lr", above=0)
        check_seed(self.seed)


@dataclass
class SamdaReport:
    model: str
    recipe: str
    steps: int
    start_step: int
    end_step: int
    seconds: float
    losses: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str = ""


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise EmsegError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def few_shot_slices(depth: int, shots: int) -> list[int]:
    """Indices of `shots` annotated slices spread evenly over a volume of `depth` slices (SAMDA step 3)."""
    if not 1 <= shots <= depth:
        raise EmsegError(f"--shots {shots}: must be between 1 and the volume's {depth} slices")
    return sorted({int(round(z)) for z in np.linspace(0, depth - 1, shots)})


# ------------------------------------------------------------------------------------------------ losses


def dice_ce_loss(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """nnU-Net's Dice + cross-entropy (SAMDA eq. 1) on the U-Net's scores.

    scores (B, K+1, T, T) float softmax logits (background first), labels (B, T, T) integer 0..K.
    returns {'ce', 'dice', 'total'}: dice = 1 − mean over classes 1..K of the batch soft Dice of the softmax.
    """
    ce = F.cross_entropy(scores, labels.long())
    probs = scores.softmax(dim=1)[:, 1:]
    truth = F.one_hot(labels.long(), scores.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    dice = 1.0 - ((2 * (probs * truth).sum(dims) + DICE_SMOOTH) / (probs.sum(dims) + truth.sum(dims) + DICE_SMOOTH)
                  ).mean()
    return {"ce": ce, "dice": dice, "total": ce + dice}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """SAMDA eq. 4: features (B, C, H, W) → Gram matrices (B, C, C), G_ij = Σ_hw φ_i φ_j / (C·H·W)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def perceptual_loss(source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """SAMDA eqs. 2–5 on paired projections φ_s(s), φ_s(t), each (B, C, H, W) float.

    returns {'feat': mean over pairs of ‖φ(s) − φ(t)‖²/(CHW), 'style': mean over pairs of ‖G(s) − G(t)‖²_F,
    'total': feat + style}.
    """
    feat = (source - target).square().mean(dim=(1, 2, 3)).mean()
    style = (gram_matrix(source) - gram_matrix(target)).square().sum(dim=(1, 2)).mean()
    return {"feat": feat, "style": style, "total": feat + style}


# ------------------------------------------------------------------------------------------------ steps


def _as_tiles(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, T, T) or (B, 1, T, T) uint8 → (B, 1, T, T) uint8 tensor on `device`."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return tensor if tensor.ndim == 4 else tensor.unsqueeze(1)


class _Batches:
    """Draws a step's batch: labelled tiles (TileSampler) or (source, target) raw pairs (WindowSampler)."""

    def __init__(self, rng: np.random.Generator, tile: int, volumes: Sequence[Any], labels: Sequence[Any] | None,
                 target: Sequence[Any]) -> None:
        self.labelled = None
        self.source = self.target = None
        if labels is not None:
            self.labelled = TileSampler([(np.asarray(v), np.asarray(lab)) for v, lab in zip(volumes, labels)], tile)
            self.labelled.rng = rng  # one generator for every draw: its state is the resume state
        else:
            self.source = WindowSampler(volumes, None, tile, rng)
            self.target = WindowSampler(target, None, tile, rng)

    def loss(self, pipeline: nn.Module, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        head = pipeline.head
        if self.labelled is not None:
            tiles, labels = self.labelled.sample(batch)
            with torch.no_grad():
                embeddings = pipeline.embed(tiles.to(device))
            return dice_ce_loss(head.class_scores(**embeddings), labels.to(device))
        source, _ = self.source.sample(batch)
        target, _ = self.target.sample(batch)
        with torch.no_grad():
            sam = pipeline.embed(_as_tiles(np.concatenate([source, target]), device))["sam_embedding"]
        projected = head.projector(sam)
        return perceptual_loss(projected[:batch], projected[batch:])


def _check_data(pipeline: nn.Module, step: Recipe, volumes: Sequence[Any], labels: Sequence[Any] | None,
                target: Sequence[Any]) -> list[Any] | None:
    """One-line EmsegErrors for data the step cannot use; returns the labels as uint8 volumes (or None)."""
    config = pipeline.config
    if step.loss == "dce":
        if labels is None:
            raise EmsegError(f"{step.name} trains on annotated slices: give labels with the volumes")
        check_volumes(volumes, labels, config.tile, "--data")
        return [check_training_data(np.asarray(v), np.asarray(lab), config.num_classes, config.name)
                for v, lab in zip(volumes, labels)]
    check_volumes(volumes, None, config.tile, "--data (source)")
    check_volumes(target, None, config.tile, "--target")
    return None


def _trainable(pipeline: nn.Module, step: Recipe) -> list[nn.Parameter]:
    """Freeze everything but the step's head parts; returns their parameters."""
    pipeline.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name in step.trains:
        part = getattr(pipeline.head, name)
        part.requires_grad_(True)
        params += list(part.parameters())
    return params


class _SamdaRecipe:
    """One SAMDA step: SGD (nnU-Net's, Nesterov) with poly decay on the step's head parts; the frozen
    encoders stay in eval mode (MobileSAM's BatchNorm statistics must not move)."""

    def __init__(self, pipeline: nn.Module, step: Recipe, config: SamdaConfig, lr: float,
                 data: tuple[Sequence[Any], list[Any] | None, Sequence[Any]], identity: tuple[str, dict]) -> None:
        self.pipeline, self.recipe, self.config, self.lr, (self.data, self.fingerprint) = (
            pipeline, step, config, lr, identity)
        self.device = next(pipeline.parameters()).device
        params = _trainable(pipeline, step)
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.batches = _Batches(self.rng, pipeline.config.tile, *data)

    def restore(self, state: dict, state_path: Path) -> None:
        with restoring(state_path, f"{self.pipeline.config.name}'s head"):
            self.pipeline.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])

    def step(self, at: int) -> LossRecord:
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(at - 1, self.config.steps, self.lr)
        terms = self.batches.loss(self.pipeline, self.config.batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def record(self, terms: LossRecord) -> LossRecord:
        return terms

    def status(self, record: LossRecord) -> str:
        return " ".join(f"{k} {v:.4f}" for k, v in record.items())

    def weights(self) -> dict[str, torch.Tensor]:
        return cpu_state_dict(self.pipeline)

    def state(self, at: int, losses: list[LossRecord]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "model": self.pipeline.config.name, "recipe": self.recipe.name,
                "data": self.data, "settings": self.fingerprint, "step": at, "head": self.pipeline.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "losses": losses}


def train_samda(
    pipeline: nn.Module,
    recipe_name: str,
    out: str | Path,
    config: SamdaConfig | None = None,
    *,
    volumes: Sequence[Any],
    labels: Sequence[Any] | None = None,
    target: Sequence[Any] = (),
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    say: Say | None = None,
    quiet: bool = True,
    **settings: Any,
) -> SamdaReport:
    """Run one SAMDA step on a samda-* pipeline in place (see the module docstring).

    volumes, labels: (Z, Y, X) uint8 images and integer label volumes 0..K: the source for `samda-source`,
                     the N annotated target slices for `samda-fewshot` (`few_shot_slices`); for `samda-uda`
                     the unlabelled source volumes (labels ignored).
    target:          `samda-uda`: unlabelled target volumes.
    config:          the run's settings (`SamdaConfig`); `settings` (its field names: steps=..., resume=...)
                     replace single fields of it.
    on_step:         on_step(step, steps, loss terms as floats) after every optimiser step.
    say, quiet:      progress (`emseg_rt.progress`): a bar on a terminal, lines through `say` in logs; none when
                     quiet.
    """
    config = dataclasses.replace(config or SamdaConfig(), **settings)
    model = pipeline.config
    if getattr(model, "samda", None) is None:
        raise EmsegError(f"model {model.name} is not a SAMDA model; --recipe {recipe_name} trains samda-* models")
    step = recipe(recipe_name)
    lr = step.lr if config.lr is None else float(config.lr)
    stop = config.steps if config.stop_after is None else config.stop_after
    if config.steps < 1 or config.batch < 1 or config.checkpoint_every < 1 or not lr > 0:
        raise EmsegError("--steps, --batch and --checkpoint-every must be >= 1 and --lr > 0")
    if not 1 <= stop <= config.steps:
        raise EmsegError(f"--stop-after must be between 1 and --steps ({config.steps}), got {config.stop_after}")
    labels = _check_data(pipeline, step, volumes, labels if step.loss == "dce" else None, target)
    out = Path(out)
    state_path = check_out(out, config.resume)
    state = read_resume_state(state_path, STATE_KEYS, "emseg-rt train") if config.resume else None
    data = volumes_digest([*volumes, *(labels or []), *target])
    fingerprint = {"recipe": step.name, "steps": config.steps, "batch": config.batch, "lr": lr, "seed": config.seed,
                   "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM,
                   "encoders": state_dict_digest(pipeline.encoders),  # the frozen weights the run started from
                   "config": config_digest(model)}
    if state is not None:
        check_same_run(state, model.name, data, fingerprint, state_path)
    runner = _SamdaRecipe(pipeline, step, config, lr, (volumes, labels, target), (data, fingerprint))
    if state is not None:
        runner.restore(state, state_path)
    was_training = pipeline.training
    pipeline.eval()  # frozen encoders stay in eval mode (MobileSAM's BatchNorm statistics must not move)
    pipeline.head.train()
    schedule = Schedule(step.name, config.steps, stop, config.checkpoint_every, config.checkpoint_every)
    result = run_loop(runner, schedule, out, state, on_step=on_step, say=say, quiet=quiet)
    pipeline.train(was_training)
    pipeline.requires_grad_(False)
    return SamdaReport(model=model.name, recipe=step.name, steps=config.steps, start_step=result.start,
                       end_step=result.end, seconds=result.seconds, losses=result.losses, checkpoint=str(out))
