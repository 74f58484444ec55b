"""The one way the project builds a timm Vision Transformer encoder (ScSAM's MAE, MAESTER/HiS4MAE's FOV
encoder, Prompt-DAS's DINO ViT-S/8): patch tokens only, no classifier, no pooling, qkv bias (MAE, DINO)."""

from __future__ import annotations

from typing import Protocol

from timm.models.vision_transformer import VisionTransformer


class VitShape(Protocol):
    """What an encoder config says about its ViT (MaeEncoderConfig, FovEncoderConfig, DinoEncoderConfig)."""

    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float


def token_vit(shape: VitShape, *, img_size: int, class_token: bool) -> VisionTransformer:
    """timm's `VisionTransformer` of `shape` over img_size² inputs, returning tokens (`forward_features`:
    (B, prefix + g², embed_dim)), so checkpoints with timm / MAE / DINO names load into it unchanged."""
    return VisionTransformer(img_size=img_size, patch_size=shape.patch_size, in_chans=shape.in_chans,
                             num_classes=0, global_pool="", embed_dim=shape.embed_dim, depth=shape.depth,
                             num_heads=shape.num_heads, mlp_ratio=shape.mlp_ratio, qkv_bias=True,
                             class_token=class_token)
