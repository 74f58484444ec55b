"""ScSAM's MAE encoder: a timm ViT run over a grid of tiles of the slice, token grids stitched back."""

from __future__ import annotations

import torch
from torch import nn

from emseg_rt.models.configs import MaeEncoderConfig
from emseg_rt.models.vit import token_vit


class MaeImageEncoder(nn.Module):
    """Grey uint8 slices → stitched MAE embedding (ScSAM supp. §1.1).

    A (S, S) slice is cut into `tiles_per_side`² tiles of `field_of_view`², all tiles of the batch are
    encoded as one batch by timm's `VisionTransformer` (kept as `self.vit`, so MAE checkpoints with timm
    names load unchanged), the class token is dropped and the token grids are stitched in place.
    """

    def __init__(self, config: MaeEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = token_vit(config, img_size=config.field_of_view, class_token=True)

    def split_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) → (B·t·t, 1, F, F) with t = tiles_per_side, F = field_of_view, row-major."""
        t, f = self.config.tiles_per_side, self.config.field_of_view
        b = tiles.shape[0]
        return tiles.reshape(b, 1, t, f, t, f).permute(0, 2, 4, 1, 3, 5).reshape(b * t * t, 1, f, f)

    def stitch_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor:
        """(B·t·t, g·g, D) patch tokens → (B, D, t·g, t·g) embedding, tiles back in place."""
        t, g = self.config.tiles_per_side, self.config.tile_grid
        d = tokens.shape[-1]
        grid = tokens.reshape(batch, t, t, g, g, d).permute(0, 5, 1, 3, 2, 4)
        return grid.reshape(batch, d, t * g, t * g)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of slices.

        tiles:   (B, 1, S, S) uint8, S = tiles_per_side · field_of_view (1024).
        returns  (B, embed_dim, S/16, S/16) float32 ((B, 512, 64, 64) at 1024²).
        """
        batch = tiles.shape[0]
        scaled = tiles.to(torch.float32) / 255.0
        normalised = (scaled - self.config.pixel_mean) / self.config.pixel_std
        tokens = self.vit.forward_features(self.split_tiles(normalised))
        patch_tokens = tokens[:, self.vit.num_prefix_tokens :]
        return self.stitch_tokens(patch_tokens, batch)
