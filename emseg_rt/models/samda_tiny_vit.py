"""MobileSAM's image encoder (TinyViT-5M + SAM's neck) on timm's `TinyVit` trunk, with EM preprocessing inside.

timm's TinyViT has MobileSAM's layers and shapes, under other names, with one difference: MobileSAM's last
patch merging (into the 320-dim stage) uses stride 1, so the 1024² input keeps a 64×64 grid, where timm's uses
stride 2. We build timm's trunk with MobileSAM's widths, set that depthwise conv's stride to
`config.last_merge_stride`, drop timm's classifier head and add SAM's neck. `mobile_sam_keys` maps an official
MobileSAM checkpoint (`image_encoder.*`, TinyViT's original names) to ours.
"""

from __future__ import annotations

import re

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from emseg_rt.models.configs import TinyVitEncoderConfig
from emseg_rt.models.timm_parts import TinyVit


class TinyVitTrunk(nn.Module):
    """timm's TinyViT patch embedding and stages, MobileSAM's layout; classifier head left out.

    pixels (B, 3, S, S) float → features (B, embed_dims[-1], S/16, S/16) at MobileSAM's strides.
    """

    def __init__(self, config: TinyVitEncoderConfig) -> None:
        super().__init__()
        vit = TinyVit(
            in_chans=3, num_classes=0, embed_dims=config.embed_dims, depths=config.depths,
            num_heads=config.num_heads, window_sizes=config.window_sizes, mlp_ratio=config.mlp_ratio,
            drop_path_rate=0.0, mbconv_expand_ratio=config.mbconv_expand_ratio,
            local_conv_size=config.local_conv_size,
        )
        self.patch_embed = vit.patch_embed
        self.stages = vit.stages
        last_merge = self.stages[-1].downsample.conv2.conv  # depthwise 3×3 of the last PatchMerging
        last_merge.stride = (config.last_merge_stride, config.last_merge_stride)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) float, SAM-normalised → (B, C_last, G, G) float32, G = config.grid."""
        return self.stages(self.patch_embed(pixels))


class MobileSamEncoder(nn.Module):
    """Grey uint8 tiles → MobileSAM image embedding (B, 256, 64, 64) at 1024², as `SamImageEncoder` for SAM.

    Kept as `self.image_encoder` (trunk + neck), so that our keys read `image_encoder.{patch_embed,stages,neck}`.
    """

    def __init__(self, config: TinyVitEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = nn.Module()
        self.image_encoder.trunk = TinyVitTrunk(config)
        self.image_encoder.neck = nn.Sequential(
            nn.Conv2d(config.embed_dims[-1], config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of tiles.

        tiles:   (B, 1, S, S) uint8, S = config.img_size.
        returns  (B, out_chans, G, G) float32 ((B, 256, 64, 64) at 1024²).
        """
        rgb = tiles.to(self.pixel_mean.dtype).expand(-1, 3, -1, -1)
        pixels = (rgb - self.pixel_mean) / self.pixel_std
        return self.image_encoder.neck(self.image_encoder.trunk(pixels))


# MobileSAM (TinyViT's original names) → timm names, applied in order to the part after `image_encoder.`.
_RENAMES = (
    (r"^patch_embed\.seq\.0\.", "trunk.patch_embed.conv1."),
    (r"^patch_embed\.seq\.2\.", "trunk.patch_embed.conv2."),
    # layers[i].downsample (end of stage i) is timm's stages[i+1].downsample (start of stage i+1)
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"trunk.stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"trunk.stages.\1.blocks."),
    (r"\.c\.(weight|bias)$", r".conv.\1"),
)
MOBILE_SAM_UNUSED = ("norm_head.", "head.")  # TinyViT's classifier, in the file but unused by MobileSAM


def mobile_sam_keys(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """MobileSAM's `image_encoder.*` weights → ours under `prefix` (e.g. 'encoders.sam_encoder.image_encoder.').

    `neck.*` keeps its names; the classifier (`norm_head`, `head`) and the recomputed
    `attention_bias_idxs` buffers are dropped.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("image_encoder.")
        if name.startswith(MOBILE_SAM_UNUSED) or name.endswith("attention_bias_idxs"):
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        mapped[prefix + name] = value
    return mapped
