"""Training: ScSAM's loss (eq. 9), the embedding cache, the head trainer, and training-tile sampling."""

from emseg_rt.training.cache import EmbeddingCache, build_cache
from emseg_rt.training.losses import dice_loss, scsam_loss
from emseg_rt.training.trainer import TrainReport, train_head

__all__ = ["EmbeddingCache", "TrainReport", "build_cache", "dice_loss", "scsam_loss", "train_head"]
