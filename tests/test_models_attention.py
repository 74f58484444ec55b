"""SDPA attention computes the same function as segment_anything's explicit attention."""

import importlib.util

import pytest
import torch

from emseg_rt.models import build
from emseg_rt.models.attention import SdpaAttention, use_sdpa_attention


def test_sdpa_encoder_matches_eager_encoder_and_keeps_state_dict_keys():
    model = build("scsam-tiny").eval()
    with torch.no_grad():
        for name, param in model.encoders["sam_encoder"].named_parameters():
            if "rel_pos" in name:  # SAM zero-initialises these; make the bias term count
                param.normal_(0, 0.5)
    tiles = model.example_inputs(batch=2, seed=7)["tiles"]
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = model(tiles)["logits"]
        assert use_sdpa_attention(model) == 2  # tiny SAM: 2 blocks (one windowed, one global)
        fused = model(tiles)["logits"]
    assert list(model.state_dict()) == keys
    rel = float((fused - eager).norm() / eager.norm())
    assert rel < 1e-5


def _sam_attention(seed: int, dim: int, heads: int, size: tuple[int, int]):
    """segment_anything's Attention with relative position, its rel_pos tables drawn (SAM zero-initialises
    them), and an input x (2, H, W, dim)."""
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(seed)
    attention = Attention(dim, num_heads=heads, qkv_bias=True, use_rel_pos=True, input_size=size).eval()
    with torch.no_grad():
        attention.rel_pos_h.normal_(0, 0.5)
        attention.rel_pos_w.normal_(0, 0.5)
    return attention, torch.randn(2, *size, dim)


@pytest.mark.parametrize("size", [(5, 5), (4, 6)])
def test_sdpa_attention_module_matches_segment_anything_attention(size):
    """One attention module: SdpaAttention (decomposed factors → emseg_rt.kernels.rel_pos_attention, the
    SDPA reference on a CPU) against segment_anything's explicit softmax, square and rectangular grids."""
    attention, x = _sam_attention(3, dim=32, heads=2, size=size)
    with torch.no_grad():
        expected = attention(x)
        fused = SdpaAttention(attention)(x)
    assert fused.shape == expected.shape == x.shape
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sdpa_attention_runs_the_triton_kernel_on_cuda(dtype):
    """On CUDA, SdpaAttention takes the fused Triton kernel (auto) and still computes SAM's attention:
    14² windows and a 64² global grid, head dim 80 (ViT-H)."""
    for size in ((14, 14), (64, 64)):
        attention, x = _sam_attention(4, dim=160, heads=2, size=size)
        attention, x = attention.cuda().to(dtype), x.cuda().to(dtype)
        with torch.no_grad():
            fused = SdpaAttention(attention)(x)  # shares the weights: run it before .float() below
            expected = attention.float()(x.float())
        assert float((fused.float() - expected).abs().max()) < (1e-4 if dtype == torch.float32 else 5e-3), size
