"""The one tiler (`emseg_rt.tiling`: plan, gather, batches, `PlaneAccumulator`) against the numpy reference of
tests/tiling_reference.py and brute-force loops: centre crop and Gaussian blending bit-equal on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tiling_reference as reference

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.plane_labels import merge_logits
from emseg_rt.tiling import (
    PlaneAccumulator,
    extract_tiles,
    gaussian_weights,
    padded_batches,
    plan_tiles,
    source_indices,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# planes smaller than a tile, 1-pixel planes and lines, sizes a stride does not divide, square and not
SHAPES = [(200, 200), (50, 70), (1, 1), (1, 37), (29, 1), (2, 2), (3, 4), (129, 300), (96, 96), (97, 95)]
# halo 0, the default T/8, the biggest halo a tile allows (stride 2), a small tile with pads past the plane
TILINGS = [(32, 0), (32, 4), (32, 15), (16, 7), (128, 16)]


def _plane(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _accumulate(accumulator: PlaneAccumulator, tile_outputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Feed tile outputs in batches of `batch` (batches ending mid-plane and spanning planes) → the planes."""
    planes = []
    for start in range(0, len(tile_outputs), batch):
        for index, plane in accumulator.add(torch.from_numpy(tile_outputs[start:start + batch])):
            assert index == len(planes)
            planes.append(plane.numpy())
    assert accumulator.pending == 0
    return planes


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", [(128, 16), (32, 0), (32, 15)])
def test_cores_cover_every_pixel_exactly_once(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    hits = np.zeros(shape, dtype=int)
    for (y, x), (y0, y1, x0, x1) in zip(plan.origins, plan.cores):
        hits[y0:y1, x0:x1] += 1
        # every core keeps at least `halo` context pixels inside its tile, and is at most a stride wide
        assert y0 - y >= halo and x0 - x >= halo and y + tile - y1 >= halo and x + tile - x1 >= halo
        assert 0 < y1 - y0 <= plan.stride and 0 < x1 - x0 <= plan.stride
    assert (hits == 1).all()


def test_last_tile_ends_halo_past_the_edge_instead_of_holding_padding():
    plan = plan_tiles((256, 256), 128, 16)  # stride 96: origins -16, 80, then 144 (not 176)
    assert sorted({int(y) for y, _ in plan.origins}) == [-16, 80, 144]
    assert plan.padding == ((16, 16), (16, 16))


def test_bad_halo_and_empty_planes_are_refused():
    with pytest.raises(EmsegError, match="--halo"):
        plan_tiles((10, 10), 32, 16)
    with pytest.raises(EmsegError, match="empty plane"):
        plan_tiles((0, 10), 32, 4)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_reflect_indices_are_numpys_reflect_padding_for_any_pad_width(size):
    """Pads up to 10x the plane's length: np.pad reflects again and again (torch's F.pad refuses)."""
    values = np.arange(size)
    for before, after in [(0, 0), (1, 0), (size, size + 1), (10 * size + 3, 7 * size)]:
        expected = np.pad(values, (before, after), mode="reflect" if size > 1 else "edge")
        got = source_indices(size, np.array([-before]), size + before + after, reflect=size > 1)[0]
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_extracted_tiles_equal_the_padded_plane_sliced(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    plane = _plane(shape, seed=sum(shape) + tile + halo)
    expected = reference.extract_tiles(plane, plan)
    got = extract_tiles(plane, plan)
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8 and got.shape == (plan.num_tiles, tile, tile)
    np.testing.assert_array_equal(got, expected)
    on_torch = extract_tiles(torch.from_numpy(plane), plan)
    assert on_torch.dtype == torch.uint8
    np.testing.assert_array_equal(on_torch.numpy(), expected)


def test_edges_are_reflect_padded_and_a_slab_is_cut_plane_major():
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plan = plan_tiles(plane.shape, 8, 2)
    expected = np.pad(plane, ((2, 3), (2, 2)), mode="reflect")[:8, :8]
    np.testing.assert_array_equal(extract_tiles(plane, plan)[0], expected)
    plan = plan_tiles((45, 61), 32, 4)
    slab = np.stack([_plane((45, 61), seed=s) for s in (1, 2, 3)])
    expected = np.concatenate([reference.extract_tiles(p, plan) for p in slab])
    np.testing.assert_array_equal(extract_tiles(slab, plan).reshape(-1, 32, 32), expected)
    np.testing.assert_array_equal(extract_tiles(torch.from_numpy(slab), plan).reshape(-1, 32, 32).numpy(), expected)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_batches_are_full_and_the_last_is_padded_with_its_last_tile(kind):
    tiles = np.arange(7 * 2 * 2, dtype=np.uint8).reshape(7, 1, 2, 2)
    source = torch.from_numpy(tiles) if kind == "torch" else tiles
    batches = list(padded_batches(source, 3))
    assert [(start, real) for start, real, _ in batches] == [(0, 3), (3, 3), (6, 1)]
    chunks = [np.asarray(chunk) for _, _, chunk in batches]
    assert all(chunk.shape == (3, 1, 2, 2) for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks)[:7], tiles)
    np.testing.assert_array_equal(chunks[-1], np.repeat(tiles[6:], 3, axis=0))
    with pytest.raises(ValueError, match="batch"):
        next(padded_batches(source, 0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_centre_crop_is_bit_equal_to_the_reference(shape, tile, halo):
    plan = plan_tiles(shape, tile, halo)
    rng = np.random.default_rng(sum(shape) * 3 + halo)
    tile_labels = rng.integers(0, 4, (2 * plan.num_tiles, tile, tile), dtype=np.uint8)  # two planes
    tile_logits = rng.standard_normal((2 * plan.num_tiles, 3, tile, tile)).astype(np.float32)
    n = plan.num_tiles
    for outputs in (tile_labels, tile_logits):
        planes = _accumulate(PlaneAccumulator(plan, "center"), outputs, batch=5)
        assert len(planes) == 2 and planes[0].dtype == outputs.dtype
        for p, plane in enumerate(planes):
            np.testing.assert_array_equal(plane, reference.stitch_center(outputs[p * n:(p + 1) * n], plan))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILINGS)
def test_gaussian_blending_is_bit_equal_to_the_reference_on_a_cpu(shape, tile, halo):
    """The same float32 products and sums in the same tile order as the numpy reference: equal bits."""
    plan = plan_tiles(shape, tile, halo)
    rng = np.random.default_rng(sum(shape) * 7 + tile + halo)
    tile_logits = (rng.standard_normal((2 * plan.num_tiles, 3, tile, tile)) * 4).astype(np.float32)
    n = plan.num_tiles
    planes = _accumulate(PlaneAccumulator(plan, "gaussian"), tile_logits, batch=3)
    assert len(planes) == 2
    for p, plane in enumerate(planes):
        assert plane.dtype == np.float32 and plane.shape == (3,) + shape
        np.testing.assert_array_equal(plane, reference.blend_gaussian(tile_logits[p * n:(p + 1) * n], plan))


def test_gaussian_blending_matches_the_pixel_by_pixel_brute_force():
    rng = np.random.default_rng(7)
    plan = plan_tiles((45, 61), 16, 4)
    tile_logits = rng.normal(size=(plan.num_tiles, 3, 16, 16)).astype(np.float32)
    (blended,) = _accumulate(PlaneAccumulator(plan, "gaussian"), tile_logits, batch=plan.num_tiles)
    np.testing.assert_allclose(blended, reference.brute_force_blend(tile_logits, plan), rtol=1e-5, atol=1e-6)


def test_centre_crop_matches_the_pixel_by_pixel_brute_force():
    rng = np.random.default_rng(8)
    shape, tile, halo = (40, 33), 16, 3
    plan = plan_tiles(shape, tile, halo)
    values = rng.integers(0, 255, (plan.num_tiles, tile, tile), dtype=np.uint8)
    (out,) = _accumulate(PlaneAccumulator(plan, "center"), values, batch=4)
    for py in range(shape[0]):
        for px in range(shape[1]):
            owners = [i for i, (y0, y1, x0, x1) in enumerate(plan.cores) if y0 <= py < y1 and x0 <= px < x1]
            assert len(owners) == 1
            y, x = plan.origins[owners[0]]
            assert out[py, px] == values[owners[0], py - y, px - x]


@pytest.mark.parametrize("shape", [(75, 90), (1, 1), (3, 40)])
def test_identity_tiles_stitch_and_blend_back_to_the_plane(shape):
    plan = plan_tiles(shape, 32, 6)
    plane = _plane(shape, seed=5)
    tiles = extract_tiles(plane, plan)
    (stitched,) = _accumulate(PlaneAccumulator(plan, "center"), tiles, batch=7)
    np.testing.assert_array_equal(stitched, plane)
    (blended,) = _accumulate(PlaneAccumulator(plan, "gaussian"), tiles[:, None].astype(np.float32), batch=7)
    np.testing.assert_allclose(blended[0], plane, atol=1e-3)


def test_gaussian_weights_peak_in_the_centre_and_never_reach_zero():
    weights = gaussian_weights(32)
    assert weights.dtype == np.float32 and weights.shape == (32, 32) and not weights.flags.writeable
    assert weights.max() == 1.0 and weights.min() == np.float32(1e-3)
    np.testing.assert_array_equal(weights, weights.T)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    assert weights[15, 15] == weights[16, 16] == 1.0 and weights[0, 0] < weights[8, 8] < weights[15, 15]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_class_merge_of_planes_is_the_reference_rule(dtype):
    """`plane_labels.merge_logits` (the kernels' rule) = argmax + 1 where above the threshold, lowest class on
    exact ties; blended planes of the accumulator merged both ways give the same labels."""
    rng = np.random.default_rng(9)
    logits = rng.integers(-2, 3, (5, 40, 30)).astype(np.float32)  # many exact ties, many values at 0
    for threshold in (0.0, 1.0, -1.5):
        got = merge_logits(torch.from_numpy(logits), threshold, np.dtype(dtype)).numpy()
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, reference.merge_classes(logits, threshold, np.dtype(dtype)))
    plan = plan_tiles((50, 70), 32, 4)
    tile_logits = rng.standard_normal((plan.num_tiles, 3, 32, 32)).astype(np.float32)
    (blended,) = _accumulate(PlaneAccumulator(plan, "gaussian"), tile_logits, batch=4)
    np.testing.assert_array_equal(merge_logits(torch.from_numpy(blended), 0.1, np.dtype(dtype)).numpy(),
                                  reference.merge_classes(reference.blend_gaussian(tile_logits, plan), 0.1, dtype))


def test_misuse_is_a_value_error():
    plan = plan_tiles((40, 40), 32, 4)
    with pytest.raises(ValueError, match="do not match the plan"):
        extract_tiles(torch.zeros((41, 40), dtype=torch.uint8), plan)
    with pytest.raises(ValueError, match="blend 'mean'"):
        PlaneAccumulator(plan, "mean")
    with pytest.raises(ValueError, match=r"\(B, \.\.\., 32, 32\)"):
        PlaneAccumulator(plan, "center").add(torch.zeros((2, 31, 32)))
    with pytest.raises(ValueError, match="4D"):
        PlaneAccumulator(plan, "gaussian").add(torch.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="float"):
        PlaneAccumulator(plan, "gaussian").add(torch.zeros((2, 1, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        merge_logits(torch.zeros((40, 40)), 0.0, np.dtype(np.uint8))
