"""Masked pretraining of a MAESTER / HiS4MAE FOV encoder on unlabelled volumes (HiS4MAE §4.2, Table 2).

Every epoch draws `samples_per_epoch` fresh FOVs (`FovSampler`), trains the `MaskedPretrainer` with AdamW and
a per-step cosine learning rate with linear warm-up, updates the EMA teacher after every step and refreshes
the isolated codebook vectors (eq. 6) after every epoch.

Files written for `--out CKPT`:
- CKPT: the STUDENT encoder's weights under the pipeline's keys (`encoders.fov_encoder.vit.*`), so
  `build(name, checkpoint=CKPT)` loads them; rewritten atomically at every checkpoint.
- CKPT.state: everything an exact resume needs (epoch, student, teacher, codebook, decoder, usage counts,
  optimizer, numpy and torch RNG states, per-epoch losses, model name, data digest and settings), read back
  with `torch.load(weights_only=True)` and checked field by field. A resume with another model, other data
  or other settings is refused. Resuming gives bit-identical weights to an uninterrupted run (on the CPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emseg_rt.checks import check_number, check_seed
from emseg_rt.errors import EmsegError
from emseg_rt.models.masked_pretrain import MaskedPretrainer
from emseg_rt.progress import Say
from emseg_rt.training.loop import (
    LossRecord,
    Schedule,
    check_out,
    check_same_run,
    config_digest,
    read_resume_state,
    restoring,
    run_loop,
    volumes_digest,
)

STATE_FORMAT = "emseg-rt pretrain state 1"
CROP_MARGIN = 1.25  # ours: the random crop takes the FOV out of a window 1.25× its side (where the plane allows)
ADAMW_BETAS = (0.9, 0.95)  # MAE's pretraining betas
PLANES = ("z", "y", "x")  # the axis a FOV is perpendicular to: z → a (Y, X) plane, y → (Z, X), x → (Z, Y)
NO_DECAY_NAMES = ("pos_embed", "mask_token", "codebook")  # besides biases and norms (MAE / timm convention)


@dataclass
class PretrainReport:
    """What a pretraining run did: epochs, per-epoch mean losses, time, files."""

    model: str
    kind: str
    epochs: int
    start_epoch: int
    end_epoch: int
    steps: int
    seconds: float
    losses: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str = ""
    state: str = ""


@dataclass(frozen=True)
class PretrainSettings:
    """The numbers a resumed run must share with the run it continues (defaults: the model's config)."""

    epochs: int
    samples_per_epoch: int
    batch: int
    lr: float
    min_lr: float
    warmup_epochs: int
    weight_decay: float
    seed: int

    def batch_sizes(self) -> list[int]:
        """The batches of one epoch: full ones, then the remainder (the epoch has exactly samples_per_epoch FOVs)."""
        full, rest = divmod(self.samples_per_epoch, self.batch)
        return [self.batch] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class PretrainConfig:
    """The settings of one pretraining run (`emseg-rt pretrain`); None: the model's `config.pretrain` (HiS4MAE
    Table 2 at paper size). `epochs` is the length of the cosine schedule."""

    epochs: int | None = None
    samples_per_epoch: int | None = None
    batch: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: int | None = None
    weight_decay: float | None = None
    checkpoint_every_epochs: int = 1
    stop_after: int | None = None  # end after this epoch (≤ epochs) with everything saved; resume continues
    resume: bool = False  # continue from CKPT.state (same model, data and settings)
    seed: int = 0  # initial decoder and codebook, FOV sampling, masks

    def __post_init__(self) -> None:  # numbers checked before anything is read or written (nan, inf, < 0)
        for value, option, low in ((self.lr, "--lr", None), (self.min_lr, "the minimum lr", 0.0),
                                   (self.weight_decay, "the weight decay", 0.0)):
            if value is not None:
                check_number(value, option, above=0 if low is None else None, at_least=low)
        check_seed(self.seed)


def check_volume(volume: Any, name: str) -> None:
    """Refuse a training volume the sampler would misread: it must be (Z, Y, X) uint8."""
    shape, dtype = tuple(getattr(volume, "shape", ())), getattr(volume, "dtype", None)
    if len(shape) != 3:
        raise EmsegError(f"{name}: pretraining needs a 3D volume (Z, Y, X), got shape {shape}")
    if np.dtype(dtype) != np.uint8:
        raise EmsegError(f"{name}: dtype {dtype}; pretraining needs uint8 intensities (0-255), convert it first")


class FovSampler:
    """Random FOVs from uint8 volumes (HiS4MAE §4.2): a random volume (weighted by its usable voxels), a random
    plane orientation among those the volume is large enough for (z, y or x), a random window of
    min(1.25·F, plane) per side, a random F×F crop of it, and random vertical / horizontal flips.

    volumes: (Z, Y, X) uint8 numpy arrays or array-likes that slice (zarr, dask).
    rng:     the numpy Generator every choice comes from (its state is the sampler's state).
    """

    def __init__(self, volumes: Sequence[Any], field_of_view: int, rng: np.random.Generator,
                 names: Sequence[str] | None = None) -> None:
        names = list(names) if names is not None else [f"volume {i}" for i in range(len(volumes))]
        if not volumes:
            raise EmsegError("pretraining needs at least one --data volume")
        self.volumes = list(volumes)
        self.fov = field_of_view
        self.rng = rng
        self.planes: list[list[int]] = []
        for volume, name in zip(self.volumes, names):
            check_volume(volume, name)
            fits = [axis for axis in range(3) if min(np.delete(volume.shape, axis)) >= field_of_view]
            if not fits:
                raise EmsegError(f"{name}: shape {tuple(volume.shape)} has no plane of at least "
                                 f"{field_of_view}×{field_of_view} (the model's field of view); use a larger volume")
            self.planes.append(fits)
        sizes = np.array([float(np.prod(v.shape)) for v in self.volumes])
        self.weights = sizes / sizes.sum()

    def sample(self, count: int) -> np.ndarray:
        """`count` random FOVs → (count, 1, F, F) uint8."""
        return np.stack([self._one() for _ in range(count)])[:, None]

    def _one(self) -> np.ndarray:
        index = int(self.rng.choice(len(self.volumes), p=self.weights))
        volume, axis = self.volumes[index], int(self.rng.choice(self.planes[index]))
        plane_shape = np.delete(volume.shape, axis)  # (rows, cols) of the plane
        window = [min(int(round(CROP_MARGIN * self.fov)), int(side)) for side in plane_shape]
        depth = int(self.rng.integers(volume.shape[axis]))
        row, col = (int(self.rng.integers(side - w + 1)) for side, w in zip(plane_shape, window))
        region = [slice(row, row + window[0]), slice(col, col + window[1])]
        region.insert(axis, depth)  # type: ignore[arg-type]
        patch = np.asarray(volume[tuple(region)])  # (window rows, window cols)
        top, left = (int(self.rng.integers(w - self.fov + 1)) for w in window)
        fov = patch[top : top + self.fov, left : left + self.fov]
        if self.rng.random() < 0.5:
            fov = fov[::-1]
        if self.rng.random() < 0.5:
            fov = fov[:, ::-1]
        return np.ascontiguousarray(fov, dtype=np.uint8)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up to `lr` over `warmup_steps`, then cosine
    decay to `min_lr` at the last step (MAE's schedule, per step instead of per fractional epoch)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(pretrainer: MaskedPretrainer, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; none on biases, norms, position embeddings, the mask
    token and the codebook. The teacher (no gradient) is left out."""
    decay, no_decay = [], []
    for name, parameter in pretrainer.named_parameters():
        if not parameter.requires_grad:
            continue
        plain = parameter.ndim <= 1 or any(part in name for part in NO_DECAY_NAMES)
        (no_decay if plain else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def student_checkpoint(pretrainer: MaskedPretrainer) -> dict[str, torch.Tensor]:
    """The student's weights under the pipeline's keys (`encoders.fov_encoder.vit.*`), on the CPU."""
    return {f"encoders.fov_encoder.{k}": v.detach().cpu().clone() for k, v in pretrainer.student.state_dict().items()}


STATE_KEYS = {"format": str, "model": str, "data": str, "settings": dict, "epoch": int, "step": int,
              "pretrainer": dict, "optimizer": dict, "rng": dict, "torch_rng": torch.Tensor,
              "torch_global_rng": torch.Tensor, "losses": list}


def load_pretrain_state(state_path: Path) -> dict:
    """Read a `--resume` state (`loop.read_resume_state`) and check its format; EmsegError (one line) for a
    file `emseg-rt pretrain` did not write."""
    state = read_resume_state(state_path, STATE_KEYS, "emseg-rt pretrain")
    if state["format"] != STATE_FORMAT:
        raise EmsegError(f"--resume: {state_path} is not a pretraining state written by `emseg-rt pretrain` "
                         "(format); start a new --out")
    return state


def schedule_line(model: str, numbers: PretrainSettings, start: int, stop: int) -> str:
    """The line `pretrain` says before the first epoch: what the run will do, and that its duration follows, e.g.
    'pretraining his4mae-tiny: epochs 1..2800 of 2800, 512 FOVs each in 8 steps of ≤ 64; the time it takes
    follows the first epochs when it is a minute or more (--epochs or --stop-after for a shorter run)'."""
    steps, largest = len(numbers.batch_sizes()), max(numbers.batch_sizes())
    return (f"pretraining {model}: epochs {start + 1}..{stop} of {numbers.epochs}, {numbers.samples_per_epoch} FOVs "
            f"each in {steps} steps of ≤ {largest}; the time it takes follows the first epochs when it is a minute "
            "or more (--epochs or --stop-after for a shorter run)")


def _settings(pipeline: nn.Module, config: PretrainConfig) -> PretrainSettings:
    """The run's numbers: `config`'s, the model's `config.pretrain` where it gives None (checked)."""
    model = pipeline.config.pretrain
    defaults = {"epochs": model.epochs, "samples_per_epoch": model.samples_per_epoch, "batch": model.batch_size,
                "lr": model.lr, "min_lr": model.min_lr, "warmup_epochs": model.warmup_epochs,
                "weight_decay": model.weight_decay, "seed": 0}
    given = dataclasses.asdict(config)
    settings = PretrainSettings(**{k: v if given.get(k) is None else given[k] for k, v in defaults.items()})
    if min(settings.epochs, settings.samples_per_epoch, settings.batch) < 1 or settings.warmup_epochs < 0:
        raise EmsegError("--epochs, --samples-per-epoch and --batch must be >= 1 (warm-up epochs >= 0)")
    if not (settings.lr > 0 and 0 <= settings.min_lr <= settings.lr):
        raise EmsegError(f"--lr must be > 0 and at least the minimum lr {settings.min_lr}, got {settings.lr}")
    return settings


class _PretrainRecipe:
    """One epoch per unit: `settings.batch_sizes()` AdamW steps (lr set per step, EMA teacher after each),
    then the isolated codebook vectors refreshed (eq. 6). The decoder and codebook start from the seed."""

    def __init__(self, pipeline: nn.Module, sampler: FovSampler, settings: PretrainSettings, fingerprint: dict,
                 data: str) -> None:
        self.name, self.settings, self.fingerprint, self.data = pipeline.config.name, settings, fingerprint, data
        self.sampler, self.rng = sampler, sampler.rng
        self.student = pipeline.encoders["fov_encoder"].requires_grad_(True)  # inference may have turned it off
        device = next(self.student.parameters()).device
        with torch.random.fork_rng(devices=[]):  # decoder and codebook start from `seed`, the global RNG untouched
            torch.manual_seed(settings.seed)
            self.pretrainer = MaskedPretrainer(pipeline.config, self.student).to(device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.pretrainer, settings.weight_decay), lr=settings.lr,
                                           betas=ADAMW_BETAS)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.steps_done = 0

    def restore(self, state: dict, state_path: Path) -> None:
        with restoring(state_path, "this model"):
            self.pretrainer.load_state_dict(state["pretrainer"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            self.generator.set_state(state["torch_rng"])
            torch.set_rng_state(state["torch_global_rng"])
        self.steps_done = state["step"]

    def step(self, at: int) -> LossRecord:
        record, self.steps_done = _train_epoch(self.pretrainer, self.optimizer, self.sampler, self.generator,
                                               self.settings, self.steps_done)
        return record

    def record(self, terms: LossRecord) -> LossRecord:
        return terms

    def status(self, record: LossRecord) -> str:
        return epoch_status(record)

    def weights(self) -> dict[str, torch.Tensor]:
        return student_checkpoint(self.pretrainer)

    def state(self, at: int, losses: list[LossRecord]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "model": self.name, "data": self.data, "settings": self.fingerprint,
                "epoch": at, "step": self.steps_done, "pretrainer": self.pretrainer.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": self.generator.get_state(), "torch_global_rng": torch.get_rng_state(),
                "losses": losses}


def epoch_status(record: LossRecord) -> str:
    """One epoch's losses in a line: `loss 1.1323 (recon 1.1311 tea 1.0956 stu 0.7411)`."""
    return (f"loss {record['total']:.4f} (recon {record['recon']:.4f} tea {record['tea']:.4f} "
            f"stu {record['stu']:.4f})")


def _train_epoch(pretrainer: MaskedPretrainer, optimizer: torch.optim.Optimizer, sampler: FovSampler,
                 generator: torch.Generator, settings: PretrainSettings, step: int) -> tuple[dict[str, float], int]:
    """One epoch of steps (lr set per step, EMA after each), then eq. 6 → (mean losses and lr, next step)."""
    sizes = settings.batch_sizes()
    total_steps, warmup_steps = settings.epochs * len(sizes), settings.warmup_epochs * len(sizes)
    device = next(pretrainer.student.parameters()).device
    records = []
    for size in sizes:
        lr = cosine_lr(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = pretrainer(torch.from_numpy(sampler.sample(size)).to(device), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        pretrainer.update_teacher()
        step += 1
        records.append(terms.as_floats())
    weights = np.asarray(sizes, dtype=np.float64)
    means = {key: float(np.average([r[key] for r in records], weights=weights)) for key in records[0]}
    return {**means, "lr": lr, "refreshed_codes": pretrainer.refresh_isolated_codes(generator)}, step


def pretrain(
    pipeline: nn.Module,
    volumes: Sequence[Any],
    out: str | Path,
    config: PretrainConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    say: Say | None = None,
    quiet: bool = True,
    **settings: Any,
) -> PretrainReport:
    """Pretrain `pipeline.encoders["fov_encoder"]` in place on FOVs drawn from `volumes`.

    volumes:    (Z, Y, X) uint8 arrays (numpy or array-likes); `names` names them in error messages.
    config:     the run's settings (`PretrainConfig`); `settings` (its field names: epochs=..., resume=...)
                replace single fields of it.
    on_epoch:   on_epoch(epoch, epochs, mean losses of the epoch) after every epoch (and its checkpoint).
    say, quiet: progress (`emseg_rt.progress`): a bar on a terminal, lines through `say` in logs; none when quiet.
    The training runs on the student's device; exact resume is guaranteed on the CPU.
    """
    config = dataclasses.replace(config or PretrainConfig(), **settings)
    model = pipeline.config
    if model.pretrain is None or model.fov_encoder is None:
        raise EmsegError(f"model {model.name} has no masked pretraining; `emseg-rt pretrain` is for the "
                         "maester-* and his4mae-* models (ScSAM-family heads: `emseg-rt train`)")
    numbers = _settings(pipeline, config)
    stop = numbers.epochs if config.stop_after is None else config.stop_after
    if not 1 <= stop <= numbers.epochs or config.checkpoint_every_epochs < 1:
        raise EmsegError(f"--stop-after must be between 1 and --epochs ({numbers.epochs}), "
                         "--checkpoint-every at least 1")
    out = Path(out)
    state_path = check_out(out, config.resume, "pretraining")
    sampler = FovSampler(volumes, model.fov_encoder.field_of_view, np.random.default_rng(numbers.seed), names)
    state = load_pretrain_state(state_path) if config.resume else None
    data = volumes_digest(volumes)
    fingerprint = {**dataclasses.asdict(numbers), "config": config_digest(model)}
    if state is not None:
        check_same_run(state, model.name, data, fingerprint, state_path,
                       "the schedule spans --epochs; --stop-after ends early")
    recipe = _PretrainRecipe(pipeline, sampler, numbers, fingerprint, data)
    if state is not None:
        recipe.restore(state, state_path)
    was_training = recipe.student.training
    recipe.pretrainer.train()
    schedule = Schedule("pretraining", numbers.epochs, stop, config.checkpoint_every_epochs, 1, unit="epoch")
    if say is not None and not quiet:
        say(schedule_line(model.name, numbers, state[schedule.unit] if state is not None else 0, stop))
    result = run_loop(recipe, schedule, out, state, on_step=on_epoch, say=say, quiet=quiet)
    recipe.student.train(was_training)
    return PretrainReport(model=model.name, kind=model.pretrain.kind, epochs=numbers.epochs,
                          start_epoch=result.start, end_epoch=result.end, steps=recipe.steps_done,
                          seconds=result.seconds, losses=result.losses, checkpoint=str(out), state=str(state_path))
