"""The parts of timm the models use, imported in one place.

timm <= 1.0.22 (what nnU-Net v2's dynamic-network-architectures caps timm to) decorates a class of a model we
never build (hrnet) with `torch.jit.interface`, which torch 2.14 warns about in two lines whenever timm is
imported. The import here hides exactly that warning, and only while timm is imported.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)
    from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed
    from timm.models.tiny_vit import TinyVit
    from timm.models.vision_transformer import Block, VisionTransformer

__all__ = ["Block", "TinyVit", "VisionTransformer", "build_sincos2d_pos_embed", "resample_abs_pos_embed"]
