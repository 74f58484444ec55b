"""Everything after the encoders for the prompt-free pipelines: ScSAM, SAM*, MAE* and SurgicalSAM."""

from __future__ import annotations

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from emseg_rt.kernels.class_merge import upsample_class_logits
from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.class_prompt_encoder import ClassPromptEncoder
from emseg_rt.models.configs import AlignmentConfig, FafmConfig, PipelineConfig
from emseg_rt.models.fafm import AlignmentMlp, Fafm
from emseg_rt.models.mask_decoder import BatchedMaskDecoder
from emseg_rt.models.pixel_refine import LogitRefiner


class SamFusion(nn.Module):
    """SAM embedding used as it is (SAM*, SurgicalSAM): (B, N, H, W) → (B, N, H, W)."""

    def forward(self, sam_embedding: torch.Tensor) -> torch.Tensor:
        return sam_embedding


class MaeFusion(nn.Module):
    """MAE embedding projected to N by ScSAM's alignment MLP (MAE*): (B, C_m, H, W) → (B, N, H, W)."""

    def __init__(self, mae_dim: int, prompt_dim: int, config: AlignmentConfig) -> None:
        super().__init__()
        self.align_mae = AlignmentMlp(mae_dim, prompt_dim, config)

    def forward(self, mae_embedding: torch.Tensor) -> torch.Tensor:
        return self.align_mae(mae_embedding)


class FafmFusion(nn.Module):
    """Both embeddings fused by FAFM (ScSAM): (B, C_s, H, W), (B, C_m, H, W) → (B, N, H, W)."""

    def __init__(self, sam_dim: int, mae_dim: int, prompt_dim: int, config: FafmConfig) -> None:
        super().__init__()
        self.fafm = Fafm(sam_dim, mae_dim, prompt_dim, config)

    def forward(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> torch.Tensor:
        return self.fafm(sam_embedding, mae_embedding)


def build_fusion(config: PipelineConfig) -> nn.Module:
    """The fusion stage that turns this pipeline's encoder embeddings into V_f (B, N, H, W)."""
    sam, mae, n = config.sam_encoder, config.mae_encoder, config.prompt_dim
    if sam is not None and mae is not None:
        return FafmFusion(sam.out_chans, mae.embed_dim, n, config.fafm or FafmConfig())
    if mae is not None:
        return MaeFusion(mae.embed_dim, n, (config.fafm or FafmConfig()).alignment)
    assert sam is not None
    if sam.out_chans != n:
        raise ValueError(f"{config.name}: SAM embedding width {sam.out_chans} != prompt_dim {n}")
    return SamFusion()


class ClassPromptedHead(nn.Module):
    """Embeddings → fused V_f → class prompts → SAM decoder for all K classes at once → class merge; with a
    `pixel_refine` config the decoder's logits are refined at full resolution before the merge."""

    can_skip_logits = True  # forward(..., want_logits=False): labels only (emseg_rt.kernels.class_merge)

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        assert config.class_prompt is not None
        self.grid = config.grid
        self.num_classes = config.num_classes
        self.fusion = build_fusion(config)
        self.pe_layer = PositionEmbeddingRandom(config.prompt_dim // 2)
        self.class_prompt_encoder = ClassPromptEncoder(
            config.num_classes, config.prompt_dim, config.grid, config.class_prompt
        )
        self.mask_decoder = BatchedMaskDecoder(config.prompt_dim, config.mask_decoder)
        self.class_merge = ClassMerge(config.tile, config.num_classes)
        self.tile = config.tile
        self.refiner = None if config.pixel_refine is None else LogitRefiner(config.num_classes, config.pixel_refine)

    def image_pe(self) -> torch.Tensor:
        """(1, N, H, W) dense positional encoding of the embedding grid (SAM's get_dense_pe)."""
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0)

    def low_res_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """fused V_f (B, N, H, W) → class logits (B, K, 4H, 4W)."""
        b = fused.shape[0]
        dense, sparse = self.class_prompt_encoder(fused)
        masks, _ = self.mask_decoder(fused, self.image_pe(), sparse, dense)
        return masks.reshape(b, self.num_classes, masks.shape[-2], masks.shape[-1])

    def refined_logits(self, low_res: torch.Tensor, pixel_embedding: torch.Tensor | None) -> torch.Tensor:
        """low_res (B, K, 4H, 4W), pixel_embedding (B, W, T, T) → refined class logits (B, K, T, T)."""
        if self.refiner is None or pixel_embedding is None:
            raise ValueError("a pixel refinement needs the head's refiner and the pixel encoder's pixel_embedding")
        return self.refiner(pixel_embedding, upsample_class_logits(low_res, self.tile))

    def forward(self, *, want_logits: bool = True, pixel_embedding: torch.Tensor | None = None,
                **embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment from encoder embeddings.

        embeddings:      sam_embedding (B, C_s, H, W) and/or mae_embedding (B, C_m, H, W), as the pipeline has.
        pixel_embedding: (B, W, T, T), the pixel encoder's features, where the config has `pixel_refine`.
        want_logits:     False returns labels only (no tile-size logits are built without a refiner).
        returns          logits (B, K, T, T) float32 (unless want_logits is False) and labels (B, T, T) uint8.
        """
        logits = self.low_res_logits(self.fusion(**embeddings))
        if self.refiner is not None:
            logits = self.refined_logits(logits, pixel_embedding)
        return self.class_merge(logits, want_logits=want_logits)
