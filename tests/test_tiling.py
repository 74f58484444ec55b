"""Tiling, stitching and blending as pure functions, checked against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.tiling import (
    blend_gaussian,
    extract_tiles,
    gaussian_weights,
    merge_classes,
    pad_plane,
    plan_tiles,
    stitch_center,
)

SHAPES = [(200, 200), (50, 70), (1, 1), (129, 300), (96, 96), (97, 95)]


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


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_model_reconstructs_the_plane(shape):
    rng = np.random.default_rng(sum(shape))
    plane = rng.integers(0, 256, shape, dtype=np.uint8)
    plan = plan_tiles(shape, 32, 6)
    tiles = extract_tiles(plane, plan)
    assert tiles.shape == (plan.num_tiles, 32, 32) and tiles.dtype == np.uint8
    np.testing.assert_array_equal(stitch_center(tiles, plan), plane)
    blended = blend_gaussian(tiles[:, None].astype(np.float32), plan)
    np.testing.assert_allclose(blended[0], plane, atol=1e-3)


def test_edges_are_reflect_padded():
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plan = plan_tiles(plane.shape, 8, 2)
    tile = extract_tiles(plane, plan)[0]
    np.testing.assert_array_equal(tile, np.pad(plane, ((2, 3), (2, 2)), mode="reflect")[:8, :8])
    assert pad_plane(np.ones((1, 1)), plan_tiles((1, 1), 8, 2)).shape == (8, 8)


def test_gaussian_blend_matches_brute_force():
    rng = np.random.default_rng(7)
    shape, tile, halo = (45, 61), 16, 4
    plan = plan_tiles(shape, tile, halo)
    logits = rng.normal(size=(plan.num_tiles, 3, tile, tile)).astype(np.float32)
    weights = gaussian_weights(tile)
    expected = np.zeros((3,) + shape)
    for py in range(shape[0]):
        for px in range(shape[1]):
            acc, norm = np.zeros(3), 0.0
            for i, (y, x) in enumerate(plan.origins):
                ty, tx = py - y, px - x
                if 0 <= ty < tile and 0 <= tx < tile:
                    acc += weights[ty, tx] * logits[i, :, ty, tx]
                    norm += weights[ty, tx]
            expected[:, py, px] = acc / norm
    np.testing.assert_allclose(blend_gaussian(logits, plan), expected, rtol=1e-5, atol=1e-5)


def test_center_stitch_matches_brute_force():
    rng = np.random.default_rng(8)
    shape, tile, halo = (40, 33), 16, 3
    plan = plan_tiles(shape, tile, halo)
    values = rng.integers(0, 255, (plan.num_tiles, tile, tile), dtype=np.uint8)
    out = stitch_center(values, plan)
    for py in range(shape[0]):
        for px in range(shape[1]):
            owners = [i for i, (y0, y1, x0, x1) in enumerate(plan.cores) if y0 <= py < y1 and x0 <= px < x1]
            assert len(owners) == 1
            y, x = plan.origins[owners[0]]
            assert out[py, px] == values[owners[0], py - y, px - x]


def test_merge_classes_background_threshold():
    logits = np.array([[[-1.0, 2.0]], [[-0.5, 3.0]]])  # (K=2, 1, 2)
    np.testing.assert_array_equal(merge_classes(logits), [[0, 2]])


def test_bad_halo_is_refused():
    with pytest.raises(EmsegError, match="--halo"):
        plan_tiles((10, 10), 32, 16)
