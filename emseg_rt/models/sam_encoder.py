"""SAM's ViT image encoder with EM preprocessing inside the module."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from emseg_rt.models.configs import SamEncoderConfig


class SamImageEncoder(nn.Module):
    """Grey uint8 tiles → SAM image embedding.

    The tile is cast to float, repeated to 3 channels and normalised with SAM's pixel mean and std,
    then encoded by segment_anything's `ImageEncoderViT` (kept as `self.image_encoder`, so the official
    checkpoint's `image_encoder.*` keys load unchanged).
    """

    def __init__(self, config: SamEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=3,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles: (B, 1, S, S) uint8 or float on the 0–255 scale → (B, 3, S, S) float, SAM-normalised."""
        rgb = tiles.to(self.pixel_mean.dtype).expand(-1, 3, -1, -1)
        return (rgb - self.pixel_mean) / self.pixel_std

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of tiles.

        tiles:   (B, 1, S, S) uint8, S = config.img_size.
        returns  (B, out_chans, S/16, S/16) float32 SAM embedding ((B, 256, 64, 64) at 1024²).
        """
        return self.image_encoder(self.preprocess(tiles))
