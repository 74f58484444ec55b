"""Training: ScSAM's loss (eq. 9), the embedding cache, the one training loop (`loop`: resume, checkpoints,
progress) and the recipes that plug into it: the head trainer, masked pretraining of the MAESTER / HiS4MAE FOV
encoder, whole-pipeline training of Prompt-DAS and SAMDA's three steps."""

from emseg_rt.training.cache import EmbeddingCache, build_cache
from emseg_rt.training.losses import dice_loss, scsam_loss
from emseg_rt.training.pretrain import FovSampler, PretrainConfig, PretrainReport, pretrain
from emseg_rt.training.prompt_das import MeanTeacher, PromptDasConfig, PromptDasReport, train_prompt_das
from emseg_rt.training.samda import SamdaConfig, SamdaReport, train_samda
from emseg_rt.training.trainer import HeadTrainConfig, TrainReport, train_head

__all__ = ["EmbeddingCache", "FovSampler", "HeadTrainConfig", "MeanTeacher", "PretrainConfig", "PretrainReport",
           "PromptDasConfig", "PromptDasReport", "SamdaConfig", "SamdaReport", "TrainReport", "build_cache",
           "dice_loss", "pretrain", "scsam_loss", "train_head", "train_prompt_das", "train_samda"]
