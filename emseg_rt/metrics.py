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
  A prediction may bring its own instance IDs per class instead (`pred_instances`: a `segment
  --instances` output's <class>_instances); `SegmentationScores.instance_source` says which was used.
- AJI (aggregated Jaccard index, Kumar et al. 2017, as in HoVer-Net's `get_fast_aji`), per class:
  every ground-truth instance G_i is paired with the predicted instance S_j of largest IoU among those
  that overlap it; C = Σ_i |G_i ∩ S_j(i)|, U = Σ_i |G_i ∪ S_j(i)| over paired G_i, plus |G_i| for every
  G_i that overlaps nothing, plus |S_j| for every predicted instance paired with no G_i.
  AJI = C / U (NaN when both are empty).
- PQ (panoptic quality, Kirillov et al. 2019), per class: predicted and true instances with IoU > 0.5
  are matched (such matches are unique); TP matched pairs, FP unmatched predictions, FN unmatched truths;
  PQ = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ · RQ (NaN when both are empty).
  Mean AJI and mean PQ average the foreground classes that are not NaN.

- CellMap segmentation challenge scores, per class (`cellmap_semantic`, `cellmap_instance`; the challenge's
  evaluation code, janelia-cellmap/cellmap-segmentation-challenge, src/cellmap_segmentation_challenge/evaluate.py
  at commit 05c134271d0db55398c40c1c0d4d6810b78811f3, and the F1 of utils/eval_utils/scoring.py at
  039964995d34ec89113201ca4a2d99d20008f0dd). Semantic: IoU and Dice of the class masks, 1 when both are empty.
  Instance: the predicted instances are split into their connected components (full connectivity, as cc3d
  does); predicted and true instances are matched one to one by an optimal assignment minimising
  Σ (1 − IoU) over pairs that overlap, every true instance matched when it can be (each left unmatched costs
  more than any pair); accuracy = the fraction of all voxels whose true instance ID equals the prediction's
  after matched predictions take their partner's ID; per true instance the Hausdorff distance (physical units,
  capped at |voxel| · ln(10⁴)/ln(1.01)) to its matched prediction (the cap when it has none); HD = their mean
  (0 when nothing is matched at all: the challenge then has no distance to average), normalised 1.01^(−HD / |voxel size|); combined = √(accuracy · normalised HD); F1 = 2TP / (2TP + FP + FN)
  over the matched pairs. More than 10 predictions per true instance scores 0 (HD infinite), as the challenge.

`evaluate_labels` takes the class names each side's metadata gives (label value → name). When both sides
name their classes, classes are matched by name (prediction value v and truth value w are one class when
their names are equal), both arrays are remapped onto the shared classes 1..K, and classes named on one
side only are skipped (listed in `SegmentationScores.skipped`). Otherwise classes are label values, named
by whichever side has names (`DEFAULT_CLASS_NAMES` when neither has).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import distance as spatial_distance

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


def _consecutive(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Instance IDs (any integers, 0 = background) renumbered 1..n in the order of their values → (int32 ids, n)."""
    ids = np.asarray(ids)
    if ids.size and ids.dtype != bool and 0 <= int(ids.min()) and int(ids.max()) < 2**26:  # a lookup, no sort
        present = np.zeros(int(ids.max()) + 1, bool)
        present[ids.ravel()] = True
        present[0] = False
        lookup = np.cumsum(present, dtype=np.int64).astype(np.int32)
        return lookup[ids], int(lookup[-1])
    values, inverse = np.unique(ids, return_inverse=True)
    if values.size and values[0] == 0:
        return inverse.reshape(ids.shape).astype(np.int32), int(values.size - 1)
    return (inverse.reshape(ids.shape) + 1).astype(np.int32), int(values.size)


def _instance_overlaps(pred_mask: np.ndarray, true_mask: np.ndarray, pred_ids: np.ndarray | None = None):
    """Connected-component instances of both masks (or the given predicted instance IDs, 0 = none) and their
    pairwise overlaps (see `_overlaps`); None when neither side has an instance. Returns (n_true, n_pred,
    overlaps)."""
    true_ids, n_true = instances(true_mask)
    pred_ids, n_pred = instances(pred_mask) if pred_ids is None else _consecutive(pred_ids)
    if n_true == 0 and n_pred == 0:
        return None
    return n_true, n_pred, _overlaps(true_ids, n_true, pred_ids, n_pred)


def aji(pred_mask: np.ndarray, true_mask: np.ndarray, pred_ids: np.ndarray | None = None) -> float:
    """Aggregated Jaccard index of two boolean masks, instances by connected components (module docstring);
    `pred_ids`: the prediction's own instance IDs instead of its mask's components (`segment --instances`)."""
    overlaps = _instance_overlaps(pred_mask, true_mask, pred_ids)
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


def panoptic_quality(pred_mask: np.ndarray, true_mask: np.ndarray, pred_ids: np.ndarray | None = None) -> float:
    """Panoptic quality of two boolean masks, instances by connected components (or the prediction's own
    `pred_ids`), match at IoU > 0.5."""
    overlaps = _instance_overlaps(pred_mask, true_mask, pred_ids)
    if overlaps is None:
        return float("nan")
    n_true, n_pred, (_, _, _, _, inter, union) = overlaps
    matched = inter / union > 0.5 if inter.size else np.zeros(0, bool)
    tp = int(matched.sum())
    fp, fn = n_pred - tp, n_true - tp
    return _ratio(float((inter / union)[matched].sum()) if tp else 0.0, tp + 0.5 * fp + 0.5 * fn)


# --- CellMap segmentation challenge (module docstring; constants of its evaluate.py at the commit cited there)
CELLMAP_RATIO_CUTOFF = 10.0  # INSTANCE_RATIO_CUTOFF: more predictions per true instance are not scored
CELLMAP_DISTANCE_EPS = 1e-4  # MAX_DISTANCE_CAP_EPS: the Hausdorff cap where 1.01^(-d/|v|) reaches 1e-4
CELLMAP_COST_SCALE = 1_000_000  # MCMF_COST_SCALE: matching costs are int((1 - IoU) * scale)


def cellmap_semantic(pred_mask: np.ndarray, true_mask: np.ndarray) -> tuple[float, float]:
    """The challenge's `score_semantic` of two boolean masks (any shape) → (IoU, Dice); both 1 when both are
    empty (scipy's Dice dissimilarity, as the challenge computes it)."""
    p, g = np.asarray(pred_mask, bool).ravel(), np.asarray(true_mask, bool).ravel()
    if not (p.any() or g.any()):
        return 1.0, 1.0
    return _ratio(np.count_nonzero(p & g), np.count_nonzero(p | g)), 1.0 - float(spatial_distance.dice(g, p))


def full_components(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Each instance of `ids` (integers, 0 = none) split into its connected components, full connectivity
    (26-neighbour in 3D, as `cc3d.connected_components` labels a label image) → (int32 IDs 1..n by the order of
    the instances' values, then scan order inside each; n)."""
    ids = np.asarray(ids)
    out, count = np.zeros(ids.shape, np.int32), 0
    consecutive = _consecutive(ids)[0]
    for value, box in enumerate(ndimage.find_objects(consecutive), start=1):
        if box is None:
            continue
        parts, n = ndimage.label(consecutive[box] == value, structure=np.ones((3,) * ids.ndim, bool))
        out[box][parts > 0] = parts[parts > 0] + count
        count += n
    return out, count


def cellmap_match(true_ids: np.ndarray, n_true: int, pred_ids: np.ndarray, n_pred: int) -> dict[int, int]:
    """The challenge's `match_instances`: predicted ID → true ID, one to one, minimising Σ int((1−IoU)·scale) over
    matched pairs plus scale+1 per unmatched true instance (its min-cost flow, solved here as the equivalent
    assignment with one private dummy per true instance: scipy's sparse Jonker–Volgenant solver).
    IDs 1..n_true and 1..n_pred, 0 = background."""
    if n_true == 0 or n_pred == 0:
        return {}
    _, _, ti, pi, inter, union = _overlaps(true_ids, n_true, pred_ids, n_pred)
    if ti.size == 0:
        return {}
    cost = ((1.0 - (inter / union).astype(np.float32).astype(np.float64)) * CELLMAP_COST_SCALE).astype(np.int64)
    rows = np.concatenate([ti, np.arange(n_true)])
    cols = np.concatenate([pi, n_pred + np.arange(n_true)])
    weights = np.concatenate([cost, np.full(n_true, CELLMAP_COST_SCALE + 1)]) + 1  # +1: no zero weights
    graph = sparse.csr_array((weights.astype(np.float64), (rows, cols)), shape=(n_true, n_pred + n_true))
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    return {int(c) + 1: int(r) + 1 for r, c in zip(matched_rows, matched_cols) if c < n_pred}


def hausdorff(a: np.ndarray, b: np.ndarray, sampling: tuple[float, ...], cap: float) -> float:
    """Symmetric Hausdorff distance of two boolean masks (same shape; physical units by `sampling`), capped at
    `cap`; the cap when one is empty, 0 when both are (the challenge's `compute_hausdorff_distance_roi`)."""
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float(cap)
    boxes = ndimage.find_objects((a | b).astype(np.uint8))[0]  # both sets lie inside: the transform is exact
    a, b = a[boxes], b[boxes]
    forward = ndimage.distance_transform_edt(~b, sampling=sampling)[a].max(initial=0.0)
    backward = ndimage.distance_transform_edt(~a, sampling=sampling)[b].max(initial=0.0)
    return float(min(max(forward, backward), cap))


@dataclass(frozen=True)
class CellMapInstanceScore:
    """The challenge's instance scores of one class (module docstring); `f1` from its newer scoring.py."""

    accuracy: float
    hausdorff_distance: float
    normalized_hausdorff_distance: float
    combined_score: float
    f1: float


def cellmap_instance(pred_ids: np.ndarray, true_ids: np.ndarray, voxel_size: tuple[float, ...] | None = None
                     ) -> CellMapInstanceScore:
    """The challenge's `score_instance` of instance IDs pred_ids and true_ids (same shape, 0 = background;
    true IDs as given, predicted split into full-connectivity components). voxel_size: per axis (default 1).

    One difference, on purpose: the challenge keeps an unmatched prediction's own ID (its `remap` with
    preserve_missing_labels), which counts as correct wherever it happens to equal the true ID; here an
    unmatched prediction never equals a true instance."""
    sampling = tuple(float(v) for v in (voxel_size or (1.0,) * true_ids.ndim))
    norm = float(np.linalg.norm(sampling))
    cap = norm * np.log(1.0 / CELLMAP_DISTANCE_EPS) / np.log(1.01)
    true_ids, n_true = _consecutive(np.asarray(true_ids))
    pred_ids, n_pred = full_components(pred_ids)
    if n_true and n_pred / n_true > CELLMAP_RATIO_CUTOFF:
        return CellMapInstanceScore(0.0, float("inf"), 0.0, 0.0, 0.0)
    mapping = cellmap_match(true_ids, n_true, pred_ids, n_pred)
    lookup = np.full(n_pred + 1, -1, np.int64)  # unmatched predictions: never a true ID
    lookup[0] = 0
    lookup[list(mapping)] = list(mapping.values())
    remapped = lookup[pred_ids]
    accuracy = float(np.count_nonzero(remapped == true_ids)) / max(true_ids.size, 1)
    distances = []
    if mapping:  # the challenge: no match at all → no distance, a mean of 0
        true_boxes = ndimage.find_objects(true_ids)
        all_pred_boxes = ndimage.find_objects(pred_ids)
        pred_boxes = {t: all_pred_boxes[p - 1] for p, t in mapping.items()}
        for label, box in enumerate(true_boxes, start=1):
            region = _union_box(box, pred_boxes.get(label))
            distances.append(hausdorff(true_ids[region] == label, remapped[region] == label, sampling, cap))
    distance = float(np.mean(distances)) if distances else 0.0
    normalized = float(1.01 ** (-distance / norm))
    tp = len(mapping)
    return CellMapInstanceScore(accuracy, distance, normalized, float(np.sqrt(accuracy * normalized)),
                                _ratio(2.0 * tp, n_pred + n_true) if n_pred + n_true else 0.0)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...] | None) -> tuple[slice, ...]:
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


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
    skipped: dict[str, str] = field(default_factory=dict)  # class name → "prediction only" / "ground truth only"
    # class name → where AJI / PQ took the predicted instances from: "connected components" of the class mask,
    # or "instance label image" (a `segment --instances` output's <class>_instances)
    instance_source: dict[str, str] = field(default_factory=dict)
    # the CellMap challenge's scores (module docstring): semantic IoU / Dice per class, instance scores per class
    # (accuracy, hausdorff_distance, normalized_hausdorff_distance, combined_score, f1), and the means it ranks
    # by: instance = mean combined score, semantic = mean IoU, overall = their geometric mean
    cellmap_iou: dict[str, float] = field(default_factory=dict)
    cellmap_dice: dict[str, float] = field(default_factory=dict)
    cellmap_instance: dict[str, dict[str, float]] = field(default_factory=dict)
    cellmap_instance_score: float = float("nan")
    cellmap_semantic_score: float = float("nan")
    cellmap_score: float = float("nan")

    def to_json(self) -> str:
        """JSON with NaN and infinities written as null."""

        def clean(value):
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return None if isinstance(value, float) and not np.isfinite(value) else value

        return json.dumps(clean(asdict(self)), indent=2)


def evaluate(
    pred: np.ndarray,
    truth: np.ndarray,
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES,
    instance_metrics: bool = True,
    pred_instances: dict[str, np.ndarray] | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> SegmentationScores:
    """Score integer label arrays pred and truth (same shape, 2D or 3D) for classes 1..len(class_names).
    pred_instances: class name → the prediction's instance IDs for that class (AJI, PQ and the CellMap instance
    scores use them instead of the connected components of the class mask). voxel_size: per axis, for the
    CellMap Hausdorff distance (default 1).

    EmsegError for different shapes, non-integer dtypes, or a value outside 0..len(class_names)."""
    _check_pair(pred, truth)
    check_label_range(pred, len(class_names), "prediction")
    check_label_range(truth, len(class_names), "ground truth")
    scores = SegmentationScores()
    for label, name in enumerate(class_names, start=1):
        scores.dice[name] = dice(pred, truth, label)
        scores.iou[name] = iou(pred, truth, label)
        p, g = pred == label, truth == label
        scores.cellmap_iou[name], scores.cellmap_dice[name] = cellmap_semantic(p, g)
        if instance_metrics:
            _score_instances(scores, name, p, g, (pred_instances or {}).get(name), voxel_size)
    scores.mean_dice = _nanmean(list(scores.dice.values()))
    scores.mean_iou = _nanmean(list(scores.iou.values()))
    scores.cellmap_semantic_score = _nanmean(list(scores.cellmap_iou.values()))
    if instance_metrics:
        scores.mean_aji = _nanmean(list(scores.aji.values()))
        scores.mean_pq = _nanmean(list(scores.pq.values()))
        scores.cellmap_instance_score = _nanmean([v["combined_score"] for v in scores.cellmap_instance.values()])
        scores.cellmap_score = float(np.sqrt(scores.cellmap_instance_score * scores.cellmap_semantic_score))
    return scores


def _score_instances(scores: SegmentationScores, name: str, p: np.ndarray, g: np.ndarray, ids: np.ndarray | None,
                     voxel_size: tuple[float, ...] | None) -> None:
    """AJI, PQ and the CellMap instance scores of one class into `scores`."""
    if ids is not None and ids.shape != p.shape:
        raise EmsegError(f"the {name} instance IDs have shape {ids.shape}, not the prediction's {p.shape}")
    scores.aji[name] = aji(p, g, ids)
    scores.pq[name] = panoptic_quality(p, g, ids)
    scores.instance_source[name] = "connected components" if ids is None else "instance label image"
    pred_ids = instances(p)[0] if ids is None else ids
    scores.cellmap_instance[name] = asdict(cellmap_instance(pred_ids, instances(g)[0], voxel_size))


def class_names_by_value(names: dict[int, str]) -> tuple[str, ...]:
    """Names of classes 1..max(names) for scoring by label value; a value without a name is 'label v'."""
    return tuple(names.get(value, f"label {value}") for value in range(1, max(names, default=0) + 1))


@dataclass(frozen=True)
class ClassMatch:
    """Classes matched by name: shared names scored as classes 1..K, each side's values mapped onto them.

    names:        the K shared class names, in the ground truth's label-value order.
    pred_values:  prediction label value → shared class 1..K, or 0 when its class is skipped.
    truth_values: ground-truth label value → shared class 1..K, or 0 when its class is skipped.
    skipped:      class name → "prediction only" or "ground truth only".
    """

    names: tuple[str, ...]
    pred_values: dict[int, int]
    truth_values: dict[int, int]
    skipped: dict[str, str]


def match_classes(pred_names: dict[int, str], truth_names: dict[int, str]) -> ClassMatch:
    """Match classes by name (values with the same name on one side merge); EmsegError when no name is shared."""
    shared = list(dict.fromkeys(n for _, n in sorted(truth_names.items()) if n in pred_names.values()))
    if not shared:
        raise EmsegError(f"prediction and ground truth share no class name (prediction: "
                         f"{', '.join(sorted(set(pred_names.values())))}; ground truth: "
                         f"{', '.join(sorted(set(truth_names.values())))}); they cannot be scored against each other")
    index = {name: k for k, name in enumerate(shared, start=1)}
    skipped = {n: "prediction only" for n in pred_names.values() if n not in index}
    skipped.update({n: "ground truth only" for n in truth_names.values() if n not in index})
    return ClassMatch(tuple(shared), {v: index.get(n, 0) for v, n in pred_names.items()},
                      {v: index.get(n, 0) for v, n in truth_names.items()}, skipped)


def remap_labels(labels: np.ndarray, mapping: dict[int, int], name: str) -> np.ndarray:
    """`labels` (any shape, integers) with each value v > 0 replaced by mapping[v] (0 stays 0) → int32, same shape.

    EmsegError naming the first value that `mapping` (the values the metadata names) does not cover."""
    labels = labels.astype(np.uint8) if labels.dtype == bool else labels
    covered = ", ".join(str(v) for v in sorted(mapping))
    if labels.size == 0:
        return labels.astype(np.int32)
    low, high = int(labels.min()), int(labels.max())
    top = max(mapping, default=0)
    if low < 0 or high > top:
        raise EmsegError(f"{name} holds label {low if low < 0 else high}, which its image-label properties do not "
                         f"name (named values: {covered})")
    table = np.full(top + 1, -1, np.int32)
    table[0] = 0
    for value, target in mapping.items():
        table[value] = target
    remapped = table[labels]
    if (remapped < 0).any():
        bad = int(labels[remapped < 0][0])
        raise EmsegError(f"{name} holds label {bad}, which its image-label properties do not name "
                         f"(named values: {covered})")
    return remapped


def evaluate_labels(
    pred: np.ndarray,
    truth: np.ndarray,
    pred_names: dict[int, str] | None = None,
    truth_names: dict[int, str] | None = None,
    instance_metrics: bool = True,
    pred_instances: dict[str, np.ndarray] | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> SegmentationScores:
    """Score integer label arrays pred and truth (same shape, 2D or 3D), classes matched by name when both
    sides name them, else by label value (module docstring); EmsegError as `evaluate`, and for a value the
    names do not cover when matching by name. voxel_size: per axis, the truth's (CellMap Hausdorff distance)."""
    _check_pair(pred, truth)
    if not (pred_names and truth_names):
        names = pred_names or truth_names
        return evaluate(pred, truth, class_names_by_value(names) if names else DEFAULT_CLASS_NAMES,
                        instance_metrics, pred_instances, voxel_size)
    match = match_classes(pred_names, truth_names)
    scores = evaluate(remap_labels(pred, match.pred_values, "prediction"),
                      remap_labels(truth, match.truth_values, "ground truth"), match.names, instance_metrics,
                      pred_instances, voxel_size)
    scores.skipped = match.skipped
    return scores
