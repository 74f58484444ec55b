"""`segment --roi` (issue 29.2): a box of the input segmented as a volume of its own, placed over the input.

A z range reads whole planes, so it equals the same planes of a run over the whole volume; a y/x box sees only
the box, so it equals a run over the cropped array (written as its own image). Intensities map as for the whole
volume. Checked with ome-zarr-py's Reader: the label image's translation is the box's first voxel.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cli_helpers import assert_one_line, run_cli
from emseg_rt.errors import EmsegError
from emseg_rt.io import write_ome_image
from emseg_rt.runtime import segment_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    rng = np.random.default_rng(5)
    data = (rng.integers(0, 4000, (6, 80, 96)) + np.linspace(0, 3000, 96)).astype(np.uint16)  # not uint8: mapped
    path = write_ome_image(tmp_path_factory.mktemp("roi") / "in.zarr", data, voxel_size=(30.0, 8.0, 4.0))
    return path, data


def labels(out) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "s0")))


def test_a_z_range_equals_those_planes_of_the_whole_run(tmp_path, volume, engine):
    src, _ = volume
    whole = segment_volume(src, tmp_path / "whole.zarr", backend=engine, block=2)
    part = segment_volume(src, tmp_path / "part.zarr", backend=engine, block=2, roi="2:5,:,:")
    assert whole.complete and part.complete
    assert np.array_equal(labels(tmp_path / "part.zarr"), labels(tmp_path / "whole.zarr")[2:5])


def test_a_box_equals_a_run_over_the_cropped_array_and_is_placed_over_the_input(tmp_path, volume, engine):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    src, data = volume
    segment_volume(src, tmp_path / "box.zarr", backend=engine, roi="1:4,16:80,8:72")
    whole_window = segment_volume(src, tmp_path / "w.zarr", backend=engine).normalisation
    cropped = write_ome_image(tmp_path / "crop.zarr", data[1:4, 16:80, 8:72], voxel_size=(30.0, 8.0, 4.0))
    low, high = whole_window["window"] if "window" in whole_window else (whole_window["low"], whole_window["high"])
    segment_volume(cropped, tmp_path / "crop-out.zarr", backend=engine, window=f"{low},{high}")
    assert np.array_equal(labels(tmp_path / "box.zarr"), labels(tmp_path / "crop-out.zarr"))
    node = next(iter(Reader(parse_url(str(tmp_path / "box.zarr")))()))
    transforms = node.metadata["coordinateTransformations"][0]
    translation = next(t["translation"] for t in transforms if t["type"] == "translation")
    assert translation == [30.0, 16 * 8.0, 8 * 4.0]


def test_resume_with_another_roi_is_refused(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, roi="0:2,:,:")
    with pytest.raises(EmsegError, match="different configuration|input changed"):
        segment_volume(src, out, backend=engine, roi="1:3,:,:", resume=True)


@pytest.mark.parametrize(("roi", "message"), [
    ("1:3,0:10", "give 3 ranges"), ("3:1,:,:", "is empty"), ("0:2,0:500,:", "y 0:500 is outside"),
    ("a:b,:,:", "expected start:stop"), ("0:2,:,:,:", "give 3 ranges"), ("1.5:3,:,:", "is not a voxel index"),
    ("1parsec:3parsec,:,:", "unknown unit"), ("90nm:30nm,:,:", "is empty"),
])
def test_a_bad_roi_is_one_line_and_writes_nothing(tmp_path, volume, monkeypatch, capsys, roi, message):
    src, _ = volume
    result = run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / "o.zarr", "--model", "scsam-tiny",
                     "--backend", "torch", "--roi", roi)
    assert_one_line(result, "--roi", message)
    assert not (tmp_path / "o.zarr").exists()


def test_a_box_in_physical_units_is_the_same_box_in_voxels(tmp_path, volume, engine):
    """Voxel size (30, 8, 4) nm: 30nm:120nm is z 1:4, 0.128um:640nm is y 16:80, 32nm:288nm is x 8:72."""
    src, _ = volume
    segment_volume(src, tmp_path / "voxels.zarr", backend=engine, roi="1:4,16:80,8:72")
    segment_volume(src, tmp_path / "physical.zarr", backend=engine, roi="30nm:120nm,0.128um:640nm,32nm:288nm")
    assert np.array_equal(labels(tmp_path / "physical.zarr"), labels(tmp_path / "voxels.zarr"))


def test_physical_units_need_an_input_with_units(tmp_path, engine):
    src = write_ome_image(tmp_path / "plain.zarr", np.zeros((2, 40, 40), np.uint8), units=None)
    with pytest.raises(EmsegError, match="has no length unit on z; give that range in voxels"):
        segment_volume(src, tmp_path / "o.zarr", backend=engine, roi="1nm:2nm,:,:")
