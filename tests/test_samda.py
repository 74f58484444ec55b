"""SAMDA (samda-*): registry entries at tiny size, paper sizes on the meta device, MobileSAM's encoder against its
reference, nnU-Net / SAM / MobileSAM checkpoints, the zero-projector identity, export parity and `segment`,
and the three training steps (loss falls, exact resume)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.models.checkpoint import load_checkpoint
from emseg_rt.models.configs import TinyVitEncoderConfig
from emseg_rt.models.registry import get_config
from emseg_rt.models.samda import build_unet
from emseg_rt.models.samda_checkpoint import samda_to_nnunet
from emseg_rt.models.samda_tiny_vit import MobileSamEncoder, mobile_sam_keys

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A TinyViT small enough for tests whose last stage is 320 wide, so that MobileSAM's reference keeps 64² at 1024².
REFERENCE_TINY_VIT = {"embed_dims": (8, 16, 24, 320), "depths": (1, 1, 2, 1), "num_heads": (1, 1, 2, 4),
                      "window_sizes": (7, 7, 14, 7)}
TINY_TINY_VIT = TinyVitEncoderConfig(img_size=128, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                     num_heads=(1, 1, 1, 1), window_sizes=(4, 4, 4, 4), out_chans=32)


def _reference_tiny_vit():
    """MobileSAM's own TinyViT (package mobilesam-mirror); its import re-registers timm names, said in warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam.modeling import TinyViT
    return TinyViT


def _tiny_mobilesam():
    config = get_config("samda-tiny")
    return build("samda-tiny", sam_encoder=None, samda=dataclasses.replace(config.samda, tiny_vit=TINY_TINY_VIT))


@pytest.mark.parametrize("variant", ["sam-vit", "mobilesam"])
def test_tiny_entries_build_and_segment(variant):
    model = (build("samda-tiny") if variant == "sam-vit" else _tiny_mobilesam()).eval()
    inputs = model.example_inputs(batch=2, seed=1)
    with torch.no_grad():
        embeddings = model.embed(inputs["tiles"])
        out = model(**inputs)
    assert embeddings["tile_embedding"].shape == (2, 1, 128, 128)
    assert embeddings["sam_embedding"].shape == (2, 32, 8, 8)
    assert out["logits"].shape == (2, 3, 128, 128) and out["logits"].dtype == torch.float32
    assert out["labels"].shape == (2, 128, 128) and out["labels"].dtype == torch.uint8
    assert out["labels"].max() <= 3 and torch.isfinite(out["logits"]).all()
    # labels are nnU-Net's softmax argmax over background + classes
    scores = model.head.class_scores(**embeddings)
    assert torch.equal(out["labels"].long(), scores.argmax(dim=1))


def test_paper_sizes_on_meta_device():
    """samda-vit-b: SAM ViT-B's image encoder (89.67 M); both: nnU-Net's 8-stage 2D U-Net (32..512 features)
    whose 8² bottleneck at 1024² takes the projected 64² SAM grid; samda-mobilesam's encoder = MobileSAM's."""
    TinyViT = _reference_tiny_vit()
    with torch.device("meta"):
        vit_b, mobile = build("samda-vit-b"), build("samda-mobilesam")
        plain = build_unet(vit_b.config.samda.unet, 4)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(vit_b.encoders) == 89_670_912
    assert vit_b.config.samda.unet.features == (32, 64, 128, 256, 512, 512, 512, 512)
    assert len(vit_b.head.unet.encoder.stages) == 8 and len(vit_b.head.unet.decoder.stages) == 7
    assert vit_b.config.samda.unet.bottleneck(1024) == 8 and vit_b.config.grid == mobile.config.grid == 64
    widened_rows = 256 * 512 * 2 * 2  # projector channels × F_7 × 2 × 2 more in the first transposed conv
    assert count(vit_b.head.unet) == count(plain) + widened_rows
    assert count(vit_b.head) == count(mobile.head) == count(plain) + widened_rows + count(vit_b.head.projector)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = TinyViT(img_size=1024, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], drop_path_rate=0.0)
    classifier = count(reference.norm_head) + count(reference.head)  # in MobileSAM's file, unused
    assert count(mobile.encoders) == count(reference) - classifier


def test_mobilesam_encoder_matches_reference_and_loads_its_keys():
    """Our timm-based encoder with weights mapped from MobileSAM's layout = MobileSAM's TinyViT (random weights)."""
    TinyViT = _reference_tiny_vit()
    kw = REFERENCE_TINY_VIT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = TinyViT(img_size=1024, num_classes=10, drop_path_rate=0.0,
                            **{k: list(v) for k, v in kw.items()})
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("bn.weight") else 0.0))
        for name, b in reference.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    reference.eval()
    ours = MobileSamEncoder(TinyVitEncoderConfig(**kw)).eval()
    official = {"image_encoder." + k: v for k, v in reference.state_dict().items()}
    ours.load_state_dict(mobile_sam_keys(official, "image_encoder."), strict=True)
    tiles = torch.randint(0, 256, (1, 1, 1024, 1024), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        got = ours(tiles)
        want = reference((tiles.float().expand(-1, 3, -1, -1) - ours.pixel_mean) / ours.pixel_std)
    assert got.shape == want.shape == (1, 256, 64, 64)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


def test_zero_projector_is_the_nnunet_and_its_checkpoint_loads(tmp_path):
    """An nnU-Net checkpoint_final.pth (network_weights, numpy metrics, torch.device) loads with weights_only;
    with the projector's last conv zeroed, SAMDA's scores equal the nnU-Net's exactly."""
    model = build("samda-tiny").eval()
    unet = build_unet(model.config.samda.unet, model.config.num_classes + 1).eval()
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"_orig_mod." + k: v for k, v in unet.state_dict().items()},
                "init_args": {"device": torch.device("cpu"), "fold": 0}, "trainer_name": "nnUNetTrainer",
                "logging": {"mean_fg_dice": [np.float64(0.8)], "dice_per_class": [np.array([0.7, 0.9])]}}, path)
    assert load_checkpoint(model, path) == "nnunet"
    tiles = model.example_inputs(batch=2, seed=4)["tiles"]
    with torch.no_grad():
        embeddings = model.embed(tiles)
        assert model.head.projector(embeddings["sam_embedding"]).abs().max() > 0
        last = model.head.projector.convs[-1]
        last.weight.zero_()
        last.bias.zero_()
        samda_scores = model.head.class_scores(**embeddings)
        nnunet_scores = unet(embeddings["tile_embedding"])
    assert torch.equal(samda_scores, nnunet_scores)
    exported = samda_to_nnunet(model)
    assert all(torch.equal(exported[k], v) for k, v in unet.state_dict().items())


def test_sam_family_checkpoints_and_clear_errors(tmp_path):
    model = build("samda-tiny")
    sam_file = {"image_encoder." + k: torch.randn(v.shape) for k, v in
                model.encoders["sam_encoder"].image_encoder.state_dict().items()}
    sam_file["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)  # the parts SAMDA has not are skipped
    sam_file["prompt_encoder.not_a_point_embed.weight"] = torch.zeros(1, 32)
    torch.save(sam_file, tmp_path / "sam.pth")
    assert load_checkpoint(model, tmp_path / "sam.pth") == "sam"
    key = "pos_embed"
    assert torch.equal(model.encoders["sam_encoder"].image_encoder.state_dict()[key], sam_file["image_encoder." + key])
    mobile = _tiny_mobilesam()
    with pytest.raises(EmsegError, match="SAM / MedSAM ViT checkpoint, which does not fit .*use samda-vit-b"):
        load_checkpoint(mobile, tmp_path / "sam.pth")
    torch.save({"image_encoder.patch_embed.seq.0.c.weight": torch.zeros(1)}, tmp_path / "mobile.pt")
    with pytest.raises(EmsegError, match="MobileSAM.*use samda-mobilesam"):
        load_checkpoint(model, tmp_path / "mobile.pt")
    with pytest.raises(EmsegError, match="only samda-mobilesam takes it"):
        load_checkpoint(build("sam-star-tiny"), tmp_path / "mobile.pt")
    torch.save({"network_weights": {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(1)}}, tmp_path / "nn.pth")
    with pytest.raises(EmsegError, match="nnU-Net checkpoint; only samda-\\* models"):
        load_checkpoint(build("sam-star-tiny"), tmp_path / "nn.pth")
    with pytest.raises(EmsegError, match="partial for samda-tiny"):
        load_checkpoint(model, tmp_path / "nn.pth")
    with pytest.raises(EmsegError) as caught:
        load_checkpoint(model, tmp_path / "mobile.pt")
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def samda_trace(tmp_path_factory):
    """The full graph of samda-tiny (seeded weights), traced once; fp32 and fp16 packages written from it."""
    from emseg_rt.export import trace_graphs, write_package

    torch.manual_seed(1234)
    root = tmp_path_factory.mktemp("samda-export")
    traced = trace_graphs(build("samda-tiny"), root / "trace", batch_max=4, components=("full",))
    return {precision: write_package(traced, root / precision, precision, parity_seed=7, allow_parity_failure=True)
            for precision in ("fp32", "fp16")}, traced.model


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_parity(samda_trace, precision):
    from emseg_rt.export import load_package

    package = load_package(samda_trace[0][precision])
    parity = package.parity
    rel_target = {"fp32": 1e-4, "fp16": 2e-2}[precision]
    metric = {"fp32": "agreement", "fp16": "agreement_decided"}[precision]
    outputs = parity["components"]["full"]["outputs"]
    assert parity["passed"] and outputs["logits"]["rel_error"] <= rel_target, outputs
    assert outputs["labels"][metric] >= 0.995, outputs
    # constant tiles (padding, saturation): std 0 → the z-score's floor must survive FP16 (1e-8 would not)
    from emseg_rt.onnx_session import OnnxGraph

    tiles = np.zeros((2, 1, 128, 128), np.uint8)
    tiles[1] = 200
    logits = OnnxGraph(package.full_onnx_path).run({"tiles": tiles}, ["logits"])["logits"]
    assert np.isfinite(logits).all()


def test_segment_runs_the_package(samda_trace, tmp_path):
    """`segment` (tiler, ONNX Runtime) on a phantom gives the labels the torch pipeline gives tile by tile."""
    from emseg_rt.data.phantom import generate_phantom
    from emseg_rt.io import read_volume
    from emseg_rt.runtime import load_backend, segment_volume

    packages, model = samda_trace
    phantom = generate_phantom((2, 128, 128), seed=3)
    segment_volume(phantom.image, tmp_path / "seg.zarr", backend=load_backend(str(packages["fp32"]), "onnxruntime"),
                   halo=0, block=2)
    labels = np.asarray(read_volume(tmp_path / "seg.zarr"))
    with torch.no_grad():
        expected = model(torch.from_numpy(phantom.image[:, None]))["labels"].numpy()
    assert labels.shape == phantom.image.shape
    assert (labels == expected).mean() > 0.999


@pytest.fixture(scope="module")
def phantoms():
    from emseg_rt.data.phantom import generate_phantom

    source = generate_phantom((3, 144, 144), seed=1, noise=1.0)
    target = generate_phantom((3, 144, 144), seed=2, noise=3.0)
    return source, target


@pytest.mark.parametrize("recipe", ["samda-source", "samda-uda", "samda-fewshot"])
def test_recipe_loss_falls_and_resumes(recipe, phantoms, tmp_path):
    """A short run's loss falls across a stop and a resume; source (Dice + CE, the code path few-shot shares)
    and UDA resume bit-identically to an uninterrupted run; only the head trains."""
    from emseg_rt.training.samda import train_samda

    source, target = phantoms
    data = {"samda-source": {"volumes": [source.image], "labels": [source.labels]},
            "samda-uda": {"volumes": [source.image], "target": [target.image]},
            "samda-fewshot": {"volumes": [target.image[:2]], "labels": [target.labels[:2]], "lr": 1e-2}}[recipe]
    steps = 4 if recipe != "samda-uda" else 8

    def run(out, **kw):
        torch.manual_seed(0)
        model = build("samda-tiny")
        encoders = {k: v.clone() for k, v in model.encoders.state_dict().items()}
        report = train_samda(model, recipe, out, steps=steps, batch=2, checkpoint_every=1, **data, **kw)
        assert all(torch.equal(v, model.encoders.state_dict()[k]) for k, v in encoders.items())
        return model, report

    run(tmp_path / "b.pt", stop_after=steps // 2)
    resumed, second = run(tmp_path / "b.pt", resume=True)
    assert second.start_step == steps // 2 and second.end_step == steps
    totals = [entry["total"] for entry in second.losses]
    assert len(totals) == steps and totals[-1] < totals[0], totals
    if recipe == "samda-fewshot":
        return
    whole, _ = run(tmp_path / "a.pt")
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_recipe_errors_are_one_line(phantoms, tmp_path):
    from emseg_rt.training.samda import few_shot_slices, train_samda

    source, _ = phantoms
    model = build("samda-tiny")
    with pytest.raises(EmsegError, match="--recipe 'samda-x': choose one of"):
        train_samda(model, "samda-x", tmp_path / "x.pt", volumes=[source.image])
    with pytest.raises(EmsegError, match="annotated slices: give labels"):
        train_samda(model, "samda-source", tmp_path / "x.pt", volumes=[source.image])
    with pytest.raises(EmsegError, match="not a SAMDA model"):
        train_samda(build("sam-star-tiny"), "samda-uda", tmp_path / "x.pt", volumes=[source.image])
    with pytest.raises(EmsegError, match="--target: give at least one volume"):
        train_samda(model, "samda-uda", tmp_path / "x.pt", volumes=[source.image])
    assert few_shot_slices(30, 4) == [0, 10, 19, 29] and few_shot_slices(5, 1) == [0]
    with pytest.raises(EmsegError, match="--shots 9"):
        few_shot_slices(5, 9)


def test_cli_chains_the_three_steps(monkeypatch, capsys, tmp_path):
    """`emseg-rt train samda-tiny --recipe ...` three times, each step loading the previous one's CKPT."""
    from cli_helpers import assert_one_line, run_cli

    from emseg_rt.data.phantom import generate_phantom, write_phantom

    source = write_phantom(tmp_path / "source.zarr", generate_phantom((2, 128, 128), seed=1, noise=1.0))
    target = write_phantom(tmp_path / "target.zarr", generate_phantom((3, 128, 128), seed=2, noise=3.0))
    common = ("--steps", "1", "--batch", "1", "-q")
    assert run_cli(monkeypatch, capsys, "train", "samda-tiny", "--recipe", "samda-source", "--data", source,
                   "--out", tmp_path / "s1.pt", *common)[0] == 0
    assert run_cli(monkeypatch, capsys, "train", "samda-tiny", "--recipe", "samda-uda", "--data", source,
                   "--target", target, "-c", tmp_path / "s1.pt", "--out", tmp_path / "s2.pt", *common)[0] == 0
    assert run_cli(monkeypatch, capsys, "train", "samda-tiny", "--recipe", "samda-fewshot", "--data", target,
                   "--shots", "2", "-c", tmp_path / "s2.pt", "--out", tmp_path / "s3.pt", *common)[0] == 0
    step2, step3 = (torch.load(tmp_path / f"s{i}.pt", weights_only=True) for i in (2, 3))
    assert torch.equal(step2["head.unet.encoder.stages.0.0.convs.0.conv.weight"],
                       torch.load(tmp_path / "s1.pt", weights_only=True)["head.unet.encoder.stages.0.0.convs.0.conv.weight"])
    assert not torch.equal(step2["head.unet.encoder.stages.0.0.convs.0.conv.weight"],
                           step3["head.unet.encoder.stages.0.0.convs.0.conv.weight"])
    assert_one_line(run_cli(monkeypatch, capsys, "train", "samda-tiny", "--recipe", "samda-uda", "--data", source,
                            "--out", tmp_path / "x.pt"), "needs an unlabelled target-domain volume: --target")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "samda-tiny", "--data", source, "--out", tmp_path / "x.pt"),
                    "choose a SAMDA step with --recipe")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "samda-tiny", "--recipe", "samda-source", "--data", source,
                            "--shots", "3", "--out", tmp_path / "x.pt"), "--shots: not an option")
