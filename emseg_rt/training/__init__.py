"""Training: ScSAM's loss (eq. 9), the embedding cache, the head trainer, training-tile sampling, and masked
pretraining of the MAESTER / HiS4MAE FOV encoder."""

from emseg_rt.training.cache import EmbeddingCache, build_cache
from emseg_rt.training.losses import dice_loss, scsam_loss
from emseg_rt.training.pretrain import FovSampler, PretrainReport, pretrain
from emseg_rt.training.trainer import TrainReport, train_head

__all__ = ["EmbeddingCache", "FovSampler", "PretrainReport", "TrainReport", "build_cache", "dice_loss", "pretrain",
           "scsam_loss", "train_head"]
