"""`segment --mask` (issue 29.2): segment only inside a mask, at any resolution, skipping what holds none of it.

The reference is a run without the mask, masked afterwards (labels × mask on the input grid): inside the mask
every voxel equals it, outside every voxel is 0, and blocks / tiles with no mask voxel did not run. A coarse
mask is an OME-Zarr written by ome-zarr-py's own writer with its scale and translation; the expected grid is
built here with np.repeat, not with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image

from cli_helpers import assert_one_line, run_cli
from emseg_rt.errors import EmsegError
from emseg_rt.io import write_ome_image
from emseg_rt.runtime import segment_labels, segment_volume
from emseg_rt.runtime import output as output_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (8, 200, 208)  # scsam-tiny: tile 128, halo 16 → 3 × 3 tiles per plane


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    return (rng.integers(0, 255, SHAPE) // 2 + np.linspace(0, 120, SHAPE[2])).astype(np.uint8)


@pytest.fixture(scope="module")
def full(engine, data):
    return {blend: segment_labels(data, backend=engine, block=4, blend=blend) for blend in ("center", "gaussian")}


def cell_mask() -> np.ndarray:
    """Planes 0-3 (block 0 with --block 4) empty; a box in the corner of planes 4-7 (one tile column of 3)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:8, 10:70, 150:200] = 3  # any nonzero value is inside
    mask[6, 100:120, 20:40] = 1
    return mask


@pytest.mark.parametrize("blend", ["center", "gaussian"])
def test_a_mask_on_the_input_grid_equals_the_full_run_masked(engine, data, full, blend):
    mask = cell_mask()
    labels = segment_labels(data, backend=engine, block=4, blend=blend, mask=mask)
    assert np.array_equal(labels, np.where(mask > 0, full[blend], 0))
    assert full[blend][mask > 0].any()  # the comparison is not between two empty images


def test_blocks_and_tiles_without_a_mask_voxel_do_not_run(tmp_path, engine, data):
    src = write_ome_image(tmp_path / "in.zarr", data)
    whole = segment_volume(src, tmp_path / "whole.zarr", backend=engine, block=4)
    masked = segment_volume(src, tmp_path / "masked.zarr", backend=engine, block=4, mask=cell_mask())
    assert whole.tiles_computed == 8 * 9
    assert masked.tiles_computed < 4 * 9  # block 0 ran no tile, block 1 only those seeing the mask
    assert masked.complete and masked.blocks_computed == 2


def test_a_coarse_level_of_an_ome_zarr_mask_is_placed_by_its_scale_and_translation(tmp_path, engine, data, full):
    """ome-zarr-py's own writer makes the mask's pyramid: its level 1 is 2x coarser in y and x, with the
    translation that centres each coarse voxel on the two it covers (0.5)."""
    from ome_zarr.writer import write_image

    fine = np.zeros(SHAPE, np.uint8)
    fine[3:7, 20:90, 140:200] = 1
    root = zarr.open_group(str(tmp_path / "mask.zarr"), mode="w", zarr_format=2)
    write_image(fine, root, axes="zyx")
    level1 = np.asarray(zarr.open_array(str(tmp_path / "mask.zarr" / "s1")))
    assert level1.shape == (8, 100, 104)
    src = write_ome_image(tmp_path / "in.zarr", data, voxel_size=(1.0, 1.0, 1.0), units=None)
    segment_volume(src, tmp_path / "out.zarr", backend=engine, block=4, mask=str(tmp_path / "mask.zarr"),
                   mask_level=1)
    expected = level1.repeat(2, 1).repeat(2, 2)
    labels = np.asarray(zarr.open_array(str(tmp_path / "out.zarr" / "s0")))
    assert np.array_equal(labels, np.where(expected > 0, full["center"], 0))


def test_a_mask_without_a_transform_maps_by_proportion(engine, data, full):
    coarse = np.zeros((4, 50, 52), bool)  # a quarter of y and x, half of z
    coarse[3, 10:30, 5:20] = True
    expected = coarse.repeat(2, 0).repeat(4, 1).repeat(4, 2)
    labels = segment_labels(data, backend=engine, block=4, mask=coarse)
    assert np.array_equal(labels, np.where(expected, full["center"], 0))


def test_a_masked_run_resumes_and_refuses_a_changed_mask(tmp_path, engine, data):
    src = write_ome_image(tmp_path / "in.zarr", data)
    mask_path = tmp_path / "mask.zarr"
    zarr.save_array(str(mask_path), cell_mask())
    out, reference = tmp_path / "out.zarr", tmp_path / "ref.zarr"
    segment_volume(src, reference, backend=engine, block=2, mask=str(mask_path))
    real_mark = output_module.OutputStore.mark_done

    def die_at_block_3(self, index, input_digest):
        if index == 3:
            raise KeyboardInterrupt
        return real_mark(self, index, input_digest)

    output_module.OutputStore.mark_done = die_at_block_3
    try:
        with pytest.raises(KeyboardInterrupt):
            segment_volume(src, out, backend=engine, block=2, mask=str(mask_path))
    finally:
        output_module.OutputStore.mark_done = real_mark
    changed = zarr.open_array(str(mask_path), mode="r+")
    changed[0, 0, 0] = 1  # block 0 (finished, no mask voxel then) now holds one
    with pytest.raises(EmsegError, match="input changed since"):
        segment_volume(src, out, backend=engine, block=2, mask=str(mask_path), resume=True)
    changed[0, 0, 0] = 0
    report = segment_volume(src, out, backend=engine, block=2, mask=str(mask_path), resume=True)
    assert report.complete and report.blocks_done_before == 3
    assert np.array_equal(zarr.open_array(str(out / "s0"))[:], zarr.open_array(str(reference / "s0"))[:])
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(src, out, backend=engine, block=2, resume=True)  # the mask is part of the run


@pytest.mark.parametrize(("mask", "message", "options"), [
    ("missing.zarr", "does not exist", ()),
    ("float.zarr", "dtype float32; a mask is a label or binary image", ()),
    ("far.zarr", "does not overlap", ()),
    ("plane.png", "plane.png is a single 2D image: it has no key or pyramid level", ("--mask-level", "1")),
])
def test_a_bad_mask_is_one_line(tmp_path, monkeypatch, capsys, data, mask, message, options):
    src = write_ome_image(tmp_path / "in.zarr", data[:2])
    zarr.save_array(str(tmp_path / "float.zarr"), np.ones((2, 200, 208), np.float32))
    Image.fromarray(np.ones((200, 208), np.uint8)).save(tmp_path / "plane.png")
    far = zarr.open_group(str(write_ome_image(tmp_path / "far.zarr", np.ones((2, 10, 10), np.uint8))), mode="r+")
    ome = far.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [0.0, 5000.0, 0.0]})  # far beyond the input's 200 voxels of y
    far.attrs["ome"] = ome
    result = run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / "o.zarr", "--model", "scsam-tiny",
                     "--backend", "torch", "--mask", tmp_path / mask, *options)
    assert_one_line(result, "--mask", message)
    assert not (tmp_path / "o.zarr").exists()
