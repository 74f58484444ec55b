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

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.checkpoint import load_error_detail
from emseg_rt.training.cache import EmbeddingCache, build_cache, check_cache_path
from emseg_rt.training.losses import COS_WEIGHT, LossTerms, scsam_loss

STATE_SUFFIX = ".state"


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


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename; EmsegError (one line) when the file cannot be written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # torch.save reports an unopenable or full file as RuntimeError
        tmp.unlink(missing_ok=True)
        detail = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        raise EmsegError(f"cannot write {path} ({detail}); choose a writable --out with free space") from None


def check_out(out: Path, state_path: Path, resume: bool, what: str = "training") -> None:
    """The --out / --resume rules every trainer shares: a new run refuses an existing `out`, a resume needs
    its `state_path`, and the folder must exist and be writable (one-line EmsegError each)."""
    if out.exists() and not resume:
        raise EmsegError(f"{out} exists; pass --resume to continue that run or choose another --out")
    if resume and not state_path.exists():
        raise EmsegError(f"--resume: no {what} state {state_path} next to {out}; start without --resume")
    if not out.parent.exists():
        raise EmsegError(f"output folder {out.parent} does not exist")
    check_writable(out.parent, "--out")


def check_writable(folder: Path, what: str) -> None:
    """EmsegError naming `what` when no file can be created in `folder` (read-only filesystem, permissions)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".emseg-rt-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EmsegError(f"{what} {folder}: cannot write there ({exc.strerror or exc}); choose a writable "
                         "location") from None


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


def read_resume_state(state_path: Path, keys: dict[str, type], command: str) -> dict:
    """Read a `--resume` state with torch.load(weights_only=True) and check that `keys` hold values of their
    types; EmsegError (one line) for a file `command` did not write (foreign, corrupt, or a pickle that would
    run code)."""
    foreign = f"--resume: {state_path} is not a {command.split()[-1]}ing state written by `{command}`"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure to unpickle safely is a bad file, reported in one line
        raise EmsegError(f"{foreign} ({load_error_detail(exc)}); start a new --out") from None
    if not isinstance(state, dict):
        raise EmsegError(f"{foreign} (holds a {type(state).__name__}); start a new --out")
    wrong = [key for key, kind in keys.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise EmsegError(f"{foreign} (missing or wrong: {', '.join(wrong)}); start a new --out")
    return state


def check_same_run(state: dict, model: str, data: str, settings: dict[str, Any], state_path: Path,
                   hint: str = "--stop-after ends a run early") -> None:
    """Refuse a `--resume` whose model, data or any setting differs from the state's, naming what differs."""
    if state["model"] != model:
        raise EmsegError(f"--resume: {state_path} belongs to model {state['model']}, not {model}; start a new --out")
    if state["data"] != data:
        raise EmsegError(f"--resume: {state_path} was trained on other --data volumes; pass the same ones or "
                         "start a new --out")
    changed = [f"{k} {state['settings'].get(k)!r} → {v!r}" for k, v in settings.items()
               if state["settings"].get(k) != v]
    if changed:
        raise EmsegError(f"--resume: {state_path} was written with other settings ({'; '.join(changed)}); resume "
                         f"with the same ones ({hint})")


def restore_error(exc: BaseException, state_path: Path, what: str) -> EmsegError:
    """The one-line error for a state whose tensors do not load into `what` (another size, a damaged file)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EmsegError(f"--resume: {state_path} does not fit {what} ({detail[:200]}); start a new --out")


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


def train_head(
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    *,
    sources: list[str] | None = None,
    cache_path: str | Path | None = None,
    steps: int = 1000,
    batch: int = 8,
    lr: float = 1e-3,
    cos_weight: float = COS_WEIGHT,
    checkpoint_every: int = 100,
    resume: bool = False,
    seed: int = 0,
    on_step: Callable[[int, int, LossTerms], None] | None = None,
    on_cache: Callable[[int, int], None] | None = None,
    embed_fn: Callable | None = None,
    embed_identity: str | None = None,
) -> TrainReport:
    """Train `model.head` on image (Z, Y, X) uint8 / labels (Z, Y, X) uint8 over cached embeddings.

    out:       head checkpoint path (see module docstring); refuses to replace one unless `resume`.
    resume:    continue from out + '.state' (same model and data) up to `steps`.
    on_step:   called as on_step(step, steps, loss_terms) after every optimiser step.
    embed_fn, embed_identity: compute the cache with something other than the torch encoders
               (see `cache.package_embedder`).
    """
    check_trainable(model)
    out = Path(out)
    state_path = out.with_name(out.name + STATE_SUFFIX)
    labels = check_training_data(image, labels, model.config.num_classes, model.config.name)
    tile = model.config.tile
    if min(image.shape[1:]) < tile:
        raise EmsegError(f"slices {image.shape[1:]} are smaller than {model.config.name}'s tile {tile}")
    if steps < 1 or batch < 1 or checkpoint_every < 1:
        raise EmsegError("--steps, --batch and --checkpoint-every must be >= 1")
    check_out(out, state_path, resume)
    cache_path = check_cache_path(Path(cache_path) if cache_path else out.with_name(out.name + ".cache.zarr"))
    if cache_path.parent.is_dir():
        check_writable(cache_path.parent, "--cache")
    state = load_training_state(state_path) if resume else None  # before the slow cache: a bad file fails fast

    sources = sources or [hashlib.sha256(image.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest()]
    cache: EmbeddingCache = build_cache(cache_path, model, image, labels, sources, embed_fn=embed_fn,
                                        on_progress=on_cache, embed_identity=embed_identity)

    for p in model.encoders.parameters():
        p.requires_grad_(False)
    head = model.head
    head.train()
    device = next(head.parameters()).device  # the model's device: `train --device` moved it there
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start_step = 0
    losses: list[dict[str, float]] = []
    if state is not None:
        if state["model"] != model.config.name or state["cache_key"] != cache.key:
            raise EmsegError(f"--resume: {state_path} belongs to another model or data set; start a new --out")
        try:
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise restore_error(exc, state_path, f"{model.config.name}'s head") from None
        start_step, losses = state["step"], list(state["losses"])

    def save(step: int) -> None:
        atomic_save(head_state(model), out)
        atomic_save({"model": model.config.name, "cache_key": cache.key, "step": step,
                      "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                      "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "losses": losses},
                     state_path)

    began = time.perf_counter()
    interval: list[dict[str, float]] = []
    for step in range(start_step + 1, steps + 1):
        indices = rng.choice(len(cache), size=min(batch, len(cache)), replace=False)
        embeddings, truth = cache.batch(indices, device)
        terms = scsam_loss(head, embeddings, truth, cos_weight=cos_weight)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        interval.append(terms.as_floats())
        if on_step is not None:
            on_step(step, steps, terms)
        if step % checkpoint_every == 0 or step == steps:
            losses.append({"step": step, **{k: float(np.mean([d[k] for d in interval])) for k in interval[0]}})
            interval = []
            save(step)
    if start_step >= steps:
        save(start_step)
    return TrainReport(model=model.config.name, steps=steps, start_step=start_step,
                       seconds=time.perf_counter() - began, losses=losses, checkpoint=str(out),
                       cache=str(cache_path), tiles=len(cache))


def report_json(report: TrainReport) -> str:
    return json.dumps(report.__dict__, indent=2)
