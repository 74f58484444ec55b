"""MAESTER's / HiS4MAE's encoder: a small timm ViT over one field of view (FOV) of a slice."""

from __future__ import annotations

import torch
from torch import nn

from emseg_rt.models.configs import FovEncoderConfig
from emseg_rt.models.vit import token_vit


class FovEncoder(nn.Module):
    """Grey uint8 FOVs → a grid of patch tokens (HiS4MAE §3.3: the student encoder used for inference).

    The ViT is timm's `VisionTransformer` (kept as `self.vit`, so timm/MAE-named checkpoints load), without
    a class token: every token is a patch. `encode` also takes the indices of the tokens to keep, which is
    what masked pretraining runs (`emseg_rt.training.pretrain`).
    """

    def __init__(self, config: FovEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = token_vit(config, img_size=config.field_of_view, class_token=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, F) uint8 (or float in [0, 255]) → float32 (x / 255 − mean) / std."""
        scaled = tiles.to(torch.float32) / 255.0
        return (scaled - self.config.pixel_mean) / self.config.pixel_std

    def encode(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised pixels (B, 1, F, F) float → tokens (B, N, C), N = g² (or the kept tokens only).

        keep: optional (B, n) int64 indices into the g² row-major patch grid; only those tokens enter the
        transformer (MAE's encoder sees only visible patches).
        """
        tokens = self.vit._pos_embed(self.vit.patch_embed(pixels))  # (B, g², C), position embeddings added
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.vit.norm(self.vit.blocks(self.vit.norm_pre(tokens)))

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, g², C) row-major tokens → (B, C, g, g)."""
        g = self.config.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], g, g)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of FOVs.

        tiles:   (B, 1, F, F) uint8, F = field_of_view (80).
        returns  (B, embed_dim, g, g) float32 patch tokens, g = F / patch_size ((B, 192, 16, 16) at paper size).
        """
        return self.tokens_to_grid(self.encode(self.normalise(tiles)))
