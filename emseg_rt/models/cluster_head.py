"""HiS4MAE's segmentation head: nearest fixed cluster centre of bilinearly interpolated patch tokens.

The centres (K, C) and each centre's class come from `emseg-rt cluster fit` (K-means on a sample of
pixel features, clusters mapped to classes by the Hungarian algorithm) and live in the model's state dict,
so they travel in checkpoints and model packages like any other weight. A checkpoint may hold any K: the
head takes its size when the checkpoint is loaded (`resize_for`).

Labels: cluster of the nearest centre (`emseg_rt.kernels.nearest_centroid`, the fused Triton kernel on CUDA,
its torch reference elsewhere) → its class. Logits, for blending and probabilities: per class k the margin
min_{j≠k} m_j − m_k, where m_j is the smallest interpolated score ‖c‖² − 2 f·c of class j's centres
(j = 0 is background / unrecognised). The margin is > 0 exactly where class k's centre is the nearest, so
the runtime's class merge (threshold 0) gives the same labels, and blending scores of overlapping windows is
blending their features (the score is affine in f).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.kernels import nearest_centroid, token_scores
from emseg_rt.kernels.nearest_centroid import no_autocast
from emseg_rt.models.class_merge import model_label_dtype
from emseg_rt.models.configs import PipelineConfig

SCORE_CHUNK = 64  # centres interpolated at once for the logits: (B, 64, T, T) floats at most
EMPTY_CLASS = 3e4  # m_k of a class without centres (scores of normed tokens are far smaller; fp16-safe)
MARGIN_LIMIT = 1e4  # logits are clamped to ±this, so fp16 graphs do not overflow


class ClusterHead(nn.Module):
    """Patch tokens of one FOV → class logits and labels at pixel resolution."""

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        assert config.fov_encoder is not None
        self.config = config
        self.tile = config.tile
        self.num_classes = config.num_classes
        self.threshold = 0.0  # read by the runtime's class merge
        self.can_skip_logits = True
        k, c = config.num_clusters, config.fov_encoder.embed_dim
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("centres", torch.randn(k, c, generator=generator))
        self.register_buffer("cluster_classes", torch.arange(k, dtype=torch.int64) % (self.num_classes + 1))

    @property
    def num_clusters(self) -> int:
        return int(self.centres.shape[0])

    def resize_for(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """Take K from a checkpoint's `<prefix>centres` before it is loaded (a fitted head may have any K)."""
        centres = state.get(prefix + "centres")
        if centres is None or centres.shape == self.centres.shape:
            return
        if centres.dim() != 2 or centres.shape[1] != self.centres.shape[1]:
            return  # the loader reports the shape mismatch
        k = centres.shape[0]
        self.centres = torch.zeros(k, self.centres.shape[1], dtype=self.centres.dtype, device=self.centres.device)
        self.cluster_classes = torch.zeros(k, dtype=torch.int64, device=self.cluster_classes.device)

    def set_clusters(self, centres: torch.Tensor, cluster_classes: torch.Tensor) -> None:
        """Install fitted centres (K, C) float and their classes (K,) int in 0..num_classes (0 = background)."""
        if centres.dim() != 2 or centres.shape[1] != self.centres.shape[1]:
            raise ValueError(f"centres must be (K, {self.centres.shape[1]}), got {tuple(centres.shape)}")
        if cluster_classes.shape != (centres.shape[0],):
            raise ValueError("cluster_classes must hold one class per centre")
        if int(cluster_classes.min()) < 0 or int(cluster_classes.max()) > self.num_classes:
            raise ValueError(f"cluster classes must lie in 0..{self.num_classes}")
        self.centres = centres.detach().to(self.centres.device, torch.float32).clone()
        self.cluster_classes = cluster_classes.detach().to(self.cluster_classes.device, torch.int64).clone()

    def class_minima(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, K, g, g) → m (B, 1 + num_classes, T, T): per class, the smallest interpolated score.

        Centres are interpolated SCORE_CHUNK at a time, so at most two (B, SCORE_CHUNK, T, T) floats exist.
        """
        minima = []
        for cls in range(self.num_classes + 1):
            best = torch.full((scores.shape[0], self.tile, self.tile), EMPTY_CLASS, device=scores.device)
            minima.append(best)
        for first in range(0, scores.shape[1], SCORE_CHUNK):
            block = F.interpolate(scores[:, first:first + SCORE_CHUNK], size=(self.tile, self.tile),
                                  mode="bilinear", align_corners=False)  # (B, k, T, T)
            chunk_classes = self.cluster_classes[first:first + SCORE_CHUNK]
            for cls in range(self.num_classes + 1):
                member = (chunk_classes == cls)[None, :, None, None]
                minima[cls] = torch.minimum(minima[cls], torch.where(member, block, EMPTY_CLASS).amin(dim=1))
        return torch.stack(minima, dim=1)

    def margins(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, K, g, g) → logits (B, num_classes, T, T): min_{j≠k} m_j − m_k, clamped."""
        minima = self.class_minima(scores)
        logits = []
        for k in range(1, self.num_classes + 1):
            others = torch.cat([minima[:, :k], minima[:, k + 1:]], dim=1).amin(dim=1)
            logits.append(others - minima[:, k])
        return torch.stack(logits, dim=1).clamp(-MARGIN_LIMIT, MARGIN_LIMIT)

    def forward(self, fov_embedding: torch.Tensor, want_logits: bool = True) -> dict[str, torch.Tensor]:
        """Label every pixel of the FOV.

        fov_embedding: (B, C, g, g) float patch tokens of (B, 1, T, T) tiles.
        want_logits:   False skips the logits (labels only, through the fused kernel on CUDA).
        returns        labels (B, T, T) uint8 (class of the nearest centre, 0 = background) and, unless
                       want_logits is False, logits (B, num_classes, T, T) float32 (margins, see module doc).
        """
        dtype = model_label_dtype(self.num_classes)
        with no_autocast(fov_embedding.device):
            if not want_logits:
                clusters = nearest_centroid(fov_embedding.float(), self.centres, (self.tile, self.tile))
                return {"labels": self.cluster_classes[clusters].to(dtype)}
            logits = self.margins(token_scores(fov_embedding.float(), self.centres))
        best, best_class = logits.max(dim=1)
        labels = torch.where(best > self.threshold, best_class + 1, torch.zeros_like(best_class))
        return {"logits": logits, "labels": labels.to(dtype)}
