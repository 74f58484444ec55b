"""Every registry entry builds and runs; paper sizes have the published parameter counts."""

import pytest
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.models import build, get_config, list_models
from emseg_rt.models.info import model_info

FAMILIES = ("vanilla-sam", "sam-star", "mae-star", "surgicalsam", "scsam")


def test_registry_has_every_family_in_every_size():
    names = set(list_models())
    for family in FAMILIES:
        for size in ("vit-h", "vit-b", "tiny"):
            assert f"{family}-{size}" in names


@pytest.mark.parametrize("name", [f"{family}-tiny" for family in FAMILIES])
def test_tiny_pipeline_outputs_logits_and_labels(name):
    model = build(name).eval()
    config = model.config
    inputs = model.example_inputs(batch=2, seed=1)
    with torch.no_grad():
        out = model(**inputs)
    k, t = config.num_classes, config.tile
    assert out["logits"].shape == (2, k, t, t) and out["logits"].dtype == torch.float32
    assert out["labels"].shape == (2, t, t) and out["labels"].dtype == torch.uint8
    assert torch.isfinite(out["logits"]).all()
    assert int(out["labels"].max()) <= k
    # labels are the class merge of the logits: argmax + 1 where the best logit is positive
    best, best_class = out["logits"].max(dim=1)
    expected = torch.where(best > 0, best_class + 1, 0).to(torch.uint8)
    assert torch.equal(out["labels"], expected)


def test_batch_elements_are_independent():
    model = build("scsam-tiny").eval()
    tiles = model.example_inputs(batch=3, seed=2)["tiles"]
    with torch.no_grad():
        batched = model(tiles)["logits"]
        single = model(tiles[1:2])["logits"]
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-5)


def test_class_override_changes_the_number_of_outputs():
    model = build("sam-star-tiny", classes=("a", "b", "c", "d", "e")).eval()
    with torch.no_grad():
        out = model(**model.example_inputs(batch=1))
    assert out["logits"].shape[1] == 5


def test_unknown_model_and_override_are_clear_errors():
    with pytest.raises(EmsegError, match="unknown model 'nope'"):
        build("nope")
    with pytest.raises(EmsegError, match="unknown override"):
        build("scsam-tiny", not_a_field=1)


@pytest.mark.parametrize(
    ("name", "sam_encoder_params"),
    [("scsam-vit-h", 637_026_048), ("sam-star-vit-b", 89_670_912)],
)
def test_paper_size_sam_encoder_parameter_counts(name, sam_encoder_params):
    with torch.device("meta"):
        model = build(name)
    count = sum(p.numel() for p in model.encoders["sam_encoder"].parameters())
    assert count == sam_encoder_params


def test_paper_size_shapes_on_meta():
    with torch.device("meta"):
        model = build("scsam-vit-h").eval().requires_grad_(False)
        tiles = torch.empty(1, 1, 1024, 1024, dtype=torch.uint8)
        embeddings = model.embed(tiles)
        out = model.head(**embeddings)
    assert embeddings["sam_embedding"].shape == (1, 256, 64, 64)
    assert embeddings["mae_embedding"].shape == (1, 512, 64, 64)
    assert out["logits"].shape == (1, 3, 1024, 1024)


def test_model_info_flops_match_the_design_figures():
    scsam_h = model_info("scsam-vit-h")
    scsam_b = model_info("scsam-vit-b")
    assert 6000 < scsam_h.gflops_per_slice < 6600  # DESIGN.md §5: ≈ 6.3 TFLOP per 1024² slice
    assert 1200 < scsam_b.gflops_per_slice < 1450  # ≈ 1.3 TFLOP
    assert scsam_h.tile == 1024 and scsam_h.classes == ["nucleus", "mitochondria", "granules"]


def test_config_is_frozen():
    config = get_config("scsam-tiny")
    with pytest.raises(Exception):
        config.tile = 3  # type: ignore[misc]
