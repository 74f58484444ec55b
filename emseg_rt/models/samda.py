"""SAMDA (Wang & Xiao, §2.1): nnU-Net's 2D U-Net ("expert") fused with a frozen SAM-type encoder ("generic").

    tiles (B,1,T,T) uint8 ─ tile_encoder (nnU-Net z-score) ─ U-Net encoder E1..E8 ─ skips ─────────┐
                        └─ sam_encoder (SAM / MedSAM ViT or MobileSAM TinyViT, frozen) ─ projector ─┤ concat at E8
                                                                                      U-Net decoder ┘ → K+1 scores

The U-Net is dynamic-network-architectures' `PlainConvUNet` (what nnU-Net builds), so nnU-Net's own weights
load unchanged except for the first transposed convolution of the decoder, which takes E8's channels plus the
projector's: its extra input rows start at zero (`samda_checkpoint.py`), and a zero projector output leaves
the U-Net exactly as it was. The pipeline's encoders are the frozen, parameter-free or frozen-weight parts
(`tile_encoder`, `sam_encoder`); the head holds everything SAMDA trains (projector + U-Net).
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.configs import PipelineConfig, UNetConfig
from emseg_rt.models.sam_encoder import SamImageEncoder
from emseg_rt.models.samda_tiny_vit import MobileSamEncoder

# nnU-Net floors the std at 1e-8; FP16 graphs flush 1e-8 to 0 (a constant tile, e.g. padding, would give 0/0).
# 1e-3 on the 0–255 scale survives FP16 and changes nothing but tiles that are constant to within 1e-3.
STD_FLOOR = 1e-3


class TileNormaliser(nn.Module):
    """nnU-Net's `ZScoreNormalization` for non-CT images: each tile to zero mean and unit variance."""

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, 1, T, T) uint8 → (B, 1, T, T) float32, (x − mean) / max(std, STD_FLOOR) per tile."""
        pixels = tiles.float()
        mean = pixels.mean(dim=(2, 3), keepdim=True)
        std = (pixels - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
        return (pixels - mean) / std.clamp_min(STD_FLOOR)


def build_unet(config: UNetConfig, num_outputs: int) -> PlainConvUNet:
    """nnU-Net's 2D PlainConvUNet: `n_stages` stages (stride 1, then 2), 3×3 convs, InstanceNorm, LeakyReLU,
    `num_outputs` output channels (classes + background), He initialisation as nnU-Net applies it."""
    unet = PlainConvUNet(
        input_channels=1, n_stages=config.n_stages, features_per_stage=config.features, conv_op=nn.Conv2d,
        kernel_sizes=[[config.kernel_size] * 2] * config.n_stages,
        strides=[[1, 1]] + [[2, 2]] * (config.n_stages - 1),
        n_conv_per_stage=config.convs_per_stage, num_classes=num_outputs,
        n_conv_per_stage_decoder=config.convs_per_stage, conv_bias=True, norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"eps": config.norm_eps, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )
    unet.apply(PlainConvUNet.initialize)
    return unet


class Projector(nn.Module):
    """SAMDA's embedding projector: three 3×3 convolutions, generic embedding → bottleneck grid.

    Conv – InstanceNorm – LeakyReLU – Conv – InstanceNorm – LeakyReLU – Conv (the last one plain, so that
    zeroing it zeroes the projection).
    """

    def __init__(self, in_channels: int, channels: int, strides: tuple[int, int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = (in_channels, channels, channels, channels)
        for i, stride in enumerate(strides):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=stride, padding=1))
            if i < len(strides) - 1:
                layers += [nn.InstanceNorm2d(widths[i + 1], affine=True), nn.LeakyReLU(0.01, inplace=True)]
        self.convs = nn.Sequential(*layers)

    def forward(self, sam_embedding: torch.Tensor) -> torch.Tensor:
        """sam_embedding (B, C_g, G, G) float32 → projection (B, P, G/Π strides, G/Π strides) float32."""
        return self.convs(sam_embedding)


class SamdaHead(nn.Module):
    """Projector + U-Net (+ class merge): embeddings → class logits and labels.

    The U-Net's K+1 softmax scores (background first, nnU-Net's layout) become the pipeline's K class logits
    as score_k − score_background, so `labels` (0 where no class logit is > 0) is exactly nnU-Net's argmax.
    """

    can_skip_logits = True  # forward(..., want_logits=False): labels only (emseg_rt.kernels.class_merge)

    def __init__(self, config: PipelineConfig, generic_channels: int) -> None:
        super().__init__()
        samda = config.samda
        assert samda is not None
        self.num_classes = config.num_classes
        self.unet = build_unet(samda.unet, config.num_classes + 1)
        self.projector = Projector(generic_channels, samda.projector_channels, samda.projector_strides)
        deepest, above = samda.unet.features[-1], samda.unet.features[-2]
        widened = nn.ConvTranspose2d(deepest + samda.projector_channels, above, 2, 2, bias=True)
        PlainConvUNet.initialize(widened)
        self.unet.decoder.transpconvs[0] = widened  # E8 ⊕ projection → D1
        self.merge = ClassMerge(config.tile, config.num_classes)

    def class_scores(self, tile_embedding: torch.Tensor, sam_embedding: torch.Tensor) -> torch.Tensor:
        """tile_embedding (B, 1, T, T) float32 (z-scored tile), sam_embedding (B, C_g, G, G) float32
        → nnU-Net scores (B, K+1, T, T) float32, background first (softmax logits)."""
        skips = list(self.unet.encoder(tile_embedding))  # E1..E8: (B, F_i, T/2^i, T/2^i)
        skips[-1] = torch.cat([skips[-1], self.projector(sam_embedding)], dim=1)  # (B, F_8 + P, T/2^7, T/2^7)
        return self.unet.decoder(skips)

    def forward(self, tile_embedding: torch.Tensor, sam_embedding: torch.Tensor,
                want_logits: bool = True) -> dict[str, torch.Tensor]:
        """tile_embedding (B, 1, T, T) float32, sam_embedding (B, C_g, G, G) float32
        → logits (B, K, T, T) float32 (unless want_logits is False) and labels (B, T, T) uint8 (0 = background)."""
        scores = self.class_scores(tile_embedding, sam_embedding)
        return self.merge(scores[:, 1:] - scores[:, :1], want_logits=want_logits)


def check_samda_shapes(config: PipelineConfig, grid: int) -> None:
    """ValueError when the projector's output grid is not the U-Net's bottleneck (E8) for the tile."""
    samda = config.samda
    assert samda is not None
    reduction = 1
    for stride in samda.projector_strides:
        reduction *= stride
    bottleneck = samda.unet.bottleneck(config.tile)
    if config.tile % 2 ** (samda.unet.n_stages - 1) or grid % reduction or grid // reduction != bottleneck:
        raise ValueError(f"{config.name}: projector output {grid}/{reduction} does not match the U-Net bottleneck "
                         f"{config.tile}/2^{samda.unet.n_stages - 1}")


def samda_parts(config: PipelineConfig) -> tuple[dict[str, nn.Module], nn.Module]:
    """samda-*'s encoders `tile_encoder` (z-score) and `sam_encoder` (SAM ViT or MobileSAM TinyViT), and its
    head `SamdaHead` (random weights; `pipeline.build_pipeline` makes the pipeline of them)."""
    samda = config.samda
    assert samda is not None
    if (samda.tiny_vit is None) == (config.sam_encoder is None):
        raise ValueError(f"{config.name}: SAMDA needs exactly one generic encoder (sam_encoder or samda.tiny_vit)")
    if samda.tiny_vit is not None:
        generic: nn.Module = MobileSamEncoder(samda.tiny_vit)
        channels, grid, size = samda.tiny_vit.out_chans, samda.tiny_vit.grid, samda.tiny_vit.img_size
    else:
        assert config.sam_encoder is not None
        generic = SamImageEncoder(config.sam_encoder)
        channels, grid, size = config.sam_encoder.out_chans, config.sam_encoder.grid, config.sam_encoder.img_size
    if size != config.tile:
        raise ValueError(f"{config.name}: generic encoder input {size} != tile {config.tile}")
    check_samda_shapes(config, grid)
    encoders = {"tile_encoder": TileNormaliser(), "sam_encoder": generic}
    return encoders, SamdaHead(config, channels)
