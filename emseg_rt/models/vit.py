"""The one way the project builds a timm Vision Transformer encoder (ScSAM's MAE, MAESTER/HiS4MAE's FOV
encoder, Prompt-DAS's DINO ViT-S/8): patch tokens only, no classifier, no pooling, qkv bias (MAE, DINO).

The random initial weights are ours, not timm's: timm changes what it draws while building a ViT between
releases (1.0.22 draws `pos_embed` with `torch.randn`, 1.0.31 does not), which would shift torch's global
random stream and so change every weightless model and every later draw with the timm version. `token_vit`
builds the ViT under `torch.random.fork_rng` (timm's draws are thrown away) and then draws every parameter
itself, in one fixed order, with timm's ViT scheme, so a seed gives the same weights on every timm release.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from emseg_rt.models.timm_parts import VisionTransformer


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
    (B, prefix + g², embed_dim)), so checkpoints with timm / MAE / DINO names load into it unchanged.

    Its weights are drawn by `init_vit_weights` from torch's global generator, whatever the timm version."""
    with torch.random.fork_rng(devices=[]):
        vit = VisionTransformer(img_size=img_size, patch_size=shape.patch_size, in_chans=shape.in_chans,
                                num_classes=0, global_pool="", embed_dim=shape.embed_dim, depth=shape.depth,
                                num_heads=shape.num_heads, mlp_ratio=shape.mlp_ratio, qkv_bias=True,
                                class_token=class_token, weight_init="skip")
    init_vit_weights(vit)
    return vit


def init_vit_weights(vit: VisionTransformer) -> None:
    """Draw every parameter of `vit` with timm's ViT scheme (`init_weights_vit_timm`), in a fixed order:
    pos_embed trunc-normal std .02, class token normal std 1e-6, then module by module (`vit.modules()`
    order) Linear weight trunc-normal std .02 and bias 0, the patch-embedding conv as torch's default,
    LayerNorm weight 1 and bias 0. A parameter of any other kind (a layer a newer timm adds) is a bug here,
    raised rather than left with whatever timm drew."""
    with torch.no_grad():
        if vit.pos_embed is not None:
            nn.init.trunc_normal_(vit.pos_embed, std=0.02)
        if vit.cls_token is not None:
            nn.init.normal_(vit.cls_token, std=1e-6)
        drawn = {id(token) for token in (vit.pos_embed, vit.cls_token) if token is not None}
        for module in vit.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.LayerNorm)):
                module.reset_parameters()
            else:
                continue
            drawn.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, p in vit.named_parameters() if id(p) not in drawn]
    if missed:
        raise RuntimeError(f"init_vit_weights does not know how to draw {missed}")
