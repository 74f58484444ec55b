"""`emseg_rt.clustering` and `emseg-rt cluster fit`: sampled expand-stride features, K-means centres, Hungarian
cluster → class matching, MAESTER's cover-stride; his4mae-tiny (FOV 40, 8×8 tokens, 64 dims) on small phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import assert_one_line, run_cli

from emseg_rt.clustering import (
    compare_strides,
    cover_stride_labels,
    cover_stride_windows,
    expand_stride_windows,
    fit_centres,
    fit_clusters,
    hungarian_dice,
    match_clusters,
    sample_pixel_features,
)
from emseg_rt.clustering.features import interpolate_grid_at
from emseg_rt.clustering.fit import nearest_centre
from emseg_rt.clustering.matching import contingency
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.slab import segment_array
from emseg_rt.tiling import extract_tiles, plan_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "his4mae-tiny"  # tile = FOV 40, default halo 5, expand stride S = 30, default K = 4
SHAPE = (8, 96, 96)


def ids_from_table(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, class ids) of voxels whose contingency table is `table` (K × classes+1), shuffled."""
    cells = [(i, j, n) for i, row in enumerate(table) for j, n in enumerate(row)]
    clusters = np.concatenate([np.full(n, i) for i, _, n in cells])
    classes = np.concatenate([np.full(n, j) for _, j, n in cells])
    order = np.random.default_rng(0).permutation(len(clusters))
    return clusters[order], classes[order]


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, seed=3)


@pytest.fixture(scope="module")
def fitted(phantom, one_torch_thread):
    """his4mae-tiny with 6 fitted clusters (default K is 4) and its ClusterFit."""
    torch.manual_seed(0)
    pipeline = build(MODEL)
    fit = fit_clusters(pipeline, phantom.image, phantom.labels, clusters=6, fraction=0.01, seed=0)
    return pipeline, fit


# --- matching ------------------------------------------------------------------------------------------------

def test_match_clusters_recovers_a_permutation():
    perm = np.array([2, 0, 3, 1])  # cluster i is mostly class perm[i]
    table = np.full((4, 4), 3)
    table[np.arange(4), perm] = [40, 25, 60, 30]
    clusters, classes = ids_from_table(table.tolist())
    assert np.array_equal(contingency(clusters, classes, 4, 3), table)
    result = match_clusters(clusters, classes, clusters=4, num_classes=3)
    assert result.dtype == np.int64 and np.array_equal(result, perm)


def test_match_clusters_with_more_clusters_than_classes_gives_the_rest_their_majority():
    table = [[50, 0, 0, 0],
             [0, 40, 0, 0],
             [0, 0, 30, 0],
             [5, 0, 0, 10],   # one-to-one: granules, though background outnumbers nothing else here
             [0, 20, 0, 0],   # left out by the assignment → its majority, nucleus
             [30, 0, 0, 2],   # left out → background
             [0, 0, 0, 0]]    # no labelled voxel → background
    clusters, classes = ids_from_table(table)
    result = match_clusters(clusters, classes, clusters=7, num_classes=3)
    assert result.tolist() == [0, 1, 2, 3, 1, 0, 0]


def test_match_clusters_with_fewer_clusters_than_classes_leaves_classes_out():
    table = [[10, 30, 0, 0],
             [0, 25, 2, 0]]  # majority would give both nucleus; the assignment keeps them distinct
    clusters, classes = ids_from_table(table)
    result = match_clusters(clusters, classes, clusters=2, num_classes=3)
    assert result.tolist() == [0, 1]  # 10 + 25 = 35 beats 30 + 2; classes 2 and 3 get no cluster


def test_contingency_refuses_classes_out_of_range():
    with pytest.raises(EmsegError, match="label 4, outside the class ids 0..3"):
        contingency(np.array([0, 1]), np.array([0, 4]), clusters=2, num_classes=3)


def test_hungarian_dice_scores_relabelled_truth_perfectly():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=(4, 16, 16))
    perm = np.array([3, 1, 0, 2])  # class c → cluster perm[c]
    scores = hungarian_dice(perm[truth], truth, clusters=4)
    assert scores.cluster_classes.tolist() == np.argsort(perm).tolist()
    assert scores.dice == {"nucleus": 1.0, "mitochondria": 1.0, "granules": 1.0} and scores.mean_dice == 1.0
    noisy = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 4, truth.shape), perm[truth])
    assert 0.6 < hungarian_dice(noisy, truth, clusters=4).mean_dice < 1.0


# --- sampled features ----------------------------------------------------------------------------------------

def test_interpolate_grid_at_equals_torch_bilinear():
    grid = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    full = F.interpolate(grid, size=(40, 40), mode="bilinear", align_corners=False)
    b, ys, xs = np.meshgrid(np.arange(2), np.arange(40), np.arange(40), indexing="ij")
    values = interpolate_grid_at(grid, b.ravel(), ys.ravel(), xs.ravel(), 40)
    expected = full[torch.from_numpy(b.ravel()), :, torch.from_numpy(ys.ravel()), torch.from_numpy(xs.ravel())]
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_sampled_features_count_seed_and_positions(phantom):
    pipeline = build(MODEL)
    features, positions = sample_pixel_features(pipeline, phantom.image, fraction=0.005, seed=7)
    assert len(features) == len(positions) == round(0.005 * phantom.image.size)
    assert features.shape[1] == 64 and features.dtype == np.float32 and positions.dtype == np.int64
    assert (positions >= 0).all() and (positions < np.array(SHAPE)).all()
    assert len(np.unique(np.ravel_multi_index(positions.T, SHAPE))) == len(positions)  # distinct voxels
    again, same_positions = sample_pixel_features(pipeline, phantom.image, fraction=0.005, seed=7)
    assert np.array_equal(positions, same_positions) and np.array_equal(features, again)
    _, other = sample_pixel_features(pipeline, phantom.image, fraction=0.005, seed=8)
    assert not np.array_equal(positions, other)
    _, raised = sample_pixel_features(pipeline, phantom.image, fraction=1e-4, min_samples=50)
    assert len(raised) == 50


def test_each_sampled_feature_is_its_core_tiles_interpolated_token(phantom):
    pipeline = build(MODEL)
    features, positions = sample_pixel_features(pipeline, phantom.image, fraction=0.002, seed=1)
    plan = plan_tiles(SHAPE[1:], tile=40, halo=5)
    encoder = pipeline.encoders["fov_encoder"].eval()
    for row in np.random.default_rng(2).choice(len(positions), size=6, replace=False):
        z, y, x = positions[row]
        tile = next(i for i, (y0, y1, x0, x1) in enumerate(plan.cores) if y0 <= y < y1 and x0 <= x < x1)
        tiles = extract_tiles(phantom.image[z], plan)
        with torch.no_grad():
            tokens = encoder(torch.from_numpy(tiles[tile:tile + 1, None]))
        full = F.interpolate(tokens, size=(40, 40), mode="bilinear", align_corners=False)
        ty, tx = y - plan.origins[tile, 0], x - plan.origins[tile, 1]
        np.testing.assert_allclose(features[row], full[0, :, ty, tx].numpy(), atol=1e-5, rtol=1e-5)


def test_sampling_refuses_bad_inputs(phantom):
    pipeline = build(MODEL)
    with pytest.raises(EmsegError, match="--fraction"):
        sample_pixel_features(pipeline, phantom.image, fraction=0.0)
    with pytest.raises(EmsegError, match="uint8"):
        sample_pixel_features(pipeline, phantom.image.astype(np.float32))
    with pytest.raises(EmsegError, match="--halo 20"):
        sample_pixel_features(pipeline, phantom.image, halo=20)


# --- fitting -------------------------------------------------------------------------------------------------

def test_fit_installs_centres_and_classes(fitted):
    pipeline, fit = fitted
    assert fit.clusters == 6 and fit.centres.shape == (6, 64) and fit.cluster_classes.shape == (6,)
    assert pipeline.head.num_clusters == 6
    assert np.array_equal(pipeline.head.centres.numpy(), fit.centres)
    assert np.array_equal(pipeline.head.cluster_classes.numpy(), fit.cluster_classes)
    assert fit.contingency.shape == (6, 4) and fit.contingency.sum() == fit.samples
    assert fit.samples == round(0.01 * np.prod(SHAPE)) and fit.seconds > 0
    assert set(fit.cluster_classes.tolist()) == {0, 1, 2, 3}  # K > classes + 1: every class gets a cluster


def test_fit_is_reproducible_and_checks_its_inputs(phantom, fitted):
    _, fit = fitted
    torch.manual_seed(0)
    pipeline = build(MODEL)  # the same random weights as the fixture's
    again = fit_clusters(pipeline, phantom.image, phantom.labels, clusters=6, fraction=0.01, seed=0)
    np.testing.assert_array_equal(again.centres, fit.centres)
    with pytest.raises(EmsegError, match="needs ground-truth labels"):
        fit_clusters(pipeline, phantom.image, None)
    with pytest.raises(EmsegError, match="do not match"):
        fit_clusters(pipeline, phantom.image, phantom.labels[:4])
    with pytest.raises(EmsegError, match="cannot make 5 clusters"):
        fit_centres(np.zeros((3, 4), np.float32), 5)


def test_runtime_labels_are_the_nearest_centres_class(phantom, fitted):
    """What `segment` writes at the sampled voxels is the class of each sampled feature's nearest centre."""
    pipeline, fit = fitted
    features, positions = sample_pixel_features(pipeline, phantom.image, fraction=0.01, seed=0)
    labels = segment_array(TorchBackend(pipeline, fast=False, model_id="test"), phantom.image)
    expected = fit.cluster_classes[nearest_centre(features, fit.centres)]
    assert (labels[tuple(positions.T)] == expected).mean() >= 0.995  # float ties may differ


# --- cover-stride --------------------------------------------------------------------------------------------

def test_window_counts():
    assert cover_stride_windows((24, 24)) == 576 and cover_stride_windows((1024, 1024)) == 1024 ** 2
    assert expand_stride_windows((24, 24), 40, 5) == 1
    assert expand_stride_windows((96, 96), 40, 5) == 16 == int(np.ceil(96 / 30)) ** 2
    assert expand_stride_windows((1024, 1024), 80, 10) == int(np.ceil(1024 / 60)) ** 2


def test_cover_stride_matches_brute_force_and_is_compared_with_expand_stride(phantom, fitted):
    pipeline, _ = fitted
    plane = phantom.image[2, 30:54, 40:64]  # 24×24
    comparison, cover, expand = compare_strides(pipeline, plane)
    assert cover.shape == expand.shape == (24, 24) and cover.dtype == np.uint8
    assert comparison.cover_windows == 576 and comparison.expand_windows == 1
    assert comparison.agreement == pytest.approx(float((cover == expand).mean()))
    assert 0.5 < comparison.agreement <= 1.0  # same centres and classes, windows placed differently
    np.testing.assert_array_equal(cover, cover_stride_labels(pipeline, plane, batch=100))  # batch-independent
    np.testing.assert_array_equal(expand, segment_array(TorchBackend(pipeline, fast=False, model_id="t"), plane))
    # brute force: each pixel's own reflect-padded window through the whole head, read at (F//2, F//2)
    padded = np.pad(plane, ((20, 19), (20, 19)), mode="reflect")
    encoder = pipeline.encoders["fov_encoder"]
    for y, x in [(0, 0), (0, 23), (23, 5), (11, 17), (15, 15)]:
        window = torch.from_numpy(np.ascontiguousarray(padded[y:y + 40, x:x + 40]))[None, None]
        with torch.no_grad():
            brute = pipeline.head(encoder(window), want_logits=False)["labels"][0, 20, 20]
        assert cover[y, x] == int(brute), (y, x)
    # the one tile (origin −5, −5) is pixel (15, 15)'s cover window: there both strides agree exactly
    assert cover[15, 15] == expand[15, 15]


# --- CLI -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_zarr(phantom, tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("cluster") / "phantom.zarr", phantom)


def test_cli_fit_writes_a_checkpoint_build_and_segment_use(monkeypatch, capsys, tmp_path, phantom, phantom_zarr):
    out = tmp_path / "fitted.pt"
    code, stdout, err = run_cli(monkeypatch, capsys, "cluster", "fit", MODEL, "--data", phantom_zarr, "--out", out,
                                "--clusters", "6", "--fraction", "0.01")
    assert code == 0, err
    assert "6 clusters from 737 sampled voxels" in stdout and "→nucleus" in stdout
    assert not (tmp_path / "fitted.pt.tmp").exists()
    assert build(MODEL).head.num_clusters == 4
    fitted = build(MODEL, checkpoint=out)
    assert fitted.head.num_clusters == 6
    saved = torch.load(out, weights_only=True)
    assert set(saved) == set(fitted.state_dict()) and any(k.startswith("encoders.fov_encoder.") for k in saved)
    code, _, err = run_cli(monkeypatch, capsys, "segment", phantom_zarr, "--model", MODEL, "--checkpoint", out,
                           "--backend", "torch", "-o", tmp_path / "seg.zarr", "--quiet")
    assert code == 0, err
    from emseg_rt.io import read_volume

    written = read_volume(tmp_path / "seg.zarr")
    np.testing.assert_array_equal(written, segment_array(TorchBackend(fitted, fast=False, model_id="t"),
                                                         phantom.image))


def test_cli_fit_errors_are_one_line(monkeypatch, capsys, tmp_path, phantom, phantom_zarr):
    import zarr

    out = tmp_path / "fitted.pt"
    plain = tmp_path / "plain.zarr"
    zarr.save_array(str(plain), phantom.image)
    cases = [
        (("cluster", "fit", "sam-star-tiny", "--data", phantom_zarr, "--out", out), ("has no clustering head",)),
        (("cluster", "fit", MODEL, "--data", plain, "--out", out), ("no ground_truth label group", "--labels")),
        (("cluster", "fit", MODEL, "--data", tmp_path / "missing.zarr", "--out", out), ("missing.zarr",)),
        (("cluster", "fit", MODEL, "--data", phantom_zarr, "--labels", "nope", "--out", out), ("--labels 'nope'",)),
        (("cluster", "fit", MODEL, "--data", phantom_zarr, "--labels", plain, "--out", out), ("outside the class",)),
        (("cluster", "fit", MODEL, "--data", phantom_zarr, "--out", tmp_path / "no" / "f.pt"), ("cannot write",)),
        (("cluster", "fit", MODEL, "--data", phantom_zarr, "--out", out, "--fraction", "2"), ("--fraction",)),
        (("cluster", "fit", MODEL, "--data", phantom_zarr, "--out", out, "--clusters", "0"), ("--clusters 0",)),
        (("cluster", "fit", "no-such-model", "--data", phantom_zarr, "--out", out), ("unknown model",)),
    ]
    for args, fragments in cases:
        assert_one_line(run_cli(monkeypatch, capsys, *args), *fragments)
    assert not out.exists()
