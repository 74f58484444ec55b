"""vanilla-sam2-*: SAM2's Hiera + FPN encoder and mask decoder, checked against the `sam2` package's own
modules (random weights, official checkpoint layout), at paper size on the meta device, exported, benched."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.models import build, get_config, list_models
from emseg_rt.models.checkpoint import apply_checkpoint
from emseg_rt.models.sam2_encoder import pack_sam2_embedding, unpack_sam2_embedding

TINY = "vanilla-sam2-tiny"
SAM2_CONFIGS = {"hiera-l": "configs/sam2.1/sam2.1_hiera_l.yaml", "hiera-b+": "configs/sam2.1/sam2.1_hiera_b+.yaml"}
# Parameters of our image path (trunk, neck, conv_s0/s1, no_mem_embed, prompt encoder, mask decoder) and of the
# whole official SAM2.1 model (+ memory attention / encoder and object pointers: video only), both counted below.
IMAGE_PATH_PARAMS = {"hiera-l": 216_924_865, "hiera-b+": 73_328_401}
OFFICIAL_TOTAL_M = {"hiera-l": 224.4, "hiera-b+": 80.8}  # SAM2.1 model card


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).norm() / reference.double().norm())


def _listed(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def reference_sam2(name: str, device: str = "cpu") -> torch.nn.Module:
    """The sam2 package's SAM2Base (SAM2.1 config, image predictor post-processing) with our config's encoder
    shapes; paper sizes need no override. SAM2 fixes its decoder widths for every size."""
    sam2_build = pytest.importorskip("sam2.build_sam", reason="the sam2 package (test extra) is the reference")
    config = get_config(name)
    enc = config.sam2_encoder
    base = SAM2_CONFIGS.get(config.size, SAM2_CONFIGS["hiera-b+"])
    overrides = [] if config.size in SAM2_CONFIGS else [
        f"++model.image_size={enc.img_size}",
        f"++model.image_encoder.trunk.embed_dim={enc.embed_dim}",
        f"++model.image_encoder.trunk.num_heads={enc.num_heads}",
        f"++model.image_encoder.trunk.stages={_listed(enc.stages)}",
        f"++model.image_encoder.trunk.global_att_blocks={_listed(enc.global_att_blocks)}",
        f"++model.image_encoder.trunk.window_spec={_listed(enc.window_spec)}",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size="
        + _listed(enc.window_pos_embed_bkg_spatial_size),
        f"++model.image_encoder.neck.d_model={enc.d_model}",
        f"++model.image_encoder.neck.backbone_channel_list={_listed(reversed(enc.channel_list))}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={enc.d_model}",
    ]
    return sam2_build.build_sam2(base, None, device=device, hydra_overrides_extra=overrides)


@pytest.fixture(scope="module")
def reference_and_ours(tmp_path_factory, one_torch_thread):
    """Reference SAM2 (random, non-trivial weights everywhere), its official-layout checkpoint, and our
    tiny pipeline loaded from that checkpoint."""
    torch.manual_seed(5)
    reference = reference_sam2(TINY).eval()
    with torch.no_grad():  # SAM2 zero-inits pos_embed and the memory embeddings
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_tiny.pt"
    torch.save({"model": reference.state_dict()}, path)  # the layout of sam2.1_hiera_*.pt
    return reference, path, build(TINY, checkpoint=path).eval()


def predictor_for(reference: torch.nn.Module, tile: torch.Tensor):
    """SAM2's image predictor with one (1, 1, T, T) uint8 tile set as its image (grey repeated to RGB)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(reference)
    grid = get_config(TINY).grid
    predictor._bb_feat_sizes = [(4 * grid, 4 * grid), (2 * grid, 2 * grid), (grid, grid)]  # 1024² hard-coded
    predictor.set_image(np.repeat(tile[0, 0].numpy()[:, :, None], 3, axis=2))
    return predictor


def test_registry_entries_build_and_run_at_tiny_size(one_torch_thread):
    assert {n for n in list_models() if n.startswith("vanilla-sam2-")} == {
        "vanilla-sam2-hiera-l", "vanilla-sam2-hiera-b+", TINY}
    model = build(TINY).eval()
    inputs = model.example_inputs(batch=2, seed=1)
    boxes = torch.tensor([[10.0, 20.0, 90.0, 100.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 0.0, 127.0, 127.0]])
    boxes = boxes.expand(2, 3, 4)  # the second class has no box
    with torch.no_grad():
        embedding = model.embed(inputs["tiles"])["sam2_embedding"]
        out = model(**inputs)
        boxed = model(**inputs, boxes=boxes)
    k, t, d, g = 3, 128, 32, 8  # classes, tile, decoder width, grid
    assert embedding.shape == (2, 4 * d, g, g) and embedding.dtype == torch.float32
    for result in (out, boxed):
        assert result["logits"].shape == (2, k, t, t) and result["logits"].dtype == torch.float32
        assert result["labels"].shape == (2, t, t) and result["labels"].dtype == torch.uint8
        assert int(result["labels"].max()) <= k and torch.isfinite(result["logits"]).all()
    assert not torch.equal(out["logits"], boxed["logits"])  # boxes are prompts, not ignored


def test_packed_embedding_round_trips_exactly():
    torch.manual_seed(2)
    embedding, s0, s1 = torch.randn(2, 32, 8, 8), torch.randn(2, 4, 32, 32), torch.randn(2, 8, 16, 16)
    packed = pack_sam2_embedding(embedding, s0, s1)
    assert packed.shape == (2, 128, 8, 8)
    for ours, original in zip(unpack_sam2_embedding(packed), (embedding, s0, s1)):
        assert torch.equal(ours, original)


@pytest.mark.parametrize("size", ["hiera-l", "hiera-b+"])
def test_paper_sizes_on_meta_match_the_official_models(size, monkeypatch):
    """Our paper-size pipeline has exactly the official image path's parameters (SAM2.1's total minus its
    video-only memory modules), and the official state dict loads into it through checkpoint.py."""
    real_linspace = torch.linspace  # sam2's Hiera calls .item() on a linspace: keep that one on the CPU
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: real_linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        reference = reference_sam2(f"vanilla-sam2-{size}", device="meta")
        ours = build(f"vanilla-sam2-{size}")
    total = sum(p.numel() for p in reference.parameters())
    assert abs(total / 1e6 - OFFICIAL_TOTAL_M[size]) < 0.1  # 224,446,642 and 80,850,178
    image_path = sum(p.numel() for n, p in reference.named_parameters()
                     if n.startswith(("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")))
    assert sum(p.numel() for p in ours.parameters()) == image_path == IMAGE_PATH_PARAMS[size]
    assert apply_checkpoint(ours, {"model": reference.state_dict()}, Path(f"sam2.1_{size}.pt")) == "sam2"
    assert get_config(f"vanilla-sam2-{size}").grid == 64 and ours.config.tile == 1024


def test_encoder_matches_sam2_image_predictor(reference_and_ours):
    reference, _, ours = reference_and_ours
    tiles = ours.example_inputs(batch=1, seed=3)["tiles"]
    predictor = predictor_for(reference, tiles)
    with torch.no_grad():
        embedding, s0, s1 = ours.encoders.sam2_encoder.features(tiles)
    assert relative_error(embedding, predictor._features["image_embed"]) < 1e-5
    assert relative_error(s0, predictor._features["high_res_feats"][0]) < 1e-5
    assert relative_error(s1, predictor._features["high_res_feats"][1]) < 1e-5


@pytest.mark.parametrize("threshold", [0.98, 0.0])  # SAM2's: falls back to the best multimask; 0: token 0
def test_pipeline_matches_sam2_image_predictor_per_class(reference_and_ours, threshold):
    """Each class's logits equal SAM2ImagePredictor.predict(points[, box], multimask_output=False,
    return_logits=True) for that class's prompts, padding points included."""
    reference, _, ours = reference_and_ours
    decoder = ours.head.mask_decoder
    decoder.sam2 = dataclasses.replace(decoder.sam2, dynamic_multimask_stability_thresh=threshold)
    reference.sam_mask_decoder.dynamic_multimask_stability_thresh = threshold
    inputs = ours.example_inputs(batch=1, seed=4)
    boxes = torch.tensor([[[12.0, 20.0, 90.0, 100.0], [5.0, 5.0, 60.0, 40.0], [30.0, 0.0, 127.0, 70.0]]])
    try:
        predictor = predictor_for(reference, inputs["tiles"])
        with torch.no_grad():
            results = {"points": ours(**inputs), "boxes": ours(**inputs, boxes=boxes)}
        references = {
            (kind, k): predictor.predict(
                point_coords=inputs["point_coords"][0, k].numpy(), point_labels=inputs["point_labels"][0, k].numpy(),
                box=boxes[0, k].numpy() if kind == "boxes" else None, multimask_output=False, return_logits=True)[0]
            for kind in results for k in range(3)
        }
    finally:
        decoder.sam2 = dataclasses.replace(decoder.sam2, dynamic_multimask_stability_thresh=0.98)
        reference.sam_mask_decoder.dynamic_multimask_stability_thresh = 0.98
    for (kind, k), logits in references.items():
        assert relative_error(results[kind]["logits"][0, k], torch.from_numpy(logits[0])) < 1e-5, (kind, k)


def test_dynamic_fallback_is_taken_with_random_weights(reference_and_ours):
    """The threshold-0.98 parity case above exercises SAM2's multimask fallback, not only token 0: token 0's
    stability is below 0.98 for some prompt, and there the output differs from token 0's mask."""
    from emseg_rt.models.sam2_decoder import stability_scores

    _, _, ours = reference_and_ours
    decoder = ours.head.mask_decoder
    args = _decoder_args(ours)
    with torch.no_grad():
        dynamic = decoder(*args)[0]
        decoder.sam2, saved = dataclasses.replace(decoder.sam2, dynamic_multimask_via_stability=False), decoder.sam2
        try:
            single = decoder(*args)[0]
        finally:
            decoder.sam2 = saved
    unstable = (stability_scores(single, 0.05) < 0.98).flatten()
    assert dynamic.shape == single.shape == (3, 1, 32, 32) and unstable.any()
    assert not torch.equal(dynamic[unstable], single[unstable]) and torch.equal(dynamic[~unstable], single[~unstable])


def _decoder_args(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """The mask decoder's inputs for `example_inputs(batch=1, seed=4)` (3 classes → 3 prompt rows)."""
    inputs = model.example_inputs(batch=1, seed=4)
    head = model.head
    with torch.no_grad():
        embedding, s0, s1 = unpack_sam2_embedding(model.embed(inputs["tiles"])["sam2_embedding"])
        sparse = head.embed_prompts(inputs["point_coords"][0], inputs["point_labels"][0], None)
    n = embedding.shape[1]
    dense = head.prompt_encoder.no_mask_embed.weight.reshape(1, n, 1, 1).expand(3, n, head.grid, head.grid)
    return embedding, head.prompt_encoder.get_dense_pe(), sparse, dense, s0, s1


def test_official_layout_errors_are_one_line(reference_and_ours, tmp_path):
    reference, path, _ = reference_and_ours
    state = reference.state_dict()
    with pytest.raises(EmsegError, match="SAM2 checkpoint, but vanilla-sam-tiny has no SAM2 encoder"):
        build("vanilla-sam-tiny", checkpoint=path)
    partial = {k: v for k, v in state.items() if k != "sam_mask_decoder.iou_token.weight"}
    unknown = {**state, "image_encoder.trunk.extra.weight": torch.zeros(1)}
    wrong = {**state, "no_mem_embed": torch.zeros(1, 1, 8)}
    for bad, message in ((partial, "partial .* missing keys head.mask_decoder.iou_token.weight"),
                         (unknown, "unexpected keys encoders.sam2_encoder.image_encoder.trunk.extra.weight"),
                         (wrong, r"wrong shapes .*sam2_encoder.no_mem_embed \(1, 1, 8\) vs \(1, 1, 32\)")):
        torch.save({"model": bad}, tmp_path / "bad.pt")
        with pytest.raises(EmsegError, match=message) as info:
            build(TINY, checkpoint=tmp_path / "bad.pt")
        assert "\n" not in str(info.value)


def test_own_state_dict_round_trips(reference_and_ours, tmp_path):
    _, _, ours = reference_and_ours
    torch.save(ours.state_dict(), tmp_path / "ours.pth")
    again = build(TINY, checkpoint=tmp_path / "ours.pth")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))


def test_export_fp32_and_fp16_meet_parity_with_static_decoder_shapes(tmp_path, one_torch_thread):
    """The full graph (what the runtime, bench and engines run) exports in fp32 and mixed fp16 from one trace
    and meets the package's parity targets; only the batch is dynamic."""
    from emseg_rt.export import load_package, trace_graphs, write_package
    from emseg_rt.models import build_model
    from emseg_rt.onnx_session import OnnxGraph

    traced = trace_graphs(build_model(TINY), tmp_path / "trace", batch_max=4, components=("full",))
    for precision, rel_target in (("fp32", 1e-4), ("fp16", 2e-2)):
        package = load_package(write_package(traced, tmp_path / precision, precision, parity_seed=7))
        parity = package.parity["components"]["full"]["outputs"]
        assert package.parity["passed"] and parity["logits"]["rel_error"] <= rel_target, parity
        full = package.component("full")
        assert {s.name: s.dtype for s in full.inputs} == {"tiles": "uint8", "point_coords": "float32",
                                                           "point_labels": "int64"}
        graph = onnx.load(str(full.path))
        for value in graph.graph.input:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), value  # only B is symbolic
    inputs = {k: v.numpy() for k, v in build(TINY).example_inputs(batch=3, seed=11).items()}
    outputs = OnnxGraph(package.full_onnx_path).run(inputs, ["logits", "labels"])
    assert outputs["logits"].shape == (3, 3, 128, 128) and outputs["labels"].shape == (3, 128, 128)


def test_segment_treats_it_as_vanilla_sam(tmp_path, one_torch_thread):
    """Per-class prompts per tile are not something `segment` plans: refused in one line, as vanilla-sam."""
    from emseg_rt.io import write_ome_image
    from emseg_rt.runtime import segment_volume

    src = write_ome_image(tmp_path / "in.zarr", np.random.default_rng(3).integers(0, 256, (1, 64, 64), np.uint8))
    with pytest.raises(EmsegError, match="per-tile prompts") as info:
        segment_volume(src, tmp_path / "out.zarr", model=TINY, backend="torch")
    assert "\n" not in str(info.value) and not (tmp_path / "out.zarr").exists()


def test_bench_has_the_vanilla_sam2_row():
    """The sixth Table-5 row, with SAM2's Hiera sizes standing in for the bench's ViT sizes. (Its tiny record
    through `emseg-rt bench`, torch and ONNX Runtime, is checked with the other rows in test_bench.py.)"""
    from emseg_rt.bench.table5 import PAPER_ROWS, PAPER_TABLE5_SECONDS, BenchConfig, registry_name

    assert len(PAPER_ROWS) == 6 and set(PAPER_ROWS) == set(PAPER_TABLE5_SECONDS)
    assert [registry_name("vanilla-sam2", s) for s in ("vit-h", "vit-b", "tiny")] == [
        "vanilla-sam2-hiera-l", "vanilla-sam2-hiera-b+", TINY]
    assert registry_name("scsam", "vit-h") == "scsam-vit-h"
    for size in ("vit-h", "vit-b", "tiny"):
        BenchConfig(models=PAPER_ROWS, size=size, backends=("torch-eager-fp32",), device="cpu").validate()
