"""The tiler on torch tensors (`device_tiling`) equals the numpy tiler (`tiling`) it ports, and the torch
backend's `run_planes` (tiles cut, stitched and merged on its device) gives the labels of the host path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg_rt.io import write_ome_image
from emseg_rt.runtime import load_backend, segment_array, segment_slab, segment_volume
from emseg_rt.runtime.device_tiling import (
    blend_gaussian_torch,
    extract_tiles_torch,
    merge_classes_torch,
    source_indices,
    stitch_center_torch,
)
from emseg_rt.runtime.tiling import (
    blend_gaussian,
    extract_tiles,
    merge_classes,
    pad_plane,
    plan_tiles,
    stitch_center,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# planes smaller than a tile, 1-pixel planes and lines, sizes a stride does not divide, square and not
SHAPES = [(200, 200), (50, 70), (1, 1), (1, 37), (29, 1), (2, 2), (3, 4), (129, 300), (96, 96), (97, 95)]
# halo 0, the default T/8, the biggest halo a tile allows (stride 2), a small tile with pads past the plane
TILINGS = [(32, 0), (32, 4), (32, 15), (16, 7), (128, 16)]
UINT8 = np.dtype(np.uint8)


def _plane(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_reflect_indices_are_numpys_reflect_padding_for_any_pad_width(size):
    """Pads up to 10x the plane's length: np.pad reflects again and again, torch's F.pad refuses."""
    values = np.arange(size)
    for before, after in [(0, 0), (1, 0), (size, size + 1), (10 * size + 3, 7 * size)]:
        mode = "reflect" if size > 1 else "edge"
        expected = np.pad(values, (before, after), mode=mode)
        got = source_indices(size, np.array([-before]), size + before + after, reflect=size > 1)[0]
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_extracted_tiles_equal_the_numpy_tiler(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    plane = _plane(shape, seed=sum(shape) + tile + halo)
    expected = extract_tiles(plane, plan)
    got = extract_tiles_torch(torch.from_numpy(plane), plan)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (plan.num_tiles, tile, tile)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_a_slab_of_planes_is_cut_in_plane_major_order():
    plan = plan_tiles((45, 61), 32, 4)
    slab = np.stack([_plane((45, 61), seed=s) for s in (1, 2, 3)])
    got = extract_tiles_torch(torch.from_numpy(slab), plan)  # (P, N, T, T)
    expected = np.concatenate([extract_tiles(plane, plan) for plane in slab])
    np.testing.assert_array_equal(got.reshape(-1, 32, 32).numpy(), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_centre_stitching_equals_the_numpy_tiler(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    rng = np.random.default_rng(sum(shape) * 3 + halo)
    tile_labels = rng.integers(0, 4, (plan.num_tiles, tile, tile), dtype=np.uint8)
    tile_logits = rng.standard_normal((plan.num_tiles, 3, tile, tile)).astype(np.float32)
    got = stitch_center_torch(torch.from_numpy(tile_labels), plan)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), stitch_center(tile_labels, plan))
    np.testing.assert_array_equal(stitch_center_torch(torch.from_numpy(tile_logits), plan).numpy(),
                                  stitch_center(tile_logits, plan))


def _top_two_gap(logits: np.ndarray) -> np.ndarray:
    """(K, H, W) → (H, W): the largest logit minus the second largest (inf with one class)."""
    if logits.shape[0] == 1:
        return np.full(logits.shape[1:], np.inf, np.float32)
    top = np.sort(logits, axis=0)
    return top[-1] - top[-2]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_gaussian_blending_and_merge_agree_with_the_numpy_tiler(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    rng = np.random.default_rng(sum(shape) * 7 + tile + halo)
    tile_logits = rng.standard_normal((plan.num_tiles, 3, tile, tile)).astype(np.float32)
    expected = blend_gaussian(tile_logits, plan)
    got = blend_gaussian_torch(torch.from_numpy(tile_logits), plan)
    assert got.dtype == torch.float32 and tuple(got.shape) == (3,) + shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    labels = merge_classes_torch(got, threshold=0.1).numpy()
    expected_labels = merge_classes(expected, threshold=0.1)
    clear = (_top_two_gap(expected) > 1e-5) & (np.abs(expected.max(axis=0) - 0.1) > 1e-5)
    np.testing.assert_array_equal(labels[clear], expected_labels[clear])


def test_identity_tiles_blend_back_to_the_plane():
    plan = plan_tiles((75, 90), 32, 6)
    plane = _plane((75, 90), seed=5)
    tiles = extract_tiles_torch(torch.from_numpy(plane), plan).float()[:, None]  # (N, 1, T, T)
    np.testing.assert_allclose(blend_gaussian_torch(tiles, plan)[0].numpy(), plane, atol=1e-3)
    np.testing.assert_array_equal(stitch_center_torch(tiles[:, 0], plan).numpy(), plane)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_class_merge_takes_the_lowest_class_on_ties_and_the_threshold(dtype):
    rng = np.random.default_rng(9)
    logits = rng.integers(-2, 3, (5, 40, 30)).astype(np.float32)  # many exact ties, many values at 0
    for threshold in (0.0, 1.0, -1.5):
        got = merge_classes_torch(torch.from_numpy(logits), threshold, np.dtype(dtype)).numpy()
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, merge_classes(logits, threshold, np.dtype(dtype)))


def test_misuse_is_a_value_error():
    plan = plan_tiles((40, 40), 32, 4)
    with pytest.raises(ValueError, match="do not match the plan"):
        extract_tiles_torch(torch.zeros((41, 40), dtype=torch.uint8), plan)
    with pytest.raises(ValueError, match="do not match the plan"):
        stitch_center_torch(torch.zeros((plan.num_tiles + 1, 32, 32)), plan)
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        merge_classes_torch(torch.zeros((40, 40)))


# --- the torch backend's device path ----------------------------------------------------------------------------


class HostPath:
    """A backend without `run_planes`: segment_slab then tiles and stitches on the host, as before."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.spec = backend, backend.name, backend.spec

    def run(self, *args, **kwargs):
        return self.backend.run(*args, **kwargs)

    def close(self) -> None:
        pass


class CountingDevicePath(HostPath):
    """A backend, counting the `run_planes` and `run` calls segment_slab makes."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.calls = {"run": 0, "run_planes": 0}

    def run(self, *args, **kwargs):
        self.calls["run"] += 1
        return self.backend.run(*args, **kwargs)

    def run_planes(self, *args, **kwargs):
        self.calls["run_planes"] += 1
        return self.backend.run_planes(*args, **kwargs)


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def default_backend(request):
    """The default model in both backends with a device path (onnxruntime: IO binding on torch tensors)."""
    return load_backend(None, request.param)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    from emseg_rt.data.phantom import generate_phantom

    return generate_phantom((3, 200, 230), seed=1).image


@pytest.mark.parametrize("batch", [4, 5])  # 27 tiles: the last batch is padded with copies of its last tile
def test_device_path_gives_the_host_paths_labels(default_backend, phantom, batch):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    device_path, host_path = CountingDevicePath(default_backend), HostPath(default_backend)
    for blend in ("center", "gaussian"):
        timings: dict = {}
        labels, probs, tiles = segment_slab(device_path, phantom, plan, batch=batch, blend=blend,
                                            probabilities=False, label_type=UINT8, timings=timings)
        expected, _, expected_tiles = segment_slab(host_path, phantom, plan, batch=batch, blend=blend,
                                                   probabilities=False, label_type=UINT8)
        assert labels.dtype == np.uint8 and labels.shape == phantom.shape and probs is None
        assert tiles == expected_tiles == 3 * plan.num_tiles
        assert timings["compute"] > 0 and timings["stitch"] > 0
        if blend == "center":
            np.testing.assert_array_equal(labels, expected)
        else:
            assert (labels == expected).mean() >= 0.9999
        assert len(np.unique(expected)) > 2  # the phantom's organelles, not an all-background answer
    assert device_path.calls == {"run": 0, "run_planes": 2}


def test_probabilities_and_tta_keep_the_host_path(default_backend, phantom):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    device_path = CountingDevicePath(default_backend)
    _, probs, _ = segment_slab(device_path, phantom[:1], plan, batch=4, blend="center", probabilities=True,
                               label_type=UINT8)
    assert probs is not None and device_path.calls["run_planes"] == 0 and device_path.calls["run"] == 3
    segment_slab(device_path, phantom[:1], plan, batch=4, blend="center", probabilities=False, label_type=UINT8,
                 tta=True)
    assert device_path.calls["run_planes"] == 0 and device_path.calls["run"] == 3 + 4 * 3  # 4 turns, 3 batches


def test_wide_labels_through_the_device_path(default_backend, phantom):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    wide = default_backend.run_planes(phantom[:1], plan, batch=4, blend="gaussian", label_type=np.dtype(np.uint16),
                                      threshold=default_backend.spec.threshold)
    narrow = default_backend.run_planes(phantom[:1], plan, batch=4, blend="gaussian", label_type=UINT8,
                                        threshold=default_backend.spec.threshold)
    assert wide.dtype == np.uint16
    np.testing.assert_array_equal(wide, narrow)
    with pytest.raises(ValueError, match="uint8 planes"):
        default_backend.run_planes(phantom[:1].astype(np.float32), plan, batch=4, blend="center",
                                   label_type=UINT8, threshold=0.0)


def test_segment_array_and_volume_report_on_the_device_path(tmp_path, default_backend, phantom):
    expected = segment_array(HostPath(default_backend), phantom)
    np.testing.assert_array_equal(segment_array(default_backend, phantom), expected)
    src = write_ome_image(tmp_path / "in.zarr", phantom)
    report = segment_volume(src, tmp_path / "out.zarr", backend=default_backend, block=2)
    assert report.complete and report.tiles_computed == 3 * plan_tiles(phantom.shape[1:], 128, 16).num_tiles
    assert report.compute_seconds > 0 and report.stitch_seconds > 0
    assert report.compute_seconds + report.stitch_seconds < report.wall_seconds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_device_path_matches_the_numpy_tiler(phantom):
    plan = plan_tiles(phantom.shape[1:], 128, 16)
    plane = torch.from_numpy(phantom[0]).cuda()
    np.testing.assert_array_equal(extract_tiles_torch(plane, plan).cpu().numpy(), extract_tiles(phantom[0], plan))
    logits = np.random.default_rng(3).standard_normal((plan.num_tiles, 3, 128, 128)).astype(np.float32)
    np.testing.assert_allclose(blend_gaussian_torch(torch.from_numpy(logits).cuda(), plan).cpu().numpy(),
                               blend_gaussian(logits, plan), rtol=1e-6, atol=1e-6)
    backend = load_backend(None, "torch", device="cuda", precision="fp32")
    labels = segment_slab(backend, phantom, plan, batch=4, blend="center", probabilities=False, label_type=UINT8)[0]
    expected = segment_slab(HostPath(backend), phantom, plan, batch=4, blend="center", probabilities=False,
                            label_type=UINT8)[0]
    np.testing.assert_array_equal(labels, expected)


def test_pad_plane_is_what_the_gather_reads():
    """The gather reads, for each tile pixel, the pixel np.pad puts there (pads wider than the plane too)."""
    plane = _plane((3, 5), seed=4)
    plan = plan_tiles(plane.shape, 16, 7)
    padded = pad_plane(plane, plan)
    (top, _), (left, _) = plan.padding
    y, x = (int(v) for v in plan.origins[0])
    np.testing.assert_array_equal(extract_tiles_torch(torch.from_numpy(plane), plan)[0].numpy(),
                                  padded[y + top:y + top + 16, x + left:x + left + 16])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("precision, compile", [("fp32", False), ("fp16", False), ("fp16", True)])
def test_cuda_fast_path_keeps_the_cpu_labels(phantom, precision, compile):
    """The CUDA fast path as `segment` runs it (device tiling, fp16 weights, the Triton kernels as operators,
    torch.compile with CUDA graphs) against fp32 eager on the CPU, on the trained default model: issue 17's bar
    of 99.9 % equal labels."""
    from emseg_rt.models.default_model import load_default_model
    from emseg_rt.runtime.backends.torch_backend import TorchBackend

    reference = segment_array(load_backend(None, "torch", "cpu", "fp32", fast=False), phantom)
    fast = TorchBackend(load_default_model(), "cuda", precision, "default", compile=compile)
    assert (segment_array(fast, phantom) == reference).mean() >= 0.999
