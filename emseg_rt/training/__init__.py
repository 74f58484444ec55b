"""Training: ScSAM's loss (eq. 9), the embedding cache, the head trainer, training-tile sampling, and masked
pretraining of the MAESTER / HiS4MAE FOV encoder, and whole-pipeline training of Prompt-DAS."""

from emseg_rt.training.cache import EmbeddingCache, build_cache
from emseg_rt.training.losses import dice_loss, scsam_loss
from emseg_rt.training.pretrain import FovSampler, PretrainReport, pretrain
from emseg_rt.training.prompt_das import MeanTeacher, PromptDasReport, train_prompt_das
from emseg_rt.training.trainer import TrainReport, train_head

__all__ = ["EmbeddingCache", "FovSampler", "MeanTeacher", "PretrainReport", "PromptDasReport", "TrainReport",
           "build_cache", "dice_loss", "pretrain", "scsam_loss", "train_head", "train_prompt_das"]
