"""Training for the Prompt-DAS family (Chen, Xiong & Peng, §2 eqs. 1–3; details in docs/train_prompt_das.md).

Every step draws `batch` labelled source windows (T×T, random 90° rotation and flips), their centre points
(centroids of the mask's connected components, snapped into the component as the Prompt-DAS code does),
a peak-normalised Gaussian density at the centres, and a random subset of the centres as positive point
prompts (padded with −1 to P). The whole pipeline (encoder, prompt encoder, decoder, both heads) is trained
with AdamW and the paper's polynomial learning-rate decay (power 0.9) on

    L = w_dice·Dice + w_bce·BCE (segmentation, eq. 2's CE; Dice is ours) + w_density·MSE (density, eq. 1)

and, with `mean_teacher`, on unlabelled target windows as well (UDA, Prompt-DAS (0%)): an EMA teacher
predicts on the weakly augmented window (rotation / flips only), its density's local maxima (NMS) above a
threshold become the pseudo centre points (→ pseudo density d̂ᵗ and the student's prompts) and its
prompted segmentation the pseudo-labels ŷᵗ; the student, on a strongly augmented copy (the same geometry
plus intensity jitter, blur and noise), is trained on them with the same loss terms. With
`contrastive_weight` > 0 the prompt-guided contrastive loss (eq. 3) is added on the target windows.

Files written for `out` (CKPT):
- CKPT: the whole pipeline's state dict (`build(name, checkpoint=CKPT)` loads it), rewritten atomically;
- CKPT.state: everything an exact resume needs (step, student, teacher, contrastive MLP φ, optimizer, numpy
  and torch RNG states, losses, model, data digest and settings), read back with
  `torch.load(weights_only=True)` and checked field by field. Resuming gives bit-identical weights (CPU).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from emseg_rt.checks import check_number, check_seed
from emseg_rt.errors import EmsegError
from emseg_rt.progress import Say
from emseg_rt.runtime.prompts import peak_points
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
from emseg_rt.training.losses import dice_loss

STATE_FORMAT = "emseg-rt prompt-das train state 1"
MITOCHONDRIA_CLASS = 2  # the phantom's label of mitochondria (emseg_rt.data.phantom.MITOCHONDRIA)
# σ of the density Gaussians in pixels. The paper gives none; the Prompt-DAS code's precomputed heatmaps
# (util/generate_heatmap.py) use gaussian_filter(σ = 10) on MitoEM; tiny (64² windows): ours, 2 px.
DENSITY_SIGMA = {"vit-s8": 10.0, "tiny": 2.0}
FALLBACK_SIGMA = 2.0
POLY_POWER = 0.9  # Prompt-DAS §3: polynomial learning-rate decay of power 0.9
PAPER_LR = 1e-5  # Prompt-DAS §3: AdamW, initial learning rate 1e-5
PAPER_BATCH = 2  # Prompt-DAS §3: batch size 2
WEIGHT_DECAY = 0.01  # not in the paper: torch's AdamW default


@dataclass(frozen=True)
class LossWeights:
    """Weights of the supervised terms (the paper weighs CE and MSE 1:1 and has no Dice: eqs. 1, 2)."""

    dice: float = 1.0  # ours (the issue asks for Dice + BCE)
    bce: float = 1.0  # eq. 2: CE, which for one class is the binary cross-entropy
    density: float = 1.0  # eq. 1: MSE on the density

    def __post_init__(self) -> None:
        for name in ("dice", "bce", "density"):
            check_number(getattr(self, name), f"the {name} loss weight", at_least=0)


@dataclass(frozen=True)
class MeanTeacher:
    """Mean-teacher adaptation on unlabelled target volumes (Prompt-DAS §2, Tarvainen & Valpola).

    targets: (Z, Y, X) uint8 volumes of the target domain (no labels: UDA, the paper's Prompt-DAS (0%)).
    """

    targets: Sequence[Any] = field(default=(), compare=False, repr=False)
    ema_decay: float = 0.99  # not in the paper: the mean-teacher paper's 0.99 (its ramp-up value)
    peak_threshold: float = 125 / 255  # Prompt-DAS code (util/point_prompt.py): heatmap ≥ 125 of 255
    nms_kernel: int = 5  # Prompt-DAS code (util/point_prompt.py): nms(kernel=5)
    foreground_confidence: float = 0.9  # Prompt-DAS §2: δ_f
    background_confidence: float = 0.1  # Prompt-DAS §2: δ_b
    background_points: int = 256  # Prompt-DAS §2: N^n
    queries_per_instance: int = 3  # Prompt-DAS §2: three points from each instance
    temperature: float = 0.5  # Prompt-DAS code (util/loss.py, token_contrast): cosine similarity / 0.5
    target_weight: float = 1.0  # eqs. 1, 2: source and target terms weigh the same

    def __post_init__(self) -> None:  # numbers checked before anything is read or written (nan, inf, range)
        check_number(self.ema_decay, "--ema-decay", at_least=0, below=1)
        check_number(self.peak_threshold, "the mean teacher's peak threshold")
        check_number(self.temperature, "the contrastive temperature", above=0)
        check_number(self.target_weight, "the target loss weight", at_least=0)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "targets"}


@dataclass(frozen=True)
class PromptDasConfig:
    """The settings of one Prompt-DAS training run (`emseg-rt train prompt-das-*`).

    sigma:           density Gaussian σ in pixels (None: DENSITY_SIGMA of the model size).
    prompt_fraction: share of each window's centres given as prompts (None: random per window, paper's n_s).
    mean_teacher:    target volumes and settings for mean-teacher adaptation (None: source only).
    class_id:        `labels == class_id` is the object mask (default 2, the phantom's mitochondria).
    """

    steps: int = 16000  # Prompt-DAS §3: 16k iterations (the run's and the poly schedule's length)
    batch: int = PAPER_BATCH
    lr: float = PAPER_LR
    sigma: float | None = None
    prompt_fraction: float | None = None
    mean_teacher: MeanTeacher | None = None
    contrastive_weight: float = 0.0  # weight of eq. 3's contrastive loss (needs mean_teacher)
    weights: LossWeights = LossWeights()
    weight_decay: float = WEIGHT_DECAY
    class_id: int = MITOCHONDRIA_CLASS
    checkpoint_every: int = 100  # steps between checkpoints (and loss records)
    stop_after: int | None = None  # end after this step (≤ steps) with everything saved; resume continues exactly
    resume: bool = False  # continue from CKPT.state (same model, data and settings)
    seed: int = 0

    def __post_init__(self) -> None:  # numbers checked before anything is read or written (nan, inf, < 0)
        check_number(self.lr, "--lr", above=0)
        if self.sigma is not None:
            check_number(self.sigma, "--sigma", above=0)
        if self.prompt_fraction is not None:
            check_number(self.prompt_fraction, "--prompt-fraction", at_least=0, at_most=1)
        check_number(self.contrastive_weight, "--contrastive-weight", at_least=0)
        check_number(self.weight_decay, "the weight decay", at_least=0)
        check_seed(self.seed)


@dataclass
class PromptDasReport:
    """What a training run did: steps, losses (mean per checkpoint interval), time, files."""

    model: str
    steps: int
    start_step: int
    end_step: int
    seconds: float
    losses: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str = ""
    state: str = ""


@dataclass
class PromptDasLossTerms:
    total: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor
    density: torch.Tensor
    target_dice: torch.Tensor
    target_bce: torch.Tensor
    target_density: torch.Tensor
    pcl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k.name: float(getattr(self, k.name).detach()) for k in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------- targets


def window_centres(mask: np.ndarray) -> np.ndarray:
    """Centre points of the objects in a window: one per connected component of `mask`.

    mask:    (T, T) bool.
    returns  (K, 2) float32 pixel (x, y), K = number of components (scipy.ndimage.label, 4-connectivity as
             the code's cv2.connectedComponents(connectivity=4)): the centroid (center_of_mass); where it
             falls outside its component (a bent tube) the component's pixel nearest to it, as the code
             (img_generate_centerpoint) does, so a centre prompt always lies on its object.
    """
    components, count = ndimage.label(mask)
    if count == 0:
        return np.zeros((0, 2), dtype=np.float32)
    centroids = ndimage.center_of_mass(mask, components, range(1, count + 1))
    centres = []
    for index, (cy, cx) in enumerate(centroids, start=1):
        y, x = int(round(cy)), int(round(cx))
        if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and components[y, x] == index):
            ys, xs = np.nonzero(components == index)
            nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            cy, cx = float(ys[nearest]), float(xs[nearest])
        centres.append((cx, cy))
    return np.asarray(centres, dtype=np.float32)


def density_target(centres: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Peak-normalised centre density: Σ_c exp(−|p − c|² / 2σ²) over the centres' pixels, clipped at 1.

    centres: (K, 2) float pixel (x, y); each is rounded to its pixel (the code's dot map d = k_σ * c).
    shape:   (T, T).
    returns  (T, T) float32 in [0, 1]: exactly 1 at every centre pixel (the code divides its blurred dot map
             by the smallest peak and clips at 1), ~0 far from all centres, 0 everywhere when K = 0.
    """
    density = np.zeros(shape, dtype=np.float64)
    if len(centres) == 0:
        return density.astype(np.float32)
    ys = np.arange(shape[0], dtype=np.float64)[:, None]
    xs = np.arange(shape[1], dtype=np.float64)[None, :]
    for x, y in np.rint(centres).astype(np.int64):
        density += np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2.0 * sigma**2))
    return np.minimum(density, 1.0).astype(np.float32)


def sample_prompts(
    centres: np.ndarray,
    max_points: int,
    fraction: float | None,
    rng: np.random.Generator,
    negatives: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of a window's centres as positive prompts, padded to P.

    centres:    (K, 2) float (x, y).
    fraction:   the share of the centres to give, round(fraction·K) of them; None: a uniformly random share
                per window (the paper's random n_s).
    negatives:  (M, 2) float (x, y) background points, appended as negative prompts after the positives.
    returns     point_coords (P, 2) float32 and point_labels (P,) int64: 1 positive, 0 negative, −1 padding
                (coordinates 0); at most P points (positives first).
    """
    share = rng.random() if fraction is None else fraction
    count = min(int(round(share * len(centres))), max_points)
    chosen = centres[rng.permutation(len(centres))[:count]] if count else np.zeros((0, 2), np.float32)
    coords = np.zeros((max_points, 2), dtype=np.float32)
    labels = np.full(max_points, -1, dtype=np.int64)
    coords[:count], labels[:count] = chosen, 1
    if negatives is not None and len(negatives):
        extra = min(len(negatives), max_points - count)
        coords[count : count + extra], labels[count : count + extra] = negatives[:extra], 0
    return coords, labels


# ------------------------------------------------------------------------------------------ data windows


def check_volumes(volumes: Sequence[Any], labels: Sequence[Any] | None, tile: int, what: str,
                  class_id: int | None = None) -> None:
    """One-line EmsegError for training data the sampler would misread; with `class_id`, also when no label
    volume holds that class (the masks would all be empty and the run would learn background only)."""
    if not volumes:
        raise EmsegError(f"{what}: give at least one volume")
    if labels is not None and len(labels) != len(volumes):
        raise EmsegError(f"{what}: {len(volumes)} volumes but {len(labels)} label volumes")
    for index, volume in enumerate(volumes):
        shape = tuple(volume.shape)
        if len(shape) != 3:
            raise EmsegError(f"{what} volume {index}: training needs (Z, Y, X), got shape {shape}")
        if np.dtype(volume.dtype) != np.uint8:
            raise EmsegError(f"{what} volume {index}: dtype {volume.dtype}; training needs uint8 intensities")
        if min(shape[1:]) < tile:
            raise EmsegError(f"{what} volume {index}: slices {shape[1:]} are smaller than the model's tile {tile}")
        if labels is not None:
            if tuple(labels[index].shape) != shape:
                raise EmsegError(f"{what} volume {index}: image {shape} and labels {tuple(labels[index].shape)} "
                                 "differ in shape")
            if not np.issubdtype(np.dtype(labels[index].dtype), np.integer):
                raise EmsegError(f"{what} volume {index}: labels have dtype {labels[index].dtype}; they must be "
                                 "integer class ids")
    if labels is not None and class_id is not None and not any((np.asarray(lab) == class_id).any() for lab in labels):
        raise EmsegError(f"{what}: no voxel of the labels has class id {class_id} (--class-id); the phantom's "
                         "mitochondria are 2")


class WindowSampler:
    """Random T×T windows of (Z, Y, X) volumes (a random slice, weighted by voxels, and a random offset), with
    a random 90° rotation and random flips; with labels, the binary mask `labels == class_id` of each.

    volumes, labels: (Z, Y, X) uint8 / integer arrays (numpy or array-likes that slice); labels may be None.
    rng:             the numpy Generator every choice comes from.
    """

    def __init__(self, volumes: Sequence[Any], labels: Sequence[Any] | None, tile: int, rng: np.random.Generator,
                 class_id: int = MITOCHONDRIA_CLASS) -> None:
        self.volumes, self.labels, self.tile, self.rng, self.class_id = list(volumes), labels, tile, rng, class_id
        sizes = np.array([float(np.prod(v.shape)) for v in self.volumes])
        self.weights = sizes / sizes.sum()

    def sample(self, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """→ tiles (count, T, T) uint8 and masks (count, T, T) bool (None without labels)."""
        tiles, masks = [], []
        for _ in range(count):
            index = int(self.rng.choice(len(self.volumes), p=self.weights))
            volume = self.volumes[index]
            z = int(self.rng.integers(volume.shape[0]))
            y, x = (int(self.rng.integers(side - self.tile + 1)) for side in volume.shape[1:])
            region = (z, slice(y, y + self.tile), slice(x, x + self.tile))
            turns, flip = int(self.rng.integers(4)), bool(self.rng.random() < 0.5)
            tiles.append(self._augment(np.asarray(volume[region]), turns, flip))
            if self.labels is not None:
                masks.append(self._augment(np.asarray(self.labels[index][region]) == self.class_id, turns, flip))
        return np.stack(tiles), (np.stack(masks) if self.labels is not None else None)

    @staticmethod
    def _augment(window: np.ndarray, turns: int, flip: bool) -> np.ndarray:
        window = np.rot90(window, turns)
        return np.ascontiguousarray(window[:, ::-1] if flip else window)


def strong_augment(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The student's strong view of target windows: the same geometry (so teacher pseudo-labels stay aligned)
    with random contrast and brightness (×[0.8, 1.2], ±20 grey levels), a Gaussian blur (σ in [0, 1] px) and
    Gaussian noise (σ up to 8 grey levels). Ours: the paper defers to WDA-Net's augmentations.

    tiles (B, T, T) uint8 → (B, T, T) uint8.
    """
    out = []
    for tile in tiles.astype(np.float64):
        tile = (tile - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-20.0, 20.0)
        tile = ndimage.gaussian_filter(tile, rng.uniform(0.0, 1.0))
        tile = tile + rng.normal(0.0, rng.uniform(0.0, 8.0), tile.shape)
        out.append(np.clip(np.rint(tile), 0, 255).astype(np.uint8))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------ losses


def supervised_terms(outputs: dict[str, torch.Tensor], masks: torch.Tensor, densities: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Dice, BCE, density MSE) of outputs (logits, density (B, 1, T, T)) against masks and densities
    (B, 1, T, T) float32."""
    logits = outputs["logits"]
    return (dice_loss(logits, masks), F.binary_cross_entropy_with_logits(logits, masks),
            F.mse_loss(outputs["density"], densities))


def pcl_loss(prompt_embeddings: torch.Tensor, query_embeddings: torch.Tensor, background_embeddings: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Prompt-guided contrastive loss of one window (Prompt-DAS eq. 3, as the code computes it).

    prompt_embeddings:     (M, N) φ-embeddings of the sparse prompts; their mean is μ^f.
    query_embeddings:      (N^q, N) z_i^t of the confident foreground queries.
    background_embeddings: (N^n, N) μ_k^b of the confident background points.
    returns  mean_i −log( exp(s(μ^f, z_i)/τ) / (exp(s(μ^f, z_i)/τ) + Σ_k exp(s(μ_k^b, z_i)/τ)) ) with s the
             cosine similarity (the code's; eq. 3 writes a dot product) and the mean over queries (eq. 3 sums:
             a constant factor). Like the code, μ^f and μ^b are targets (no gradient); the queries learn.
    """
    anchors = torch.cat([prompt_embeddings.mean(dim=0, keepdim=True), background_embeddings]).detach()
    similarity = F.cosine_similarity(query_embeddings[:, None, :], anchors[None, :, :], dim=2) / temperature
    return F.cross_entropy(similarity, similarity.new_zeros(len(query_embeddings), dtype=torch.long))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student for every parameter; buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def poly_lr(step: int, total_steps: int, lr: float) -> float:
    """Learning rate of optimiser step `step` (0-based): lr·(1 − step/total)^0.9 (Prompt-DAS §3)."""
    return lr * (1.0 - step / total_steps) ** POLY_POWER


# ------------------------------------------------------------------------------------------------ trainer


def default_sigma(pipeline: nn.Module) -> float:
    return DENSITY_SIGMA.get(pipeline.config.size, FALLBACK_SIGMA)


class _Batches:
    """Turns sampled windows into tensors: centres, densities, prompts (all from the trainer's rng)."""

    def __init__(self, pipeline: nn.Module, rng: np.random.Generator, sigma: float, prompt_fraction: float | None,
                 device: torch.device) -> None:
        self.p, self.tile, self.rng, self.sigma = pipeline.config.max_points, pipeline.config.tile, rng, sigma
        self.fraction, self.device = prompt_fraction, device

    def prompts(self, centres: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [sample_prompts(c, self.p, self.fraction, self.rng) for c in centres]
        coords = torch.from_numpy(np.stack([c for c, _ in pairs])).to(self.device)
        labels = torch.from_numpy(np.stack([label for _, label in pairs])).to(self.device)
        return coords, labels

    def densities(self, centres: list[np.ndarray]) -> torch.Tensor:
        maps = np.stack([density_target(c, (self.tile, self.tile), self.sigma) for c in centres])
        return torch.from_numpy(maps)[:, None].to(self.device)


def _tiles(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array)[:, None].to(device)


def _pcl_points(probability: np.ndarray, settings: MeanTeacher, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Foreground queries (queries_per_instance random pixels of every connected region of teacher confidence
    > δ_f) and background points (background_points random pixels of confidence < δ_b) of one window, as
    (x, y) float32 arrays."""
    components, count = ndimage.label(probability > settings.foreground_confidence)
    queries = []
    for index in range(1, count + 1):
        ys, xs = np.nonzero(components == index)
        pick = rng.choice(len(ys), size=settings.queries_per_instance, replace=len(ys) < settings.queries_per_instance)
        queries.extend(zip(xs[pick], ys[pick]))
    ys, xs = np.nonzero(probability < settings.background_confidence)
    background = []
    if len(ys):
        pick = rng.choice(len(ys), size=min(settings.background_points, len(ys)), replace=False)
        background = list(zip(xs[pick], ys[pick]))
    return np.asarray(queries, np.float32).reshape(-1, 2), np.asarray(background, np.float32).reshape(-1, 2)


def _target_terms(pipeline: nn.Module, teacher: nn.Module, projection: nn.Module | None, sampler: WindowSampler,
                  batches: _Batches, settings: MeanTeacher, batch: int, rng: np.random.Generator,
                  device: torch.device) -> tuple[torch.Tensor, ...]:
    """Mean-teacher terms on one batch of target windows → (Dice, BCE, density MSE, PCL)."""
    weak, _ = sampler.sample(batch)
    strong = strong_augment(weak, rng)
    p = pipeline.config.max_points
    with torch.no_grad():
        weak_tiles = _tiles(weak, device)
        none = torch.full((batch, p), -1, dtype=torch.long, device=device)
        detected = peak_points(teacher(weak_tiles, point_coords=torch.zeros(batch, p, 2, device=device),
                                       point_labels=none)["density"], settings.peak_threshold, settings.nms_kernel)
        # UDA: the teacher's confident points are the pseudo sparse points (prompts and density targets).
        coords, labels = batches.prompts(detected)
        teacher_out = teacher(weak_tiles, point_coords=coords, point_labels=labels)
        probability = torch.sigmoid(teacher_out["logits"])
        pseudo_masks = (probability > 0.5).float()
        pseudo_density = batches.densities(detected)
    strong_tiles = _tiles(strong, device)
    if projection is None:
        student_out = pipeline(strong_tiles, point_coords=coords, point_labels=labels)
        return (*supervised_terms(student_out, pseudo_masks, pseudo_density), strong_tiles.new_zeros((), dtype=torch.float32))
    picks = [_pcl_points(prob[0].cpu().numpy(), settings, rng) for prob in probability]
    q = max(1, max(len(fg) + len(bg) for fg, bg in picks))
    query_coords = torch.zeros(batch, q, 2, device=device)
    query_valid = torch.zeros(batch, q, dtype=torch.bool, device=device)
    for index, (fg, bg) in enumerate(picks):
        both = np.concatenate([fg, bg])
        query_coords[index, : len(both)] = torch.from_numpy(both)
        query_valid[index, : len(both)] = True
    embedding = pipeline.embed(strong_tiles)["dino_embedding"]
    student_out = pipeline.head.forward_with_queries(embedding, coords, labels, query_coords, query_valid)
    prompt_z, query_z = projection(student_out["prompt_tokens"]), projection(student_out["query_tokens"])
    losses = []
    for index, (fg, bg) in enumerate(picks):
        prompts = labels[index] == 1
        if not prompts.any() or len(fg) == 0 or len(bg) == 0:
            continue  # eq. 3 needs μ^f (sparse prompts), queries and background points
        z = query_z[index]
        losses.append(pcl_loss(prompt_z[index][prompts], z[: len(fg)], z[len(fg) : len(fg) + len(bg)],
                               settings.temperature))
    pcl = torch.stack(losses).mean() if losses else query_z.sum() * 0.0
    return (*supervised_terms(student_out, pseudo_masks, pseudo_density), pcl)


STATE_KEYS = {"format": str, "model": str, "data": str, "settings": dict, "step": int, "pipeline": dict,
              "teacher": dict, "projection": dict, "optimizer": dict, "rng": dict, "torch_rng": torch.Tensor,
              "losses": list}


def _check_same_run(state: dict, model: str, data: str, settings: dict[str, Any], state_path: Path) -> None:
    if state["format"] != STATE_FORMAT:
        raise EmsegError(f"--resume: {state_path} is not a Prompt-DAS training state (format); start a new --out")
    check_same_run(state, model, data, settings, state_path)


def _check_config(config: PromptDasConfig, sigma: float) -> int:
    """One-line EmsegErrors for settings the trainer cannot use; returns the step the run stops after."""
    if config.steps < 1 or config.batch < 1 or config.checkpoint_every < 1:
        raise EmsegError("--steps, --batch and --checkpoint-every must be >= 1")
    stop = config.steps if config.stop_after is None else config.stop_after
    if not 1 <= stop <= config.steps:
        raise EmsegError(f"--stop-after must be between 1 and --steps ({config.steps}), got {config.stop_after}")
    if not config.lr > 0 or not sigma > 0:
        raise EmsegError(f"--lr and --sigma must be > 0, got {config.lr} and {sigma}")
    if config.prompt_fraction is not None and not 0.0 <= config.prompt_fraction <= 1.0:
        raise EmsegError(f"--prompt-fraction must be between 0 and 1, got {config.prompt_fraction}")
    if config.contrastive_weight < 0 or (config.contrastive_weight > 0 and config.mean_teacher is None):
        raise EmsegError("--contrastive-weight must be >= 0 and needs a --target volume (it is a target-domain "
                         "loss of the mean-teacher stage)")
    if config.mean_teacher is not None and not 0.0 <= config.mean_teacher.ema_decay < 1.0:
        raise EmsegError(f"--ema-decay must be in [0, 1), got {config.mean_teacher.ema_decay}")
    return stop


def _fingerprint(config: PromptDasConfig, sigma: float, model_config: Any) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    teacher = config.mean_teacher
    return {"steps": config.steps, "batch": config.batch, "lr": config.lr, "sigma": sigma,
            "prompt_fraction": config.prompt_fraction, "mean_teacher": teacher.settings() if teacher else None,
            "contrastive_weight": config.contrastive_weight, "weights": dataclasses.asdict(config.weights),
            "weight_decay": config.weight_decay, "class_id": config.class_id, "seed": config.seed,
            "config": config_digest(model_config)}


class _PromptDasRecipe:
    """The whole pipeline with AdamW and poly decay on the supervised terms, plus the mean-teacher terms on
    target windows when `config.mean_teacher` is set (see the module docstring). Every draw comes from one
    numpy Generator seeded with `config.seed`."""

    def __init__(self, pipeline: nn.Module, config: PromptDasConfig, sigma: float, source: tuple[Sequence, Sequence],
                 targets: list[Any], identity: tuple[str, dict[str, Any]]) -> None:
        self.pipeline, self.config, (self.data, self.fingerprint) = pipeline, config, identity
        self.device = device = next(pipeline.parameters()).device
        pipeline.requires_grad_(True)
        self.teacher = (copy.deepcopy(pipeline).requires_grad_(False).eval() if config.mean_teacher is not None
                        else None)
        self.projection = None
        if config.contrastive_weight > 0:
            with torch.random.fork_rng(devices=[]):  # φ starts from `seed`, the global RNG untouched
                torch.manual_seed(config.seed)
                n = pipeline.config.prompt_dim
                self.projection = MLP(n, n, n, 3).to(device)  # φ: "the same as the MLP of SAM" (§3)
        params = list(pipeline.parameters())
        if self.projection is not None:
            params += list(self.projection.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        tile = pipeline.config.tile
        self.source = WindowSampler(source[0], source[1], tile, self.rng, config.class_id)
        self.target = WindowSampler(targets, None, tile, self.rng) if targets else None
        self.batches = _Batches(pipeline, self.rng, sigma, config.prompt_fraction, device)
        self.zero = torch.zeros((), device=device)

    def restore(self, state: dict, state_path: Path) -> None:
        with restoring(state_path, self.pipeline.config.name):
            self.pipeline.load_state_dict(state["pipeline"])
            if self.teacher is not None:
                self.teacher.load_state_dict(state["teacher"])
            if self.projection is not None:
                self.projection.load_state_dict(state["projection"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])

    def step(self, at: int) -> PromptDasLossTerms:
        config, weights, device, batches = self.config, self.config.weights, self.device, self.batches
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(at - 1, config.steps, config.lr)
        tiles, masks = self.source.sample(config.batch)
        centres = [window_centres(mask) for mask in masks]
        coords, point_labels = batches.prompts(centres)
        outputs = self.pipeline(_tiles(tiles, device), point_coords=coords, point_labels=point_labels)
        dice, bce, density = supervised_terms(outputs, _tiles(masks.astype(np.float32), device),
                                              batches.densities(centres))
        total = weights.dice * dice + weights.bce * bce + weights.density * density
        t_dice = t_bce = t_density = pcl = self.zero
        teacher = config.mean_teacher
        if self.teacher is not None and self.target is not None:
            t_dice, t_bce, t_density, pcl = _target_terms(self.pipeline, self.teacher, self.projection, self.target,
                                                          batches, teacher, config.batch, self.rng, device)
            total = total + teacher.target_weight * (
                weights.dice * t_dice + weights.bce * t_bce + weights.density * t_density
            ) + config.contrastive_weight * pcl
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.teacher is not None:
            ema_update(self.teacher, self.pipeline, teacher.ema_decay)
        return PromptDasLossTerms(total=total, dice=dice, bce=bce, density=density, target_dice=t_dice,
                                  target_bce=t_bce, target_density=t_density, pcl=pcl)

    def record(self, terms: PromptDasLossTerms) -> LossRecord:
        return terms.as_floats()

    def status(self, record: LossRecord) -> str:
        return (f"loss {record['total']:.3f} (dice {record['dice']:.3f} bce {record['bce']:.3f} "
                f"density {record['density']:.4f})")

    def weights(self) -> dict[str, torch.Tensor]:
        return cpu_state_dict(self.pipeline)

    def state(self, at: int, losses: list[LossRecord]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "model": self.pipeline.config.name, "data": self.data,
                "settings": self.fingerprint, "step": at, "pipeline": self.pipeline.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else {},
                "projection": self.projection.state_dict() if self.projection is not None else {},
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "losses": losses}


def train_prompt_das(
    pipeline: nn.Module,
    volumes: Sequence[Any],
    labels: Sequence[Any],
    out: str | Path,
    config: PromptDasConfig | None = None,
    *,
    on_step: Callable[[int, int, PromptDasLossTerms], None] | None = None,
    say: Say | None = None,
    quiet: bool = True,
    **settings: Any,
) -> PromptDasReport:
    """Train a prompt-das-* pipeline in place (see the module docstring).

    volumes, labels: source (Z, Y, X) uint8 images and integer label volumes; `labels == config.class_id` is
                     the object mask.
    config:          the run's settings (`PromptDasConfig`); `settings` (its field names: steps=..., resume=...)
                     replace single fields of it.
    on_step:         on_step(step, steps, loss terms) after every optimiser step.
    say, quiet:      progress (`emseg_rt.progress`): a bar on a terminal, lines through `say` in logs; none when
                     quiet.
    """
    config = dataclasses.replace(config or PromptDasConfig(), **settings)
    model = pipeline.config
    if model.family != "prompt-das":
        raise EmsegError(f"model {model.name} is not a Prompt-DAS model; this trainer is for prompt-das-*")
    sigma = default_sigma(pipeline) if config.sigma is None else float(config.sigma)
    stop = _check_config(config, sigma)
    check_volumes(volumes, labels, model.tile, "--data", config.class_id)
    if config.mean_teacher is not None:
        check_volumes(config.mean_teacher.targets, None, model.tile, "--target")
    out = Path(out)
    state_path = check_out(out, config.resume)
    state = read_resume_state(state_path, STATE_KEYS, "emseg-rt train") if config.resume else None
    targets = list(config.mean_teacher.targets) if config.mean_teacher is not None else []
    data = volumes_digest([*volumes, *labels, *targets])
    fingerprint = _fingerprint(config, sigma, model)
    if state is not None:
        _check_same_run(state, model.name, data, fingerprint, state_path)
    recipe = _PromptDasRecipe(pipeline, config, sigma, (volumes, labels), targets, (data, fingerprint))
    if state is not None:
        recipe.restore(state, state_path)
    was_training = pipeline.training
    pipeline.train()
    schedule = Schedule("training", config.steps, stop, config.checkpoint_every, config.checkpoint_every)
    result = run_loop(recipe, schedule, out, state, on_step=on_step, say=say, quiet=quiet)
    pipeline.train(was_training)
    return PromptDasReport(model=model.name, steps=config.steps, start_step=result.start, end_step=result.end,
                           seconds=result.seconds, losses=result.losses, checkpoint=str(out), state=str(state_path))
