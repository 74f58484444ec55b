"""Fitting a clustering head: K-means centres on sampled pixel features, clusters named by the Hungarian
algorithm against ground truth, installed in the pipeline's `ClusterHead` (HiS4MAE §3.3, §4.4).

The centres are fixed after fitting (HiS4MAE's answer to K-means' dependence on its initial points: fit
once on a sample, then every slice is labelled against the same centres).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from emseg_rt.clustering.features import DEFAULT_FRACTION, sample_pixel_features
from emseg_rt.clustering.matching import contingency, match_table
from emseg_rt.errors import EmsegError
from emseg_rt.models.cluster_head import ClusterHead
from emseg_rt.progress import Progress

KMEANS_INITS = 10  # k-means++ restarts, best inertia kept (scikit-learn's classic default)
MIN_SAMPLES_PER_CLUSTER = 20  # the sample is raised to at least this many voxels per centre
NEAREST_CHUNK = 65536  # features scored against the centres at once


@dataclass(frozen=True)
class ClusterFit:
    """What `fit_clusters` fitted and installed.

    centres:         (K, C) float32 K-means centres.
    cluster_classes: (K,) int64 class of each cluster, 0..num_classes (0 = background / unrecognised).
    contingency:     (K, num_classes + 1) int64 sampled voxels of cluster i with true class j.
    class_names:     ('background', *classes), the names of contingency's columns.
    samples:         N sampled voxels; seconds: wall time of sampling, K-means and matching.
    """

    centres: np.ndarray
    cluster_classes: np.ndarray
    contingency: np.ndarray
    class_names: tuple[str, ...]
    samples: int
    seconds: float

    @property
    def clusters(self) -> int:
        return int(self.centres.shape[0])

    def rows(self) -> list[tuple[int, str, int, float]]:
        """(cluster, class name, sampled voxels, share of them with that class) per cluster."""
        out = []
        for cluster, cls in enumerate(self.cluster_classes):
            voxels = int(self.contingency[cluster].sum())
            share = float(self.contingency[cluster, cls] / voxels) if voxels else float("nan")
            out.append((cluster, self.class_names[cls], voxels, share))
        return out


def fit_centres(features: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """K-means (scikit-learn, k-means++ with KMEANS_INITS restarts) on pixel features.

    features: (N, C) float; clusters: K >= 1, at most N.
    returns   (K, C) float32 centres.
    """
    if clusters < 1:
        raise EmsegError(f"--clusters {clusters} must be at least 1")
    if len(features) < clusters:
        raise EmsegError(f"{len(features)} sampled voxels cannot make {clusters} clusters; raise --fraction or "
                         "use a larger volume")
    kmeans = KMeans(n_clusters=clusters, n_init=KMEANS_INITS, random_state=seed)
    kmeans.fit(np.asarray(features, dtype=np.float32))
    return kmeans.cluster_centers_.astype(np.float32)


def nearest_centre(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, C) features, (K, C) centres → (N,) int64 nearest centre, argmin ‖c‖² − 2 f·c (the head's rule)."""
    centres = np.asarray(centres, dtype=np.float32)
    norms = (centres * centres).sum(axis=1)
    out = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(features), NEAREST_CHUNK):
        block = np.asarray(features[start:start + NEAREST_CHUNK], dtype=np.float32)
        out[start:start + len(block)] = (norms[None, :] - 2.0 * block @ centres.T).argmin(axis=1)
    return out


def labels_at(labels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """labels (Z, Y, X) or (Y, X) (numpy, or anything read one plane at a time with labels[z]) at positions
    (N, 3) int64 sorted by z → (N,) int64."""
    if labels.ndim == 2:
        return np.asarray(labels)[positions[:, 1], positions[:, 2]].astype(np.int64)
    out = np.empty(len(positions), dtype=np.int64)
    bounds = np.searchsorted(positions[:, 0], np.arange(labels.shape[0] + 1))
    for z in np.unique(positions[:, 0]):
        rows = slice(bounds[z], bounds[z + 1])
        out[rows] = np.asarray(labels[int(z)])[positions[rows, 1], positions[rows, 2]]
    return out


def cluster_head_of(pipeline: nn.Module) -> ClusterHead:
    """The pipeline's ClusterHead; EmsegError naming the model when it has none."""
    head = getattr(pipeline, "head", None)
    if not isinstance(head, ClusterHead):
        name = getattr(getattr(pipeline, "config", None), "name", type(pipeline).__name__)
        raise EmsegError(f"model {name} has no clustering head; cluster centres are fitted for the maester-* and "
                         "his4mae-* models (`emseg-rt models` lists them)")
    return head


def fit_clusters(pipeline: nn.Module, volume: np.ndarray, labels: np.ndarray | None = None, *,
                 clusters: int | None = None, fraction: float = DEFAULT_FRACTION, seed: int = 0,
                 halo: int | None = None, batch: int = 64, progress: Progress | None = None) -> ClusterFit:
    """Fit and install the clustering head of a maester / his4mae pipeline.

    volume:   (Z, Y, X) uint8 image; labels: the same shape, ground-truth classes 0..num_classes (required:
              the truth names the clusters; a small annotated volume is enough).
    clusters: K (None: the head's current K); fraction, seed, halo, batch: as `sample_pixel_features`
              (the sample is raised to at least MIN_SAMPLES_PER_CLUSTER·K voxels where the volume has them).
    progress: the caller's open reporter (`emseg_rt.progress.Progress`, e.g. `Progress("cluster fit", None,
              say=say)`): one step per sampled plane encoded, then 'k-means' and 'matching' as its status.
    Samples expand-stride features, runs K-means (`fit_centres`), maps each cluster to a class by Hungarian
    matching on the sampled voxels' truth (`matching.match_clusters`), and installs the result with
    `pipeline.head.set_clusters`. Returns the ClusterFit record.
    """
    began = time.perf_counter()
    head = cluster_head_of(pipeline)
    if labels is None:
        raise EmsegError("fitting clusters needs ground-truth labels: they name the K-means clusters (Hungarian "
                         "matching); a small annotated volume is enough")
    if tuple(labels.shape) != tuple(volume.shape):
        raise EmsegError(f"labels of shape {tuple(labels.shape)} do not match the volume's {tuple(volume.shape)}")
    clusters = head.num_clusters if clusters is None else int(clusters)
    if clusters < 1:
        raise EmsegError(f"--clusters {clusters} must be at least 1")
    progress = progress or Progress("cluster fit", None, enabled=False)
    features, positions = sample_pixel_features(pipeline, volume, fraction=fraction, halo=halo, seed=seed,
                                                batch=batch, min_samples=MIN_SAMPLES_PER_CLUSTER * clusters,
                                                progress=progress)
    truth = labels_at(labels, positions)
    progress.update(progress.done, status=f"k-means, {clusters} centres on {len(positions)} voxels")
    centres = fit_centres(features, clusters, seed)
    progress.update(progress.done, status="matching clusters to classes")
    table = contingency(nearest_centre(features, centres), truth, clusters, head.num_classes)
    cluster_classes = match_table(table)
    progress.update(progress.done, status="")
    head.set_clusters(torch.from_numpy(centres), torch.from_numpy(cluster_classes))
    names = ("background", *pipeline.config.classes)
    return ClusterFit(centres, cluster_classes, table, names, len(positions), time.perf_counter() - began)
