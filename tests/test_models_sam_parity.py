"""Our SAM encoder, prompt embedding and batched decoder match segment_anything's own modules."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from emseg_rt.models import build, get_config
from emseg_rt.models.checkpoint import apply_checkpoint


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).norm() / reference.double().norm())


def reference_sam(name: str) -> Sam:
    """segment_anything's own modules with the same shapes as our `name` config, random weights."""
    config = get_config(name)
    enc, dec = config.sam_encoder, config.mask_decoder
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth,
            num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, out_chans=enc.out_chans, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=enc.window_size,
            global_attn_indexes=enc.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_dim, image_embedding_size=(config.grid, config.grid),
            input_image_size=(enc.img_size, enc.img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=dec.transformer_depth, embedding_dim=config.prompt_dim,
                                          mlp_dim=dec.mlp_dim, num_heads=dec.num_heads),
            transformer_dim=config.prompt_dim, iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
    ).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (SAM zero-inits the rel-pos tables)
        for param in sam.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return sam


@pytest.fixture(scope="module")
def sam_and_vanilla(tmp_path_factory):
    torch.manual_seed(3)
    sam = reference_sam("vanilla-sam-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return sam, build("vanilla-sam-tiny", checkpoint=path).eval(), path


def test_sam_encoder_matches_segment_anything(sam_and_vanilla):
    sam, ours, _ = sam_and_vanilla
    tiles = torch.randint(0, 256, (2, 1, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        reference = sam.image_encoder((tiles.float().repeat(1, 3, 1, 1) - sam.pixel_mean) / sam.pixel_std)
        embedding = ours.encoders["sam_encoder"](tiles)
    assert embedding.shape == reference.shape == (2, 32, 8, 8)
    assert relative_error(embedding, reference) < 1e-5


@pytest.mark.parametrize("with_boxes", [False, True])
def test_vanilla_pipeline_matches_segment_anything_per_prompt(sam_and_vanilla, with_boxes):
    sam, ours, _ = sam_and_vanilla
    inputs = ours.example_inputs(batch=2, seed=5)
    b, k, p = inputs["point_labels"].shape
    if with_boxes:
        corners = torch.rand(b, k, 2, 2) * 128
        inputs["boxes"] = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    with torch.no_grad():
        out = ours(**inputs)
        embeddings = sam.image_encoder((inputs["tiles"].float().repeat(1, 3, 1, 1) - sam.pixel_mean) / sam.pixel_std)
        for image in range(b):
            # SAM's own way: one image, K prompt sets, padding points dropped (label -1 kept as SAM pads)
            sparse, dense = sam.prompt_encoder(
                points=(inputs["point_coords"][image], inputs["point_labels"][image]),
                boxes=inputs["boxes"][image] if with_boxes else None,
                masks=None,
            )
            masks, _ = sam.mask_decoder(
                image_embeddings=embeddings[image : image + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            )
            reference = F.interpolate(masks, size=(128, 128), mode="bilinear", align_corners=False)[:, 0]
            assert relative_error(out["logits"][image], reference) < 1e-5


def test_batched_decoder_matches_segment_anything_for_class_prompts(tmp_path):
    torch.manual_seed(4)
    sam = reference_sam("sam-star-tiny")
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    ours = build("sam-star-tiny", checkpoint=path).eval()
    head = ours.head
    embedding = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        dense, sparse = head.class_prompt_encoder(embedding)
        masks, iou = head.mask_decoder(embedding, head.image_pe(), sparse, dense)
        k = head.num_classes
        for image in range(2):
            ref_masks, ref_iou = sam.mask_decoder(
                image_embeddings=embedding[image : image + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[image * k : (image + 1) * k],
                dense_prompt_embeddings=dense[image * k : (image + 1) * k], multimask_output=False,
            )
            assert relative_error(masks[image * k : (image + 1) * k], ref_masks) < 1e-5
            assert relative_error(iou[image * k : (image + 1) * k], ref_iou) < 1e-5
    torch.testing.assert_close(head.image_pe(), sam.prompt_encoder.get_dense_pe())


@pytest.mark.parametrize("name", ["vanilla-sam-vit-b", "scsam-vit-b", "surgicalsam-vit-h", "mae-star-vit-b"])
def test_official_sam_checkpoint_layout_fits_paper_size_models(name):
    """The official sam_vit_{b,h} state dict (built here on the meta device) maps onto our models."""
    variant = "vit_h" if name.endswith("vit-h") else "vit_b"
    with torch.device("meta"):
        official = sam_model_registry[variant]().state_dict()
        model = build(name)
    assert apply_checkpoint(model, official, source=f"sam_{variant}.pth") == "sam"
