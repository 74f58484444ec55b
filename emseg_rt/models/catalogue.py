"""Every named model as a config: the paper sizes and their tiny test sizes, family by family, and the embedded
default (`scsam-phantom`). Plain frozen dataclasses (`configs.py`), no torch: `emseg-rt models` lists them at
once, and `registry.py` registers each with its family's builder (the one home of the names; nothing copies them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from emseg_rt.models.configs import (
    AlignmentConfig,
    ClassPromptConfig,
    ClusterHeadConfig,
    DinoEncoderConfig,
    FafmConfig,
    FovEncoderConfig,
    MaeEncoderConfig,
    MaskDecoderConfig,
    MaskedPretrainConfig,
    PipelineConfig,
    PixelRefineConfig,
    PromptDasHeadConfig,
    Sam2DecoderConfig,
    Sam2EncoderConfig,
    SamdaConfig,
    SamEncoderConfig,
    TinyVitEncoderConfig,
    UNetConfig,
)

SAM_ENCODERS: dict[str, SamEncoderConfig] = {
    "vit-h": SamEncoderConfig(),  # SAM build_sam_vit_h
    "vit-b": SamEncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),  # vit_b
    # Same code as the paper sizes at test speed: 128² tiles, an 8×8 embedding grid.
    "tiny": SamEncoderConfig(
        img_size=128, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32
    ),
}
MAE_ENCODERS: dict[str, MaeEncoderConfig] = {
    # ScSAM's MAE is the same for both SAM sizes: FOV 256, patch 16, 512 dims (ScSAM §4.2).
    "vit-h": MaeEncoderConfig(),
    "vit-b": MaeEncoderConfig(),
    "tiny": MaeEncoderConfig(field_of_view=32, embed_dim=32, depth=2, num_heads=2),
}
PROMPT_DIMS = {"vit-h": 256, "vit-b": 256, "tiny": 32}
TILES = {"vit-h": 1024, "vit-b": 1024, "tiny": 128}
DECODERS = {
    "vit-h": MaskDecoderConfig(),
    "vit-b": MaskDecoderConfig(),
    "tiny": MaskDecoderConfig(mlp_dim=64, num_heads=2, iou_head_hidden_dim=32),
}
FOV_ENCODERS: dict[str, FovEncoderConfig] = {
    "fov80": FovEncoderConfig(),  # MAESTER / HiS4MAE paper size
    # Same code at test speed: a 40² FOV of 8×8 tokens, 64 dims, 4 layers.
    "tiny": FovEncoderConfig(field_of_view=40, embed_dim=64, depth=4),
}
PRETRAIN_SIZES: dict[str, dict[str, int]] = {
    "fov80": {},
    "tiny": {"decoder_embed_dim": 32, "decoder_depth": 2, "decoder_num_heads": 2, "codebook_size": 64,
             "batch_size": 64, "samples_per_epoch": 512, "warmup_epochs": 2},
}
DINO_ENCODERS: dict[str, DinoEncoderConfig] = {
    "vit-s8": DinoEncoderConfig(),  # Prompt-DAS: DINO ViT-S/8 at 384²
    # Same code at test speed: 64² tiles, patch 8 → an 8×8 grid, 32 dims.
    "tiny": DinoEncoderConfig(img_size=64, embed_dim=32, depth=2, num_heads=2),
}
PROMPT_DAS_HEADS: dict[str, PromptDasHeadConfig] = {
    "vit-s8": PromptDasHeadConfig(),
    "tiny": PromptDasHeadConfig(mlp_dim=64, num_heads=2, density_hidden=16),
}
PROMPT_DAS_MAX_POINTS = {
    "vit-s8": 100,  # Prompt-DAS code (util/point_prompt.py): window prompts padded to 100 points
    "tiny": 4,
}
SAM2_ENCODERS: dict[str, Sam2EncoderConfig] = {
    # SAM2.1 sam2.1_hiera_l.yaml (trunk) at 1024²
    "hiera-l": Sam2EncoderConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                                 window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7)),
    "hiera-b+": Sam2EncoderConfig(),  # SAM2.1 sam2.1_hiera_b+.yaml at 1024²
    # Same code at test speed: 128² tiles, widths 16–128, an 8×8 embedding grid; 5 blocks: windowed, pooled,
    # pooled with padded windows (16² in 6² windows), global, pooled.
    "tiny": Sam2EncoderConfig(img_size=128, embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                              window_spec=(4, 6, 4, 2), window_pos_embed_bkg_spatial_size=(8, 8), d_model=32),
}
TINY_FAFM = FafmConfig(alignment=AlignmentConfig(hidden_dim=32), gn_groups=8, cam_reduction=4)
TINY_PROMPT = {"dense_hidden": 16, "sparse_hidden": 16, "residual_hidden": 16}

FAMILY_DESCRIPTIONS = {
    "vanilla-sam": "SAM encoder + SAM prompt encoder + decoder; point/box prompts per class (ScSAM Table 5)",
    "sam-star": "SAM embedding + cosine class prompt encoder + decoder (ScSAM Table 5, SAM*)",
    "mae-star": "MAE embedding projected to 256 + cosine class prompt encoder + decoder (ScSAM Table 5, MAE*)",
    "surgicalsam": "SAM embedding + dot-product class prototypes + decoder (SurgicalSAM)",
    "scsam": "SAM + MAE encoders + FAFM + cosine class prompt encoder + decoder (ScSAM)",
    "maester": "FOV-80 MAE encoder (masked reconstruction) + nearest fixed K-means centre per pixel (MAESTER)",
    "his4mae": "self-distilled FOV-80 MAE with codebook + nearest fixed K-means centre, expand-stride (HiS4MAE)",
    "vanilla-sam2": "SAM2 Hiera + FPN encoder + SAM2 prompt encoder + decoder; point/box prompts per class "
                    "(ScSAM Table 5)",
    "prompt-das": "DINO ViT-S/8 + point prompts (M >= 0) + two-way decoder; mitochondria + centre density (Prompt-DAS)",
    "samda": "nnU-Net 2D U-Net + frozen SAM / MedSAM / MobileSAM encoder, 3-conv projector concatenated at the "
             "bottleneck (SAMDA)",
}
CLUSTER_FAMILIES = ("maester", "his4mae")


def _class_prompted(family: str, size: str) -> PipelineConfig:
    prompt = {
        "surgicalsam": ClassPromptConfig(similarity="dot", residual_mlp=False),
    }.get(family, ClassPromptConfig())
    if size == "tiny":
        prompt = dataclasses.replace(prompt, **TINY_PROMPT)
    uses_sam = family in ("sam-star", "surgicalsam", "scsam")
    uses_mae = family in ("mae-star", "scsam")
    return PipelineConfig(
        name=f"{family}-{size}",
        family=family,
        size=size,
        tile=TILES[size],
        prompt_dim=PROMPT_DIMS[size],
        sam_encoder=SAM_ENCODERS[size] if uses_sam else None,
        mae_encoder=MAE_ENCODERS[size] if uses_mae else None,
        fafm=(TINY_FAFM if size == "tiny" else FafmConfig()) if uses_mae else None,
        class_prompt=prompt,
        mask_decoder=DECODERS[size],
        description=FAMILY_DESCRIPTIONS[family],
    )


def _vanilla(size: str) -> PipelineConfig:
    return PipelineConfig(
        name=f"vanilla-sam-{size}",
        family="vanilla-sam",
        size=size,
        tile=TILES[size],
        prompt_dim=PROMPT_DIMS[size],
        sam_encoder=SAM_ENCODERS[size],
        mask_decoder=DECODERS[size],
        description=FAMILY_DESCRIPTIONS["vanilla-sam"],
    )


def _vanilla_sam2(size: str) -> PipelineConfig:
    """vanilla-sam2-*: prompts as vanilla-sam; the decoder width is the FPN's d_model (256 at paper size)."""
    encoder = SAM2_ENCODERS[size]
    return PipelineConfig(
        name=f"vanilla-sam2-{size}",
        family="vanilla-sam2",
        size=size,
        tile=encoder.img_size,
        prompt_dim=encoder.d_model,
        sam2_encoder=encoder,
        sam2_decoder=Sam2DecoderConfig(),
        mask_decoder=MaskDecoderConfig(),  # sam2_base._build_sam_heads: the same for every size, tiny too
        description=FAMILY_DESCRIPTIONS["vanilla-sam2"],
    )


def _clustering(family: str, size: str) -> PipelineConfig:
    """maester-* / his4mae-*: the FOV is the tile; the runtime's tile stride is the expand stride S."""
    encoder = FOV_ENCODERS[size]
    return PipelineConfig(
        name=f"{family}-{size}",
        family=family,
        size=size,
        tile=encoder.field_of_view,
        prompt_dim=encoder.embed_dim,
        fov_encoder=encoder,
        cluster_head=ClusterHeadConfig(),
        pretrain=MaskedPretrainConfig(kind=family, **PRETRAIN_SIZES[size]),
        description=FAMILY_DESCRIPTIONS[family],
    )


def _prompt_das(size: str) -> PipelineConfig:
    """prompt-das-*: one class (mitochondria, MitoEM), decoder as wide as the encoder, no projection."""
    encoder = DINO_ENCODERS[size]
    return PipelineConfig(
        name=f"prompt-das-{size}",
        family="prompt-das",
        size=size,
        tile=encoder.img_size,
        prompt_dim=encoder.embed_dim,  # Prompt-DAS code: prompt_embed_dim = 384 for ViT-S
        classes=("mitochondria",),  # Prompt-DAS §3: MitoEM, mitochondria vs background
        dino_encoder=encoder,
        prompt_das=PROMPT_DAS_HEADS[size],
        max_points=PROMPT_DAS_MAX_POINTS[size],
        description=FAMILY_DESCRIPTIONS["prompt-das"],
    )


SAMDA_SIZES: dict[str, dict[str, Any]] = {
    # SAMDA §2.1 at SAM's 1024² input: 8 stages → an 8×8 bottleneck; SAM's 64² grid → 3 stride-2 convs → 8².
    "vit-b": {"tile": 1024, "sam_encoder": SAM_ENCODERS["vit-b"], "samda": SamdaConfig()},  # SAM / MedSAM ViT-B
    "mobilesam": {"tile": 1024, "samda": SamdaConfig(tiny_vit=TinyVitEncoderConfig())},  # SAMDA §3.2: MobileSAM
    # Same code at test speed: 128² tiles, 5 stages of 8..32 features → 8² bottleneck = the tiny SAM's grid.
    "tiny": {"tile": 128, "sam_encoder": SAM_ENCODERS["tiny"],
             "samda": SamdaConfig(unet=UNetConfig(n_stages=5, base_features=8, max_features=32),
                                  projector_channels=16, projector_strides=(1, 1, 1))},
}


def _samda(size: str) -> PipelineConfig:
    """samda-*: the phantoms' classes (the paper segments mitochondria; any class list works)."""
    return PipelineConfig(name=f"samda-{size}", family="samda", size=size, description=FAMILY_DESCRIPTIONS["samda"],
                          **SAMDA_SIZES[size])



DEFAULT_MODEL = "scsam-phantom"
# The embedded default (`default_model.py` ships its weights; how it was trained: scripts/train_default.py):
# ScSAM's architecture at a size that trains and runs on a CPU. Patch size 8 (not SAM's 16) keeps small granules:
# the decoder's logits come out at 4× the embedding grid, i.e. half the tile resolution.
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
        field_of_view=32, patch_size=8, tiles_per_side=4, embed_dim=64, depth=2,
        num_heads=2,  # ours: 4×4 tiles as ScSAM
    ),
    fafm=FafmConfig(alignment=AlignmentConfig(hidden_dim=64), gn_groups=8, cam_reduction=4),
    class_prompt=ClassPromptConfig(dense_hidden=32, sparse_hidden=32, residual_hidden=32),
    mask_decoder=MaskDecoderConfig(mlp_dim=256, num_heads=4, iou_head_hidden_dim=64),
    pixel_refine=PixelRefineConfig(width=16),  # ours (issue 27): outlines at full resolution from the pixels
    # ours: p0.5, p99.5 of the 12 training phantoms (scripts/train_default.py), sampled as `segment` samples a
    # volume and pooled; recomputed by benchmarks/dtype_equivalence.py
    reference_window=(52.0, 185.0),
    description="ScSAM architecture at CPU size, trained on synthetic beta-cell phantoms (the embedded default)",
)


def _family_configs(family: str) -> list[PipelineConfig]:
    """The sizes one family is registered at, in the order `emseg-rt models` lists them."""
    if family in CLUSTER_FAMILIES:
        return [_clustering(family, size) for size in FOV_ENCODERS]
    if family == "vanilla-sam2":
        return [_vanilla_sam2(size) for size in SAM2_ENCODERS]
    if family == "prompt-das":
        return [_prompt_das(size) for size in DINO_ENCODERS]
    if family == "samda":
        return [_samda(size) for size in SAMDA_SIZES]
    return [_vanilla(size) if family == "vanilla-sam" else _class_prompted(family, size)
            for size in ("vit-h", "vit-b", "tiny")]


# Name → config of every model emseg-rt ships: each family's sizes, family by family, then the default.
CONFIGS: dict[str, PipelineConfig] = {
    config.name: config
    for config in [*(c for family in FAMILY_DESCRIPTIONS for c in _family_configs(family)), PHANTOM_CONFIG]
}
