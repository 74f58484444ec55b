"""The timm ViTs' random initial weights are ours (`models.vit.token_vit`): the same seed gives the same
weights and leaves torch's global generator in the same state whatever timm draws while building a
`VisionTransformer` (timm 1.0.22 draws `pos_embed` with `torch.randn`, 1.0.31 does not), and the weights
follow timm's ViT scheme."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import emseg_rt.models.vit as vit_module
from emseg_rt.models import build

TIMM_VIT_MODELS = ("maester-tiny", "scsam-tiny", "prompt-das-tiny")


def weights_and_next_draw(name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = build(name)
    return model.state_dict(), torch.rand(4)


class TimmThatDrawsMore(VisionTransformer):
    """A timm release that draws more while building (as 1.0.22's `torch.randn` position table does)."""

    def __init__(self, **kwargs) -> None:
        torch.randn(1000)
        super().__init__(**kwargs)
        torch.rand(7)


@pytest.mark.parametrize("name", TIMM_VIT_MODELS)
def test_the_initial_weights_do_not_depend_on_what_timm_draws(name, monkeypatch):
    weights, next_draw = weights_and_next_draw(name)
    again, next_again = weights_and_next_draw(name)
    monkeypatch.setattr(vit_module, "VisionTransformer", TimmThatDrawsMore)
    other_timm, next_other = weights_and_next_draw(name)
    assert weights.keys() == again.keys() == other_timm.keys()
    for key in weights:
        assert torch.equal(weights[key], again[key]) and torch.equal(weights[key], other_timm[key]), key
    assert torch.equal(next_draw, next_again) and torch.equal(next_draw, next_other)


def test_the_initial_weights_follow_timms_vit_scheme():
    torch.manual_seed(1)
    vit = build("prompt-das-vit-s8").encoders.dino_encoder.vit.requires_grad_(False)  # paper size: many values
    assert abs(float(vit.pos_embed.std()) - 0.02) < 0.002 and float(vit.pos_embed.abs().max()) <= 2
    qkv = vit.blocks[0].attn.qkv
    assert abs(float(qkv.weight.std()) - 0.02) < 0.001 and not qkv.bias.any()
    norm = vit.blocks[-1].norm2
    assert bool((norm.weight == 1).all()) and not norm.bias.any()
    patch = vit.patch_embed.proj  # torch's Conv2d default: kaiming-uniform, |w| <= 1 / sqrt(fan_in)
    bound = 1 / (patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]) ** 0.5
    assert float(patch.weight.abs().max()) <= bound and float(patch.weight.std()) > bound / 3
