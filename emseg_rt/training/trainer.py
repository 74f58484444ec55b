"""Head training for the ScSAM family over cached embeddings (ScSAM §3, §4.2, eq. 9).

The encoders are frozen; FAFM, the class prompt encoder and the SAM mask decoder are trained with
L = λ·L_cos + L_NTX + L_Dice (λ = 0.2) and Adam (lr 1e-3).

Files written for `--out CKPT`:
- CKPT: the head's weights (`head.*` keys), loadable with `build(name, checkpoint=[encoders..., CKPT])`;
  rewritten atomically at every checkpoint, so it always holds a complete state dict.
- CKPT.state: the training state (step, head, optimizer, sampler RNG, loss history) for `--resume`,
  read back with `torch.load(weights_only=True)` (tensors and plain containers only: a crafted pickle is
  refused, never run) and checked field by field before anything is restored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emseg_rt.checks import check_number, check_seed
from emseg_rt.errors import EmsegError
from emseg_rt.io.outputs import check_writable
from emseg_rt.progress import Progress, Say
from emseg_rt.training.cache import EmbeddingCache, EmbedFn, build_cache, check_cache_path
from emseg_rt.training.losses import COS_WEIGHT, LossTerms, scsam_loss
from emseg_rt.training.loop import (
    LossRecord,
    Schedule,
    check_out,
    read_resume_state,
    restoring,
    run_loop,
)


@dataclass(frozen=True)
class HeadTrainConfig:
    """The settings of one head-training run (`emseg-rt train scsam-*`).

    cache_path: the embedding cache (None: CKPT.cache.zarr); sources: strings naming the data in the cache key
    (None: sha256 of the image and label bytes).
    """

    steps: int = 1000  # optimiser steps in total; a resume continues up to this
    batch: int = 8  # ours: tiles per step
    lr: float = 1e-3  # ScSAM §4.2: Adam, 1e-3
    cos_weight: float = COS_WEIGHT  # ScSAM eq. 9: λ = 0.2
    checkpoint_every: int = 100  # steps between checkpoints (and loss records)
    resume: bool = False  # continue from CKPT.state (same model and data)
    seed: int = 0  # batch sampling
    cache_path: str | Path | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # numbers checked before anything is read or written (nan, inf, < 0)
        check_number(self.lr, "--lr", above=0)
        check_number(self.cos_weight, "--cos-weight", at_least=0)
        check_seed(self.seed)


@dataclass
class TrainReport:
    """What a training run did: steps, losses (mean per logging interval), time, files."""

    model: str
    steps: int
    start_step: int
    seconds: float
    losses: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str = ""
    cache: str = ""
    tiles: int = 0


STATE_KEYS = {"model": str, "cache_key": str, "step": int, "head": dict, "optimizer": dict, "rng": dict,
              "torch_rng": torch.Tensor, "losses": list}


def check_training_data(image: np.ndarray, labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Refuse training data the trainer would silently misread; returns labels as uint8.

    image:  (Z, Y, X) uint8 intensities (the encoders' input; a float volume, NaN or not, is refused).
    labels: (Z, Y, X) integer class ids 0..num_classes (0 = background).
    """
    if image.shape != labels.shape:
        raise EmsegError(f"image {image.shape} and labels {labels.shape} have different shapes")
    if image.ndim != 3:
        raise EmsegError(f"training data must be a 3D volume (Z, Y, X), got shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise EmsegError(f"training image has NaN or infinite values (dtype {image.dtype}); train needs "
                             "uint8 intensities")
        raise EmsegError(f"training image has dtype {image.dtype}; train needs uint8 intensities (0-255) — "
                         "convert the volume first")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise EmsegError(f"labels have dtype {labels.dtype}; they must be integer class ids 0..{num_classes}")
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise EmsegError(f"labels hold negative values (down to {low}); class ids are 0..{num_classes}")
        if high > num_classes:
            raise EmsegError(f"labels go up to {high} but {name} has {num_classes} classes")
    return labels.astype(np.uint8, copy=False)


def load_training_state(state_path: Path) -> dict:
    """The head trainer's `--resume` state (`read_resume_state` with its keys)."""
    return read_resume_state(state_path, STATE_KEYS, "emseg-rt train")


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's parameters and buffers under their pipeline names (`head.*`), on the CPU (a file trained on a
    GPU loads anywhere)."""
    return {f"head.{k}": v.detach().to("cpu", copy=True) for k, v in model.head.state_dict().items()}


def check_trainable(model: nn.Module) -> None:
    head = model.head
    if not hasattr(head, "fusion") or not hasattr(head.fusion, "fafm"):
        raise EmsegError(
            f"model {model.config.name} has no FAFM head; `train` trains the ScSAM family (e.g. scsam-tiny, "
            "scsam-vit-b, scsam-phantom)"
        )


class _HeadRecipe:
    """ScSAM eq. 9 on the head over cached embeddings: Adam, batches drawn by one numpy Generator (the
    encoders are frozen and never run: their embeddings come from the cache)."""

    def __init__(self, model: nn.Module, cache: EmbeddingCache, config: HeadTrainConfig) -> None:
        for p in model.encoders.parameters():
            p.requires_grad_(False)
        self.model, self.cache, self.config, self.head = model, cache, config, model.head
        self.head.train()
        self.device = next(self.head.parameters()).device  # the model's device: `train --device` moved it there
        self.optimizer = torch.optim.Adam([p for p in self.head.parameters() if p.requires_grad], lr=config.lr)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)

    def restore(self, state: dict, state_path: Path) -> None:
        if state["model"] != self.model.config.name or state["cache_key"] != self.cache.key:
            raise EmsegError(f"--resume: {state_path} belongs to another model or data set; start a new --out")
        with restoring(state_path, f"{self.model.config.name}'s head"):
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])

    def step(self, at: int) -> LossTerms:
        indices = self.rng.choice(len(self.cache), size=min(self.config.batch, len(self.cache)), replace=False)
        embeddings, truth = self.cache.batch(indices, self.device)
        terms = scsam_loss(self.head, embeddings, truth, cos_weight=self.config.cos_weight)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        return terms

    def record(self, terms: LossTerms) -> LossRecord:
        return terms.as_floats()

    def status(self, record: LossRecord) -> str:
        return (f"loss {record['total']:.3f} (cos {record['cos']:.3f} ntx {record['ntx']:.3f} "
                f"dice {record['dice']:.3f})")

    def weights(self) -> dict[str, torch.Tensor]:
        return head_state(self.model)

    def state(self, at: int, losses: list[LossRecord]) -> dict[str, Any]:
        return {"model": self.model.config.name, "cache_key": self.cache.key, "step": at,
                "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "losses": losses}


def _embedding_cache(model: nn.Module, image: np.ndarray, labels: np.ndarray, path: Path, sources: list[str],
                     on_cache: Callable[[int, int], None] | None, embedder: tuple[EmbedFn, str] | None,
                     say: Say | None, quiet: bool) -> EmbeddingCache:
    """`build_cache` with its progress ('embedding cache', in tiles; no line when a matching cache is reused)."""
    progress = Progress("embedding cache", None, unit="tiles", say=say, enabled=not quiet)

    def on_progress(done: int, total: int) -> None:
        progress.update(done, total=total)
        if on_cache is not None:
            on_cache(done, total)

    embed_fn, embed_identity = embedder if embedder is not None else (None, None)
    try:
        cache = build_cache(path, model, image, labels, sources, embed_fn=embed_fn, on_progress=on_progress,
                            embed_identity=embed_identity)
    except BaseException:
        progress.close(said=False)
        raise
    progress.close(said=progress.total is not None)
    return cache


def train_head(
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    config: HeadTrainConfig | None = None,
    *,
    on_step: Callable[[int, int, LossTerms], None] | None = None,
    on_cache: Callable[[int, int], None] | None = None,
    embedder: tuple[EmbedFn, str] | None = None,
    say: Say | None = None,
    quiet: bool = True,
    **settings: Any,
) -> TrainReport:
    """Train `model.head` on image (Z, Y, X) uint8 / labels (Z, Y, X) uint8 over cached embeddings.

    out:       head checkpoint path (see module docstring); refuses to replace one unless `resume`.
    config:    the run's settings (`HeadTrainConfig`); `settings` (its field names: steps=..., resume=...)
               replace single fields of it.
    on_step:   called as on_step(step, steps, loss_terms) after every optimiser step.
    on_cache:  on_cache(tiles embedded, tiles) while the embedding cache is built.
    embedder:  (embed_fn, identity): compute the cache with something other than the torch encoders
               (`cache.package_embedder`).
    say, quiet: progress (`emseg_rt.progress`): a bar on a terminal, lines through `say` in logs; none when quiet.
    """
    config = dataclasses.replace(config or HeadTrainConfig(), **settings)
    check_trainable(model)
    out = Path(out)
    labels = check_training_data(image, labels, model.config.num_classes, model.config.name)
    tile = model.config.tile
    if min(image.shape[1:]) < tile:
        raise EmsegError(f"slices {image.shape[1:]} are smaller than {model.config.name}'s tile {tile}")
    if config.steps < 1 or config.batch < 1 or config.checkpoint_every < 1:
        raise EmsegError("--steps, --batch and --checkpoint-every must be >= 1")
    state_path = check_out(out, config.resume)
    cache_path = check_cache_path(Path(config.cache_path) if config.cache_path else
                                  out.with_name(out.name + ".cache.zarr"))
    if cache_path.parent.is_dir():
        check_writable(cache_path.parent, "--cache")
    state = load_training_state(state_path) if config.resume else None  # before the slow cache: fails fast

    sources = list(config.sources) if config.sources else [hashlib.sha256(image.tobytes()).hexdigest(),
                                                           hashlib.sha256(labels.tobytes()).hexdigest()]
    cache = _embedding_cache(model, image, labels, cache_path, sources, on_cache, embedder, say, quiet)
    recipe = _HeadRecipe(model, cache, config)
    if state is not None:
        recipe.restore(state, state_path)
    schedule = Schedule("training", config.steps, config.steps, config.checkpoint_every, config.checkpoint_every)
    result = run_loop(recipe, schedule, out, state, on_step=on_step, say=say, quiet=quiet)
    return TrainReport(model=model.config.name, steps=config.steps, start_step=result.start, seconds=result.seconds,
                       losses=result.losses, checkpoint=str(out), cache=str(cache_path), tiles=len(cache))


def report_json(report: TrainReport) -> str:
    return json.dumps(report.__dict__, indent=2)
