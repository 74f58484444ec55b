"""Segmentation metrics for label volumes: per-class Dice and IoU, mean IoU, AJI and PQ.

Inputs are integer label arrays of the same shape (2D slices or 3D volumes), 0 = background and
k = class k (1 nucleus, 2 mitochondria, 3 granules by default). For class k, P_k and G_k are the sets of
voxels labelled k in the prediction and the ground truth.

- Dice_k = 2|P_k ∩ G_k| / (|P_k| + |G_k|).
- IoU_k  = |P_k ∩ G_k| / |P_k ∪ G_k|.
  Both are NaN when the class is absent from prediction and ground truth (nothing to score); means skip NaN.
- mean IoU = mean of IoU_k over the foreground classes k = 1..K that are not NaN (background excluded,
  as ScSAM reports organelle scores).
- Instances are the connected components of each class mask, face connectivity (4-neighbour in 2D,
  6-neighbour in 3D), found per class so touching objects of different classes stay apart.
- AJI (aggregated Jaccard index, Kumar et al. 2017, as in HoVer-Net's `get_fast_aji`), per class:
  every ground-truth instance G_i is paired with the predicted instance S_j of largest IoU among those
  that overlap it; C = Σ_i |G_i ∩ S_j(i)|, U = Σ_i |G_i ∪ S_j(i)| over paired G_i, plus |G_i| for every
  G_i that overlaps nothing, plus |S_j| for every predicted instance paired with no G_i.
  AJI = C / U (NaN when both are empty).
- PQ (panoptic quality, Kirillov et al. 2019), per class: predicted and true instances with IoU > 0.5
  are matched (such matches are unique); TP matched pairs, FP unmatched predictions, FN unmatched truths;
  PQ = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ · RQ (NaN when both are empty).
  Mean AJI and mean PQ average the foreground classes that are not NaN.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from emseg_rt.constants import DEFAULT_CLASSES
from emseg_rt.errors import EmsegError

DEFAULT_CLASS_NAMES = DEFAULT_CLASSES


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise EmsegError(f"prediction shape {pred.shape} differs from ground-truth shape {truth.shape}")
    for name, arr in (("prediction", pred), ("ground truth", truth)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise EmsegError(f"{name} has dtype {arr.dtype}; labels must be integers")


def check_label_range(labels: np.ndarray, num_classes: int, name: str) -> None:
    """EmsegError unless every value of integer `labels` is a class id 0..num_classes: a negative or larger
    value would be silently scored as no class at all."""
    if labels.size == 0 or labels.dtype == bool:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > num_classes:
        bad = low if low < 0 else high
        raise EmsegError(f"{name} holds label {bad}, outside the class ids 0..{num_classes} "
                         f"(0 background, 1..{num_classes} classes)")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of class `label`: 2|P∩G| / (|P|+|G|); NaN when the class is in neither array."""
    p, g = pred == label, truth == label
    return _ratio(2.0 * np.count_nonzero(p & g), np.count_nonzero(p) + np.count_nonzero(g))


def iou(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """IoU (Jaccard) of class `label`: |P∩G| / |P∪G|; NaN when the class is in neither array."""
    p, g = pred == label, truth == label
    return _ratio(np.count_nonzero(p & g), np.count_nonzero(p | g))


def instances(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask, face connectivity → (ids int32 (same shape), count)."""
    ids, count = ndimage.label(mask)
    return ids.astype(np.int32, copy=False), int(count)


def _overlaps(true_ids: np.ndarray, n_true: int, pred_ids: np.ndarray, n_pred: int):
    """Areas of each instance and the intersection of every overlapping (true, pred) pair."""
    true_area = np.bincount(true_ids.ravel(), minlength=n_true + 1)[1:]
    pred_area = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)[1:]
    both = (true_ids > 0) & (pred_ids > 0)
    pair_code = true_ids[both].astype(np.int64) * (n_pred + 1) + pred_ids[both]
    codes, inter = np.unique(pair_code, return_counts=True)
    ti, pi = codes // (n_pred + 1) - 1, codes % (n_pred + 1) - 1  # 0-based instance indices
    union = true_area[ti] + pred_area[pi] - inter
    return true_area, pred_area, ti, pi, inter, union


def _instance_overlaps(pred_mask: np.ndarray, true_mask: np.ndarray):
    """Connected-component instances of both masks and their pairwise overlaps (see `_overlaps`);
    None when neither mask has an instance. Returns (n_true, n_pred, overlaps)."""
    true_ids, n_true = instances(true_mask)
    pred_ids, n_pred = instances(pred_mask)
    if n_true == 0 and n_pred == 0:
        return None
    return n_true, n_pred, _overlaps(true_ids, n_true, pred_ids, n_pred)


def aji(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Aggregated Jaccard index of two boolean masks, instances by connected components (module docstring)."""
    overlaps = _instance_overlaps(pred_mask, true_mask)
    if overlaps is None:
        return float("nan")
    n_true, n_pred, (true_area, pred_area, ti, pi, inter, union) = overlaps
    pair_iou = inter / union
    best_pred = np.full(n_true, -1)
    best_iou = np.full(n_true, -1.0)
    best_inter = np.zeros(n_true)
    best_union = np.zeros(n_true)
    for t, p, i_o_u, a, u in zip(ti, pi, pair_iou, inter, union):
        if i_o_u > best_iou[t]:
            best_pred[t], best_iou[t], best_inter[t], best_union[t] = p, i_o_u, a, u
    paired = best_pred >= 0
    c = best_inter[paired].sum()
    u = best_union[paired].sum() + true_area[~paired].sum()
    used = np.zeros(n_pred, bool)
    used[best_pred[paired]] = True
    u += pred_area[~used].sum()
    return _ratio(c, u)


def panoptic_quality(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Panoptic quality of two boolean masks, instances by connected components, match at IoU > 0.5."""
    overlaps = _instance_overlaps(pred_mask, true_mask)
    if overlaps is None:
        return float("nan")
    n_true, n_pred, (_, _, _, _, inter, union) = overlaps
    matched = inter / union > 0.5 if inter.size else np.zeros(0, bool)
    tp = int(matched.sum())
    fp, fn = n_pred - tp, n_true - tp
    return _ratio(float((inter / union)[matched].sum()) if tp else 0.0, tp + 0.5 * fp + 0.5 * fn)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class SegmentationScores:
    """Every score of one prediction against its ground truth; per-class dicts keyed by class name."""

    dice: dict[str, float] = field(default_factory=dict)
    iou: dict[str, float] = field(default_factory=dict)
    aji: dict[str, float] = field(default_factory=dict)
    pq: dict[str, float] = field(default_factory=dict)
    mean_dice: float = float("nan")
    mean_iou: float = float("nan")
    mean_aji: float = float("nan")
    mean_pq: float = float("nan")

    def to_json(self) -> str:
        """JSON with NaN written as null."""

        def clean(value):
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return None if isinstance(value, float) and np.isnan(value) else value

        return json.dumps(clean(asdict(self)), indent=2)


def evaluate(
    pred: np.ndarray,
    truth: np.ndarray,
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES,
    instance_metrics: bool = True,
) -> SegmentationScores:
    """Score integer label arrays pred and truth (same shape, 2D or 3D) for classes 1..len(class_names).

    EmsegError for different shapes, non-integer dtypes, or a value outside 0..len(class_names)."""
    _check_pair(pred, truth)
    check_label_range(pred, len(class_names), "prediction")
    check_label_range(truth, len(class_names), "ground truth")
    scores = SegmentationScores()
    for label, name in enumerate(class_names, start=1):
        scores.dice[name] = dice(pred, truth, label)
        scores.iou[name] = iou(pred, truth, label)
        if instance_metrics:
            p, g = pred == label, truth == label
            scores.aji[name] = aji(p, g)
            scores.pq[name] = panoptic_quality(p, g)
    scores.mean_dice = _nanmean(list(scores.dice.values()))
    scores.mean_iou = _nanmean(list(scores.iou.values()))
    if instance_metrics:
        scores.mean_aji = _nanmean(list(scores.aji.values()))
        scores.mean_pq = _nanmean(list(scores.pq.values()))
    return scores
