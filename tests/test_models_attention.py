"""SDPA attention computes the same function as segment_anything's explicit attention."""

import torch

from emseg_rt.models import build
from emseg_rt.models.attention import use_sdpa_attention


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
