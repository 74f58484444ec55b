"""Clusters → classes: the Hungarian algorithm on the cluster × class overlap (HiS4MAE §4.4, Kuhn 1955).

K-means clusters carry no names. With ground truth at some voxels, the K × (num_classes + 1) contingency
table counts how many voxels of cluster i have class j (class 0 = background / unrecognised). The Hungarian
algorithm (`scipy.optimize.linear_sum_assignment`) picks the one-to-one cluster ↔ class pairing with the
largest total overlap. `match_clusters` turns that into a class per cluster (what `ClusterHead` stores);
`hungarian_dice` scores raw cluster labels against the truth after that matching (the paper's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from emseg_rt.constants import DEFAULT_CLASSES
from emseg_rt.errors import EmsegError
from emseg_rt.metrics import check_label_range, dice


def contingency(cluster_ids: np.ndarray, class_ids: np.ndarray, clusters: int, num_classes: int) -> np.ndarray:
    """Overlap counts of clusters and classes.

    cluster_ids: (N,) or any shape, integers in 0..clusters-1.
    class_ids:   same shape, integers in 0..num_classes (0 = background / unrecognised).
    returns      (clusters, num_classes + 1) int64: entry [i, j] = voxels of cluster i with class j.
    EmsegError when a class id lies outside 0..num_classes; ValueError for bad cluster ids (a caller bug).
    """
    cluster_ids, class_ids = np.asarray(cluster_ids).ravel(), np.asarray(class_ids).ravel()
    if cluster_ids.shape != class_ids.shape:
        raise ValueError(f"{cluster_ids.size} cluster ids but {class_ids.size} class ids")
    if cluster_ids.size and (int(cluster_ids.min()) < 0 or int(cluster_ids.max()) >= clusters):
        raise ValueError(f"cluster ids must lie in 0..{clusters - 1}")
    check_label_range(class_ids, num_classes, "ground truth")
    flat = cluster_ids.astype(np.int64) * (num_classes + 1) + class_ids.astype(np.int64)
    return np.bincount(flat, minlength=clusters * (num_classes + 1)).reshape(clusters, num_classes + 1)


def match_table(table: np.ndarray) -> np.ndarray:
    """Class per cluster from a (K, num_classes + 1) contingency table: see `match_clusters`."""
    table = np.asarray(table)
    rows, cols = linear_sum_assignment(table, maximize=True)
    cluster_classes = table.argmax(axis=1).astype(np.int64)  # majority class (lowest id on ties)
    cluster_classes[rows] = cols
    return cluster_classes


def match_clusters(cluster_ids: np.ndarray, class_ids: np.ndarray, clusters: int, num_classes: int) -> np.ndarray:
    """The class of each cluster: Hungarian matching on the overlap, maximising the matched voxels.

    cluster_ids: (N,) int cluster of each labelled voxel, 0..clusters-1.
    class_ids:   (N,) int its ground-truth class, 0..num_classes (0 = background / unrecognised).
    returns      (clusters,) int64 class per cluster, in 0..num_classes.

    K = num_classes + 1: a one-to-one pairing (the paper's case: nucleus, mitochondria, granules,
    unrecognised). K > num_classes + 1: the assignment pairs num_classes + 1 clusters one-to-one; each
    cluster it leaves out gets the class it overlaps most (majority rule; background when it holds no
    labelled voxel), so several clusters may share a class. K < num_classes + 1: every cluster gets a
    distinct class and the classes the assignment leaves out get no cluster (never predicted).
    """
    return match_table(contingency(cluster_ids, class_ids, clusters, num_classes))


@dataclass(frozen=True)
class MatchedDice:
    """Raw cluster labels scored after Hungarian matching.

    cluster_classes: (K,) int64 class per cluster (`match_clusters`).
    dice:            class name → Dice of classes 1..num_classes (NaN where absent on both sides).
    mean_dice:       mean over the classes that are not NaN.
    """

    cluster_classes: np.ndarray
    dice: dict[str, float]
    mean_dice: float


def hungarian_dice(pred_clusters: np.ndarray, truth: np.ndarray, clusters: int,
                   class_names: tuple[str, ...] = DEFAULT_CLASSES) -> MatchedDice:
    """Score unnamed cluster labels against the truth as HiS4MAE §4.4 does: match, then per-class Dice.

    pred_clusters: (...) int cluster label per voxel, 0..clusters-1 (e.g. K-means assignments).
    truth:         same shape, int class per voxel, 0..len(class_names) (0 = background / unrecognised).
    returns        MatchedDice: the matching (`match_clusters`, fitted on these very voxels, as the paper
                   evaluates) and `emseg_rt.metrics.dice` of each class of the matched labels.
    """
    pred_clusters, truth = np.asarray(pred_clusters), np.asarray(truth)
    if pred_clusters.shape != truth.shape:
        raise EmsegError(f"cluster labels of shape {pred_clusters.shape} differ from ground truth {truth.shape}")
    cluster_classes = match_clusters(pred_clusters, truth, clusters, len(class_names))
    matched = cluster_classes[pred_clusters]
    scores = {name: dice(matched, truth, label) for label, name in enumerate(class_names, start=1)}
    finite = [value for value in scores.values() if not np.isnan(value)]
    return MatchedDice(cluster_classes, scores, float(np.mean(finite)) if finite else float("nan"))
