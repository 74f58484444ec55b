"""The pixel refinement (`PixelRefineConfig`, the default model's since issue 27): a pixel encoder component and a
residual on the decoder's logits at full resolution, starting as the identity."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from emseg_rt.models import get_config
from emseg_rt.models.pipeline import build_pipeline
from emseg_rt.models.configs import PixelRefineConfig
from emseg_rt.models.default_model import DEFAULT_MODEL
from emseg_rt.training.losses import scsam_loss

TINY = dataclasses.replace(get_config("scsam-tiny"), name="scsam-tiny-refined", pixel_refine=PixelRefineConfig(width=8))


def test_the_default_model_has_a_pixel_encoder_and_a_refiner():
    config = get_config(DEFAULT_MODEL)
    assert config.pixel_refine is not None
    model = build_pipeline(config)
    assert list(model.encoders) == ["sam_encoder", "mae_encoder", "pixel_encoder"]
    tiles = model.example_inputs(batch=2, seed=1)["tiles"]
    with torch.no_grad():
        pixels = model.embed(tiles)["pixel_embedding"]
    assert pixels.shape == (2, config.pixel_refine.width, config.tile, config.tile)


def test_an_untrained_refiner_leaves_the_decoder_logits_as_they_are():
    """Built, the refiner's last convolution is zero: the logits are the decoder's, bilinearly upsampled (as the
    class merge of a pipeline without the refinement), and so are the labels."""
    torch.manual_seed(0)
    model = build_pipeline(TINY).eval()
    tiles = model.example_inputs(batch=2, seed=3)["tiles"]
    with torch.no_grad():
        embeddings = model.embed(tiles)
        embeddings.pop("pixel_embedding")
        low_res = model.head.low_res_logits(model.head.fusion(**embeddings))
        out = model(tiles)
    expected = F.interpolate(low_res, size=(TINY.tile, TINY.tile), mode="bilinear", align_corners=False)
    assert torch.equal(out["logits"], expected)
    best, index = expected.max(dim=1)
    assert torch.equal(out["labels"].long(), torch.where(best > 0, index + 1, 0))


def test_the_refinement_changes_the_logits_once_trained_and_labels_only_agrees():
    torch.manual_seed(0)
    model = build_pipeline(TINY).eval()
    with torch.no_grad():
        for parameter in model.head.refiner.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    tiles = model.example_inputs(batch=2, seed=5)["tiles"]
    with torch.no_grad():
        embeddings = model.embed(tiles)
        pixels = embeddings.pop("pixel_embedding")
        upsampled = F.interpolate(model.head.low_res_logits(model.head.fusion(**embeddings)),
                                  size=(TINY.tile, TINY.tile), mode="bilinear", align_corners=False)
        out = model(tiles)
        labels_only = model(tiles, want_logits=False)
    assert out["logits"].shape == upsampled.shape
    assert not torch.allclose(out["logits"], upsampled)
    assert pixels.shape[1] == 8
    assert torch.equal(labels_only["labels"], out["labels"])


def test_the_loss_trains_the_refinement():
    """scsam_loss reaches the refiner and the pixel encoder: after one Adam step the refined logits differ."""
    torch.manual_seed(0)
    model = build_pipeline(TINY).train()
    tiles = model.example_inputs(batch=2, seed=7)["tiles"]
    labels = torch.randint(0, 4, (2, TINY.tile, TINY.tile))
    terms = scsam_loss(model.head, model.embed(tiles), labels, bce_weight=2.0)
    terms.total.backward()
    assert model.head.refiner.convs[-1].weight.grad.abs().sum() > 0
    assert any(p.grad is not None for p in model.encoders["pixel_encoder"].parameters())


def test_a_vanilla_sam_head_refuses_a_pixel_refinement():
    config = dataclasses.replace(get_config("vanilla-sam-tiny"), pixel_refine=PixelRefineConfig())
    with pytest.raises(ValueError, match="pixel_refine needs a class-prompted head"):
        build_pipeline(config)


def test_a_refining_head_without_the_pixel_embedding_says_what_it_needs():
    model = build_pipeline(TINY).eval()
    embeddings = model.embed(model.example_inputs(batch=1, seed=2)["tiles"])
    embeddings.pop("pixel_embedding")
    with torch.no_grad(), pytest.raises(ValueError, match="pixel_embedding"):
        model.head(**embeddings)
