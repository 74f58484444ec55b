"""Clustering heads' fitting and evaluation (MAESTER / HiS4MAE): expand-stride pixel features of a voxel
sample, K-means centres, Hungarian cluster → class matching, and MAESTER's cover-stride for comparison
(docs/clustering.md). Knows models, the tiler, the progress reporter and the runtime (cover-stride compares
against `segment_array`); nothing of ONNX or the CLI."""

from emseg_rt.clustering.cover_stride import (
    compare_strides,
    cover_stride_labels,
    cover_stride_windows,
    expand_stride_windows,
)
from emseg_rt.clustering.features import sample_pixel_features
from emseg_rt.clustering.fit import ClusterFit, fit_centres, fit_clusters
from emseg_rt.clustering.matching import hungarian_dice, match_clusters

__all__ = [
    "ClusterFit",
    "compare_strides",
    "cover_stride_labels",
    "cover_stride_windows",
    "expand_stride_windows",
    "fit_centres",
    "fit_clusters",
    "hungarian_dice",
    "match_clusters",
    "sample_pixel_features",
]
