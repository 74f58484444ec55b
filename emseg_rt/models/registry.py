"""Named model configurations and the one `build(name)` call (segment-anything's build_sam, timm's way).

Each family registers a builder (config → nn.Module); each named model is a config of some family.
Later families (HiS4MAE, Prompt-DAS, SAMDA) add a builder and their configs without touching the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from emseg_rt.errors import EmsegError
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
    PromptDasHeadConfig,
    SamEncoderConfig,
)
from emseg_rt.models.pipeline import build_pipeline

FamilyBuilder = Callable[[PipelineConfig], nn.Module]

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
    "prompt-das": "DINO ViT-S/8 + point prompts (M >= 0) + two-way decoder; mitochondria + centre density (Prompt-DAS)",
}
CLUSTER_FAMILIES = ("maester", "his4mae")


class ModelRegistry:
    """Family builders and named configs. The module-level `REGISTRY` is the one the tool uses."""

    def __init__(self) -> None:
        self._builders: dict[str, FamilyBuilder] = {}
        self._configs: dict[str, PipelineConfig] = {}

    def register_family(self, family: str, builder: FamilyBuilder) -> None:
        self._builders[family] = builder

    def register(self, config: PipelineConfig) -> None:
        if config.family not in self._builders:
            raise ValueError(f"no builder for family {config.family!r}")
        self._configs[config.name] = config

    def names(self) -> list[str]:
        return list(self._configs)

    def config(self, name: str, **overrides: Any) -> PipelineConfig:
        if name not in self._configs:
            raise EmsegError(f"unknown model {name!r}; `emseg-rt models` lists the available ones")
        config = self._configs[name]
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(PipelineConfig)})
            if unknown:
                raise EmsegError(f"unknown override(s) for {name}: {', '.join(unknown)}")
            config = dataclasses.replace(config, **overrides)
        return config

    def build_from_config(self, config: PipelineConfig) -> nn.Module:
        return self._builders[config.family](config)


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


def _default_registry() -> ModelRegistry:
    registry = ModelRegistry()
    for family in FAMILY_DESCRIPTIONS:
        registry.register_family(family, build_pipeline)
    for family in FAMILY_DESCRIPTIONS:
        if family in CLUSTER_FAMILIES:
            for size in FOV_ENCODERS:
                registry.register(_clustering(family, size))
            continue
        if family == "prompt-das":
            for size in DINO_ENCODERS:
                registry.register(_prompt_das(size))
            continue
        for size in ("vit-h", "vit-b", "tiny"):
            registry.register(_vanilla(size) if family == "vanilla-sam" else _class_prompted(family, size))
    return registry


REGISTRY = _default_registry()


def list_models() -> list[str]:
    """Names of every registered model, e.g. 'scsam-vit-h', 'sam-star-tiny'."""
    return REGISTRY.names()


def get_config(name: str, **overrides: Any) -> PipelineConfig:
    """The named config with top-level fields replaced by `overrides` (e.g. classes=(...))."""
    return REGISTRY.config(name, **overrides)


def build(name: str, checkpoint: str | Path | Sequence[str | Path] | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, optionally loading one or more checkpoints (see `checkpoint.py`).

    The same call builds the tiny test size and the paper size; wrap it in `torch.device("meta")` to
    build a paper-size model without allocating its weights.
    """
    from emseg_rt.models.checkpoint import load_checkpoints

    model = REGISTRY.build_from_config(get_config(name, **overrides))
    if checkpoint is not None:
        paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
        load_checkpoints(model, paths)
    return model
