"""The MAESTER / HiS4MAE families: registry entries, paper shapes on the meta device, the clustering head
against the naive nearest-centre path, fitted K from checkpoints, and `segment` through the volume runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05 import ImageLabel

from emseg_rt.errors import EmsegError
from emseg_rt.io import read_volume, write_ome_image
from emseg_rt.kernels import nearest_centroid_naive
from emseg_rt.models import build, get_config, list_models
from emseg_rt.models.registry import REGISTRY
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.backends.torch_backend import TorchBackend

FAMILIES = ("maester", "his4mae")


def test_registry_has_paper_and_tiny_sizes():
    names = set(list_models())
    assert {f"{family}-{size}" for family in FAMILIES for size in ("fov80", "tiny")} <= names
    config = get_config("his4mae-fov80")
    assert (config.tile, config.fov_encoder.patch_size, config.fov_encoder.embed_dim) == (80, 5, 192)
    assert (config.fov_encoder.depth, config.fov_encoder.num_heads, config.fov_encoder.mlp_ratio) == (14, 1, 2.0)
    assert config.pretrain.codebook_size == 512 and config.pretrain.alpha == 1e-3
    assert config.pretrain.beta == pytest.approx(0.25 * config.pretrain.alpha) and config.pretrain.gamma == 0.8


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_size_shapes_on_the_meta_device(family):
    """FOV 80 → (B, 192, 16, 16) tokens; the ViT has 14 blocks of width 192 with MLP 384; K = classes + 1."""
    config = get_config(f"{family}-fov80")
    with torch.device("meta"):
        model = REGISTRY.build_from_config(config).eval()
        tokens = model.encoders["fov_encoder"](torch.empty(2, 1, 80, 80, dtype=torch.uint8))
        out = model(torch.empty(2, 1, 80, 80, dtype=torch.uint8))
    assert tuple(tokens.shape) == (2, 192, 16, 16)
    assert tuple(out["logits"].shape) == (2, 3, 80, 80) and tuple(out["labels"].shape) == (2, 80, 80)
    vit = model.encoders["fov_encoder"].vit
    block = 192 * 3 * 192 + 3 * 192 + 192 * 192 + 192 + 192 * 384 + 384 + 384 * 192 + 192 + 4 * 192
    expected = 14 * block + 25 * 192 + 192 + 256 * 192 + 2 * 192  # blocks, patch conv, pos embed, final norm
    assert sum(p.numel() for p in vit.parameters()) == expected
    assert tuple(model.head.centres.shape) == (4, 192)


def _tokens_and_head(seed: int = 0, clusters: int = 9):
    torch.manual_seed(seed)
    model = build("his4mae-tiny").eval()
    head = model.head
    centres = torch.randn(clusters, 64)
    classes = torch.tensor([0, 1, 2, 3, 1, 2, 0, 3, 3][:clusters])
    head.set_clusters(centres, classes)
    tokens = torch.randn(3, 64, 8, 8)
    return head, tokens, centres, classes


def test_head_labels_are_the_nearest_centres_class():
    head, tokens, centres, classes = _tokens_and_head()
    with torch.no_grad():
        full = head(tokens)
        fast = head(tokens, want_logits=False)
    naive = classes[nearest_centroid_naive(tokens, centres, (40, 40))].to(torch.uint8)
    assert set(fast) == {"labels"}
    assert (fast["labels"] == naive).float().mean() > 0.999
    assert (full["labels"] == naive).float().mean() > 0.999


def test_margins_are_positive_exactly_for_the_nearest_class():
    head, tokens, centres, classes = _tokens_and_head(seed=1)
    with torch.no_grad():
        out = head(tokens)
    logits, labels = out["logits"], out["labels"].long()
    features = F.interpolate(tokens, size=(40, 40), mode="bilinear", align_corners=False)
    distances = ((features[:, None] - centres[None, :, :, None, None]) ** 2).sum(2)  # (B, K, H, W)
    per_class = torch.stack([distances[:, classes == k].amin(1) for k in range(4)], 1)  # (B, 4, H, W)
    for k in range(1, 4):
        others = torch.cat([per_class[:, :k], per_class[:, k + 1:]], 1).amin(1)
        margin = others - per_class[:, k]
        torch.testing.assert_close(logits[:, k - 1], margin, atol=2e-3, rtol=1e-4)
        clear = margin.abs() > 1e-2
        assert torch.equal((labels == k)[clear], (margin > 0)[clear])


def test_a_fitted_checkpoint_brings_its_own_cluster_count(tmp_path):
    model = build("his4mae-tiny")
    model.head.set_clusters(torch.randn(7, 64), torch.tensor([0, 1, 2, 3, 0, 1, 2]))
    path = tmp_path / "fitted.pt"
    torch.save(model.state_dict(), path)
    loaded = build("his4mae-tiny", checkpoint=path)
    assert loaded.head.num_clusters == 7
    torch.testing.assert_close(loaded.head.centres, model.head.centres)
    assert loaded.head.cluster_classes.tolist() == [0, 1, 2, 3, 0, 1, 2]
    bad = {k: v for k, v in model.state_dict().items()}
    bad["head.centres"] = torch.randn(7, 5)  # wrong feature width: refused, not resized
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(EmsegError, match="wrong shapes"):
        build("his4mae-tiny", checkpoint=tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="0..3"):
        model.head.set_clusters(torch.randn(2, 64), torch.tensor([0, 4]))


def test_segment_writes_a_valid_label_image_through_the_volume_runtime(tmp_path, one_torch_thread):
    data = np.random.default_rng(2).integers(0, 256, (3, 70, 90), np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data, voxel_size=(20.0, 4.0, 4.0))
    torch.manual_seed(3)
    model = build("his4mae-tiny")
    model.head.set_clusters(torch.randn(6, 64) * 3, torch.tensor([0, 1, 2, 3, 1, 2]))
    engine = TorchBackend(model)
    out = tmp_path / "out.zarr"
    report = segment_volume(src, out, backend=engine, halo=5, levels=1)
    assert report.complete
    assert isinstance(open_ome_zarr(zarr.open_group(str(out), mode="r")), ImageLabel)
    labels = read_volume(out)
    assert labels.shape == data.shape and labels.dtype == np.uint8 and labels.max() <= 3
    blended = tmp_path / "blended.zarr"
    segment_volume(src, blended, backend=engine, halo=5, levels=1, blend="gaussian")
    assert (read_volume(blended) == labels).mean() > 0.9  # blending scores = blending features


def test_the_package_manifest_records_the_fitted_clusters():
    from emseg_rt.export.writer import clusters_record

    model = build("his4mae-tiny")
    model.head.set_clusters(torch.randn(5, 64), torch.tensor([0, 1, 2, 3, 3]))
    record = clusters_record(model)
    assert record["clusters"] == 5 and record["cluster_classes"] == [0, 1, 2, 3, 3]
    assert clusters_record(build("scsam-tiny")) is None
