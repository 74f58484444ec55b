"""The Prompt-DAS family: registry entries, paper shapes and the DINO ViT-S/8 size on the meta device, any
number of point prompts (none included), padding points that provably change nothing, labels that matter,
and the masked decoder equal to SAM's two-way transformer when nothing is masked."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from segment_anything.modeling import TwoWayTransformer

from emseg_rt.models import build, get_config, list_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "prompt-das-tiny"


def _tiny(**overrides):
    return build(TINY, **overrides).eval()


def _points(batch: int, count: int, tile: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, count, 2) random pixel coordinates and (batch, count) random 0/1 labels."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, count, 2, generator=gen) * tile
    return coords, torch.randint(0, 2, (batch, count), generator=gen)


def _pad(coords: torch.Tensor, labels: torch.Tensor, extra: int, fill: float = -1.0, label: int = -1):
    """Append `extra` padding points (coordinates `fill`, label `label`) to every row."""
    b = coords.shape[0]
    pad_coords = torch.full((b, extra, 2), fill)
    pad_labels = torch.full((b, extra), label, dtype=labels.dtype)
    return torch.cat([coords, pad_coords], dim=1), torch.cat([labels, pad_labels], dim=1)


def _run(model, tiles, coords, labels) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(tiles, point_coords=coords, point_labels=labels)


def test_registry_has_the_paper_and_tiny_sizes():
    assert {"prompt-das-vit-s8", TINY} <= set(list_models())
    config = get_config("prompt-das-vit-s8")
    encoder = config.dino_encoder
    assert (config.tile, encoder.patch_size, encoder.embed_dim, encoder.depth, encoder.num_heads) == (384, 8, 384, 12, 6)
    assert config.prompt_dim == 384 and config.classes == ("mitochondria",) and config.max_points == 100
    assert (config.prompt_das.transformer_depth, config.prompt_das.mlp_dim, config.prompt_das.num_heads) == (2, 2048, 8)
    model = build(TINY)
    assert model.prompt_names == ("point_coords", "point_labels")
    assert model.output_names == ("logits", "labels", "density")


def test_paper_size_shapes_and_vit_s8_size_on_meta():
    """384² → (B, 384, 48, 48) tokens, (B, 1, 384, 384) logits and density; the encoder is DINO's ViT-S/8
    (timm's vit_small_patch8, no head) less its class token, with a position table for the 48² grid."""
    with torch.device("meta"):
        model = build("prompt-das-vit-s8").eval().requires_grad_(False)
        inputs = model.example_inputs(batch=2, device="meta")
        embeddings = model.embed(inputs["tiles"])
        out = model(**inputs)
        dino = timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0)
    assert tuple(inputs["point_coords"].shape) == (2, 100, 2) and tuple(inputs["point_labels"].shape) == (2, 100)
    assert tuple(embeddings["dino_embedding"].shape) == (2, 384, 48, 48)
    assert tuple(out["logits"].shape) == (2, 1, 384, 384) and tuple(out["labels"].shape) == (2, 384, 384)
    assert tuple(out["density"].shape) == (2, 1, 384, 384)
    ours = sum(p.numel() for p in model.encoders["dino_encoder"].parameters())
    timm_count = sum(p.numel() for p in dino.parameters())
    assert timm_count == 21_670_272  # vit_small_patch8_224.dino without its head: ≈ 21.7 M
    assert ours == timm_count - 384 - 785 * 384 + 48 * 48 * 384 == 22_253_184
    assert {k for k in model.encoders["dino_encoder"].vit.state_dict()} == set(dino.state_dict()) - {"cls_token"}


@pytest.mark.parametrize("real_points", [0, 2, 4])
def test_tiny_shapes_dtypes_and_labels_for_any_number_of_points(real_points):
    model = _tiny()
    tile = model.config.tile
    tiles = model.example_inputs(batch=2, seed=1)["tiles"]
    coords, labels = _pad(*_points(2, real_points, tile, seed=2), extra=4 - real_points)
    out = _run(model, tiles, coords, labels)
    assert out["logits"].shape == (2, 1, tile, tile) and out["logits"].dtype == torch.float32
    assert out["labels"].shape == (2, tile, tile) and out["labels"].dtype == torch.uint8
    assert out["density"].shape == (2, 1, tile, tile) and out["density"].dtype == torch.float32
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["density"]).all()
    assert (out["density"] >= 0).all() and (out["density"] > 0).any()
    assert torch.equal(out["labels"], (out["logits"][:, 0] > 0).to(torch.uint8))


def test_padding_points_change_nothing():
    """Where padding sits, what label value marks it, even NaN coordinates: bit-identical outputs. How many
    padding points there are (none at all included): identical up to float summation order."""
    model = _tiny()
    tile = model.config.tile
    tiles = model.example_inputs(batch=2, seed=3)["tiles"]
    coords, labels = _points(2, 1, tile, seed=4)
    reference = _run(model, tiles, *_pad(coords, labels, extra=2))
    moved = _pad(coords, labels, extra=2, fill=17.0)
    moved[0][:, 1:] = torch.rand(2, 2, 2) * tile
    for variant in (moved, _pad(coords, labels, extra=2, fill=float("nan")), _pad(coords, labels, 2, label=-7)):
        out = _run(model, tiles, *variant)
        for name in ("logits", "labels", "density"):
            assert torch.equal(out[name], reference[name]), name
    for extra in (0, 1, 5):
        out = _run(model, tiles, *_pad(coords, labels, extra=extra))
        torch.testing.assert_close(out["logits"], reference["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["density"], reference["density"], rtol=1e-5, atol=1e-5)
    # M = 0: all padding is no points at all.
    empty = _run(model, tiles, torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.int64))
    all_padding = _run(model, tiles, *_pad(torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.int64), extra=4))
    torch.testing.assert_close(all_padding["logits"], empty["logits"], rtol=1e-5, atol=1e-5)


def test_a_points_label_and_place_matter():
    model = _tiny()
    tiles = model.example_inputs(batch=1, seed=5)["tiles"]
    coords = torch.tensor([[[20.0, 30.0], [0.0, 0.0]]])
    positive = _run(model, tiles, coords, torch.tensor([[1, -1]]))
    negative = _run(model, tiles, coords, torch.tensor([[0, -1]]))
    none = _run(model, tiles, coords, torch.tensor([[-1, -1]]))
    elsewhere = _run(model, tiles, coords.flip(-1), torch.tensor([[1, -1]]))
    for other in (negative, none, elsewhere):
        assert (other["logits"] - positive["logits"]).abs().max() > 1e-3
        assert (other["density"] - positive["density"]).abs().max() > 1e-4
    # The paper's encoder ("a standard positional embedding"): a point's label does not enter it.
    head = dataclasses.replace(get_config(TINY).prompt_das, label_embeddings=False)
    torch.manual_seed(0)
    unlabelled = _tiny(prompt_das=head)
    assert torch.equal(_run(unlabelled, tiles, coords, torch.tensor([[1, -1]]))["logits"],
                       _run(unlabelled, tiles, coords, torch.tensor([[0, -1]]))["logits"])


def test_batch_rows_with_different_point_counts_are_independent():
    model = _tiny()
    inputs = model.example_inputs(batch=3, seed=6)
    batched = _run(model, inputs["tiles"], inputs["point_coords"], inputs["point_labels"])
    single = _run(model, inputs["tiles"][1:2], inputs["point_coords"][1:2], inputs["point_labels"][1:2])
    torch.testing.assert_close(batched["logits"][1:2], single["logits"], rtol=1e-5, atol=1e-5)
    assert (inputs["point_labels"] == -1).any(dim=1).all()  # example inputs always carry some padding


def test_unmasked_decoder_is_sams_two_way_transformer():
    """With every token valid, the masked transformer computes what segment_anything's does, same weights."""
    model = _tiny()
    ours = model.head.transformer
    sams = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=2, mlp_dim=64)
    sams.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(8)
    image, pe, tokens = torch.randn(2, 32, 8, 8, generator=gen), torch.randn(2, 32, 8, 8, generator=gen), \
        torch.randn(2, 5, 32, generator=gen)
    with torch.no_grad():
        expected = sams(image, pe, tokens)
        got = ours(image, pe, tokens, torch.ones(2, 5, dtype=torch.bool))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_encoder_and_head_widths_must_agree():
    config = get_config(TINY)
    with pytest.raises(ValueError, match="no projection"):
        build(TINY, prompt_dim=64)
    with pytest.raises(ValueError, match="one class"):
        build(TINY, classes=("a", "b"))
    assert config.prompt_dim == config.dino_encoder.embed_dim


def _dino_backbone(config, img_size: int) -> dict[str, torch.Tensor]:
    """A DINO-layout backbone state dict (timm's ViT with its class token, as dino_deitsmall8_pretrain.pth)
    of the tiny encoder's width and depth at `img_size`, random weights."""
    torch.manual_seed(3)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, num_classes=0)
    return vit.state_dict()


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_dino_backbone_loads_into_the_encoder(tmp_path, wrapped):
    """DINO's released layout (class token, 28² table at 224²) → our encoder: blocks equal, class token dropped,
    the table resampled to the window's grid; a training checkpoint's teacher loads the same way."""
    from timm.layers import resample_abs_pos_embed

    from emseg_rt.models.checkpoint import load_checkpoint

    model = build(TINY)
    encoder = get_config(TINY).dino_encoder
    state = _dino_backbone(encoder, img_size=40)  # 5² grid; the tiny window's is 8²
    payload = {"teacher": {f"backbone.{k}": v for k, v in state.items()}} if wrapped else state
    torch.save(payload, tmp_path / "dino.pth")
    assert load_checkpoint(model, tmp_path / "dino.pth") == "dino"
    vit = model.encoders["dino_encoder"].vit
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    expected = resample_abs_pos_embed(state["pos_embed"], [8, 8], [5, 5], num_prefix_tokens=1)[:, 1:]
    torch.testing.assert_close(vit.pos_embed, expected, rtol=0, atol=0)
    same_grid = _dino_backbone(encoder, img_size=64)  # the window's own grid: the table is copied
    torch.save(same_grid, tmp_path / "dino64.pth")
    load_checkpoint(model, tmp_path / "dino64.pth")
    torch.testing.assert_close(vit.pos_embed, same_grid["pos_embed"][:, 1:], rtol=1e-6, atol=1e-6)


def test_a_dino_backbone_of_another_width_is_one_line(tmp_path):
    from emseg_rt.errors import EmsegError
    from emseg_rt.models.checkpoint import load_checkpoint

    encoder = dataclasses.replace(get_config(TINY).dino_encoder, embed_dim=48, num_heads=2)
    torch.save(_dino_backbone(encoder, img_size=64), tmp_path / "wide.pth")
    with pytest.raises(EmsegError, match="pos_embed") as info:
        load_checkpoint(build(TINY), tmp_path / "wide.pth")
    assert "\n" not in str(info.value)


def test_density_is_clamped_at_inference_but_trained_raw():
    """Eval mode (inference, export) clamps the density at 0; training sees the raw output, so a negative
    output still gets a gradient (a clamp there let the head collapse to 0)."""
    head = _tiny().head.density_head
    upscaled = torch.randn(2, head.before_upsampling[0].in_channels, 16, 16)
    head.eval()
    with torch.no_grad():
        clamped = head(upscaled)
    head.train()
    raw = head(upscaled)
    assert (clamped >= 0).all() and (raw < 0).any()
    torch.testing.assert_close(clamped, raw.detach().clamp(min=0))
    (raw.clamp(max=0) ** 2).sum().backward()  # pushing negative outputs up reaches the weights
    assert head.after_upsampling[-1].weight.grad.abs().sum() > 0
