"""The one way the project builds a timm Vision Transformer encoder (ScSAM's MAE, MAESTER/HiS4MAE's FOV
encoder, Prompt-DAS's DINO ViT-S/8): patch tokens only, no classifier, no pooling, qkv bias (MAE, DINO)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def token_vit(*, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
              mlp_ratio: float, class_token: bool) -> VisionTransformer:
    """timm's `VisionTransformer` returning tokens (`forward_features`: (B, prefix + g², embed_dim)), so
    checkpoints with timm / MAE / DINO names load into it unchanged."""
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                             global_pool="", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, qkv_bias=True, class_token=class_token)
