"""SAM2's image path with EM preprocessing inside: uint8 tiles → one packed embedding tensor.

SAM2's mask decoder reads three image features: the stride-16 embedding and two high-resolution maps
(strides 4 and 8, already projected by the decoder's `conv_s0` / `conv_s1`, which SAM2 runs once per
image in `forward_image`). Every encoder of a pipeline hands its head one (B, C, G, G) tensor, which is
what the exporter, the package's encoder components and the embedding cache carry; so the two
high-resolution maps are folded onto the G×G grid by `pixel_unshuffle` (a lossless reshape) and
concatenated after the embedding. `unpack_sam2_embedding` undoes it exactly in the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.configs import Sam2EncoderConfig
from emseg_rt.models.sam2_hiera import Sam2Backbone

HIGH_RES_FACTORS = (4, 2)  # level 0 (stride 4) and level 1 (stride 8) relative to the stride-16 grid


def packed_channels(d_model: int) -> int:
    """Channels of the packed embedding: d + (d/8)·16 + (d/4)·4 = 4·d (1024 for SAM2's d = 256)."""
    return d_model + (d_model // 8) * 16 + (d_model // 4) * 4


def pack_sam2_embedding(embedding: torch.Tensor, high_res_s0: torch.Tensor, high_res_s1: torch.Tensor
                        ) -> torch.Tensor:
    """embedding (B, d, G, G), high_res_s0 (B, d/8, 4G, 4G), high_res_s1 (B, d/4, 2G, 2G) → (B, 4d, G, G)."""
    return torch.cat([embedding, F.pixel_unshuffle(high_res_s1, 2), F.pixel_unshuffle(high_res_s0, 4)], dim=1)


def unpack_sam2_embedding(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """packed (B, 4d, G, G) → embedding (B, d, G, G), high_res_s0 (B, d/8, 4G, 4G), high_res_s1 (B, d/4, 2G, 2G)."""
    d = packed.shape[1] // 4
    embedding, s1, s0 = packed.split([d, d, 2 * d], dim=1)
    return embedding, F.pixel_shuffle(s0, 4), F.pixel_shuffle(s1, 2)


class Sam2ImageEncoder(nn.Module):
    """Grey uint8 tiles → SAM2's image features for its mask decoder, packed (see the module docstring).

    `image_encoder` is SAM2's trunk + neck; `conv_s0` / `conv_s1` are the decoder's high-resolution
    projections (official keys `sam_mask_decoder.conv_s*`); `no_mem_embed` (1, 1, d) is what SAM2's image
    predictor adds to the stride-16 embedding of a single image (`directly_add_no_mem_embed`).
    """

    def __init__(self, config: Sam2EncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.image_encoder = Sam2Backbone(config)
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, 1, S, S) uint8 (0–255) → (B, 3, S, S) float: grey repeated, ImageNet mean/std × 255."""
        rgb = tiles.to(self.pixel_mean.dtype).expand(-1, 3, -1, -1)
        return (rgb - self.pixel_mean) / self.pixel_std

    def features(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tiles (B, 1, S, S) uint8 → embedding (B, d, S/16, S/16) (with `no_mem_embed`),
        high_res_s0 (B, d/8, S/4, S/4) and high_res_s1 (B, d/4, S/8, S/8)."""
        level0, level1, level2 = self.image_encoder(self.preprocess(tiles))
        embedding = level2 + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embedding, self.conv_s0(level0), self.conv_s1(level1)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of tiles.

        tiles:   (B, 1, S, S) uint8, S = config.img_size.
        returns  (B, 4·d, S/16, S/16) float32 packed features ((B, 1024, 64, 64) at 1024², d = 256).
        """
        return pack_sam2_embedding(*self.features(tiles))
