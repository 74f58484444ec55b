"""The embedded default model: a small ScSAM trained on synthetic phantoms, shipped as package data.

`scsam-phantom` has ScSAM's architecture (SAM ViT + MAE ViT → FAFM → cosine class prompt encoder →
SAM mask decoder) at a size that trains and runs on a CPU. Patch size 8 (not SAM's 16) keeps small
granules: the decoder's logits come out at 4× the embedding grid, i.e. half the tile resolution.
How it was trained: `scripts/train_default.py`; scores and limits: `models/scsam-phantom.md`.
"""

from __future__ import annotations

from importlib import resources

from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.configs import (
    AlignmentConfig,
    ClassPromptConfig,
    FafmConfig,
    MaeEncoderConfig,
    MaskDecoderConfig,
    PipelineConfig,
    SamEncoderConfig,
)
from emseg_rt.models.registry import REGISTRY, build

DEFAULT_MODEL = "scsam-phantom"
WEIGHTS_FILE = "scsam-phantom.pt"

PHANTOM_CONFIG = PipelineConfig(
    name=DEFAULT_MODEL,
    family="scsam",
    size="phantom",
    tile=128,  # ours: CPU-sized tiles; 128² at patch 8 gives a 16×16 grid like SAM's 64×64 at 1024²/16
    prompt_dim=64,  # ours (SAM/ScSAM: 256)
    sam_encoder=SamEncoderConfig(
        img_size=128, patch_size=8, embed_dim=96, depth=4, num_heads=4,
        global_attn_indexes=(1, 3), window_size=8, out_chans=64,  # ours: SAM's layout, scaled down
    ),
    mae_encoder=MaeEncoderConfig(
        field_of_view=32, patch_size=8, tiles_per_side=4, embed_dim=64, depth=2, num_heads=2,  # ours: 4×4 tiles as ScSAM
    ),
    fafm=FafmConfig(alignment=AlignmentConfig(hidden_dim=64), gn_groups=8, cam_reduction=4),
    class_prompt=ClassPromptConfig(dense_hidden=32, sparse_hidden=32, residual_hidden=32),
    mask_decoder=MaskDecoderConfig(mlp_dim=256, num_heads=4, iou_head_hidden_dim=64),
    description="ScSAM architecture at CPU size, trained on synthetic beta-cell phantoms (the embedded default)",
)

REGISTRY.register(PHANTOM_CONFIG)


def default_model_name() -> str:
    """Name of the model `segment` and `demo` use when no --model is given."""
    return DEFAULT_MODEL


def default_weights_path():
    """Path (importlib.resources Traversable) of the shipped weights file."""
    return resources.files("emseg_rt.weights").joinpath(WEIGHTS_FILE)


def load_default_model() -> nn.Module:
    """Build `scsam-phantom` with its shipped weights, in eval mode."""
    weights = default_weights_path()
    if not weights.is_file():
        raise EmsegError(
            f"the default model's weights ({WEIGHTS_FILE}) are missing from emseg_rt/weights; reinstall emseg-rt"
        )
    with resources.as_file(weights) as path:
        model = build(DEFAULT_MODEL, checkpoint=path)
    return model.eval()
