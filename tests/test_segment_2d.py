"""2D images (array, TIFF, PNG, zarr, OME-Zarr yx) segment as one plane into a 2D label image; folder and glob
runs (`runtime.batch`): one output per file, reruns keep complete ones, --part splits, a bad file is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import run_cli
from instance_helpers import default_reference
from PIL import Image
from scipy import ndimage

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume, write_ome_image
from emseg_rt.io.volume import PlaneStack
from emseg_rt.runtime import load_backend, segment_labels, segment_volume
from emseg_rt.runtime.batch import folder_inputs, parse_part, plan_outputs, segment_files, summary_line

MODEL = "scsam-tiny"


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    return load_backend(MODEL, "torch")


def _plane(seed: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A plane with structure (smoothed noise, so the model finds more than one class), uint8."""
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, 3)
    return np.clip((smooth - smooth.min()) / np.ptp(smooth) * 255, 0, 255).astype(np.uint8)


def _label_node(path: Path):
    """ome-zarr-py's reader: the label image node at `path` (its metadata and levels)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = [n for n in Reader(parse_url(str(path)))() if n.specs and isinstance(n.specs[0], Label)]
    assert nodes, f"ome-zarr's reader does not see a label image at {path}"
    return nodes[0]


def test_2d_array_tiff_and_png_equal_a_one_plane_volume(tmp_path, engine):
    plane = _plane(1)
    reference = segment_volume(plane[None], tmp_path / "ref.zarr", backend=engine, probabilities=True)
    expected = np.asarray(zarr.open_array(str(tmp_path / "ref.zarr" / "s0"))[0])
    assert reference.complete and len(np.unique(expected)) > 1
    tifffile.imwrite(tmp_path / "p.tif", plane, imagej=True, resolution=(1 / 5.0, 1 / 5.0), metadata={"unit": "nm"})
    Image.fromarray(plane).save(tmp_path / "p.png")
    for name, source in (("array", plane), ("tiff", tmp_path / "p.tif"), ("png", tmp_path / "p.png")):
        out = tmp_path / f"{name}.zarr"
        report = segment_volume(source, out, backend=engine, probabilities=True)
        assert report.complete and report.slices_computed == 1
        node = _label_node(out)
        assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"], name
        np.testing.assert_array_equal(np.asarray(node.data[0]), expected, err_msg=name)
        probabilities = zarr.open_array(str(out / "probabilities" / "s0"))
        assert probabilities.shape == (3, 64, 64)
        expected_probabilities = zarr.open_array(str(tmp_path / "ref.zarr" / "probabilities" / "s0"))[:, 0]
        np.testing.assert_array_equal(probabilities[...], expected_probabilities)
    tiff_labels = open_volume(tmp_path / "tiff.zarr")
    assert tiff_labels.voxel_size == (5.0, 5.0) and tiff_labels.units == ("nanometer", "nanometer")
    np.testing.assert_array_equal(segment_labels(tmp_path / "p.png", backend=engine), expected)


def test_2d_ome_zarr_image_keeps_scale_levels_and_instances(tmp_path, engine):
    plane = _plane(2, (64, 96))
    write_ome_image(tmp_path / "img.zarr", plane, axes="yx", voxel_size=(4.0, 4.0))
    classes = engine.spec.classes
    report = segment_volume(tmp_path / "img.zarr", tmp_path / "out.zarr", backend=engine, levels=2,
                            instances=classes[1])
    assert report.complete
    node = _label_node(tmp_path / "out.zarr")
    assert [np.asarray(level).shape for level in node.data] == [(64, 96), (32, 48)]
    labels = open_volume(tmp_path / "out.zarr")
    assert labels.voxel_size == (4.0, 4.0) and labels.units == ("nanometer", "nanometer")
    np.testing.assert_array_equal(np.asarray(node.data[1]), np.asarray(node.data[0])[::2, ::2])
    instances = np.asarray(zarr.open_array(str(tmp_path / "out.zarr" / f"{classes[1]}_instances" / "s0")))
    # the class's rule (runtime.instance_rules) on the plane's 4-connected components, as on a one-plane volume
    expected = default_reference(np.asarray(node.data[0])[None], 2, classes[1])[0]
    assert instances.shape == (64, 96) and report.instances[classes[1]] == instances.max() > 0
    np.testing.assert_array_equal(instances, expected)
    with pytest.raises(EmsegError, match="one plane"):
        segment_volume(tmp_path / "img.zarr", tmp_path / "y.zarr", backend=engine, axis="y")


@pytest.mark.parametrize("index", [(0,), (slice(None),), (0, slice(3, 9)), (slice(0, 1), 2), (Ellipsis, 4),
                                   (slice(1, None),), (-1, slice(None), slice(2, 5)), (slice(None), 5, slice(0, 3))])
def test_plane_stack_indexes_as_numpy_does(index):
    base = np.random.default_rng(3).integers(0, 100, (7, 11))
    view, expanded = PlaneStack(base.copy()), base[None]
    np.testing.assert_array_equal(view[index], expanded[index])
    written, numpy_written = PlaneStack(base.copy()), base[None].copy()
    numpy_written[index] = -np.ones_like(numpy_written[index])
    written[index] = -np.ones_like(numpy_written[index])
    np.testing.assert_array_equal(written[...], numpy_written)
    probabilities = PlaneStack(np.zeros((2, 7, 11)), axis=1)
    probabilities[:, 0:1, 2:4] = np.ones((2, 1, 2, 11))
    assert probabilities.shape == (2, 1, 7, 11) and probabilities[:, 0].sum() == 2 * 2 * 11


def test_png_modes(tmp_path):
    plane = _plane(4)
    Image.fromarray(np.stack([plane] * 3, -1)).save(tmp_path / "grey-rgb.png")
    Image.fromarray(plane.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    colour = np.stack([plane, plane[::-1], plane], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(open_volume(tmp_path / "grey-rgb.png").array, plane)
    sixteen = open_volume(tmp_path / "sixteen.png")
    assert sixteen.dtype == np.uint16 and np.array_equal(sixteen.array, plane.astype(np.uint16) * 257)
    with pytest.raises(EmsegError, match="colour image"):
        open_volume(tmp_path / "colour.png")
    Image.fromarray(plane).save(tmp_path / "p.jpg", quality=95)
    jpeg = open_volume(tmp_path / "p.jpg")
    assert jpeg.shape == plane.shape and np.array_equal(jpeg.array, np.asarray(Image.open(tmp_path / "p.jpg")))


def _folder(root: Path) -> Path:
    """2 TIFFs, 1 PNG and one 3D OME-Zarr volume, 64×64 planes."""
    root.mkdir()
    tifffile.imwrite(root / "a.tif", _plane(10))
    tifffile.imwrite(root / "b.tiff", _plane(11))
    Image.fromarray(_plane(12)).save(root / "c.png")
    write_ome_image(root / "d.zarr", np.stack([_plane(13), _plane(14)]))
    return root


def _complete(output: Path) -> bool:
    return zarr.open_group(str(output), mode="r").attrs["emseg_rt"]["status"] == "complete"


def test_folder_run_reruns_and_parts(tmp_path, engine):
    raw = _folder(tmp_path / "raw")
    first = segment_files(raw, tmp_path / "out", backend=engine)
    assert [o.status for o in first] == ["segmented"] * 4 and summary_line(first).startswith("4 segmented")
    assert [o.output.name for o in first] == ["a.zarr", "b.zarr", "c.zarr", "d.zarr"]
    assert all(_complete(o.output) for o in first)
    assert zarr.open_array(str(tmp_path / "out" / "d.zarr" / "s0")).shape == (2, 64, 64)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out" / "c.zarr" / "s0"))[...],
                                  segment_labels(_plane(12), backend=engine))
    again = segment_files(str(raw / "*"), tmp_path / "out", backend=engine)
    assert [o.status for o in again] == ["complete"] * 4
    assert summary_line(again) == "0 segmented, 4 already complete, 0 failed"
    halves = [segment_files(raw, tmp_path / "parts", backend=engine, part=(k, 2)) for k in (1, 2)]
    names = [sorted(o.output.name for o in half) for half in halves]
    assert names == [["a.zarr", "c.zarr"], ["b.zarr", "d.zarr"]]


def test_folder_run_resumes_an_incomplete_output(tmp_path, engine):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_ome_image(raw / "v.zarr", np.stack([_plane(20 + i) for i in range(4)]))
    Image.fromarray(_plane(30)).save(raw / "w.png")
    whole = segment_volume(raw / "v.zarr", tmp_path / "whole.zarr", backend=engine, block=2)
    out = tmp_path / "out"
    segment_files(raw, out, backend=engine, block=2)
    group = zarr.open_group(str(out / "v.zarr"), mode="r+")
    group.attrs.update({"emseg_rt": {**group.attrs["emseg_rt"], "status": "incomplete"}})
    done = sorted((out / "v.zarr" / ".emseg-rt").glob("done-*/c/1"))
    done[0].unlink()  # block 1 not done: the rerun computes it again
    outcomes = segment_files(raw, out, backend=engine, block=2)
    assert [o.status for o in outcomes] == ["segmented", "complete"]
    assert outcomes[0].report.blocks_done_before == 1 and outcomes[0].report.slices_computed == 2
    np.testing.assert_array_equal(zarr.open_array(str(out / "v.zarr" / "s0"))[...],
                                  zarr.open_array(str(whole.output) + "/s0")[...])


def test_which_inputs_a_folder_run_takes(tmp_path):
    stack = tmp_path / "stack"
    stack.mkdir()
    for i in range(2):
        tifffile.imwrite(stack / f"z{i}.tif", _plane(i))
    assert folder_inputs(stack) is None  # a folder of TIFF pages stays one stack
    assert [p.name for p in folder_inputs(str(stack / "*.tif"))] == ["z0.tif", "z1.tif"]
    literal = tmp_path / "img[1].tif"
    tifffile.imwrite(literal, _plane(5))
    assert folder_inputs(str(literal)) is None  # an existing name with glob characters is one file
    with pytest.raises(EmsegError, match="matches no file"):
        folder_inputs(str(tmp_path / "*.png"))
    Image.fromarray(_plane(6)).save(stack / "z0.png")
    with pytest.raises(EmsegError, match="would both be written"):
        plan_outputs(folder_inputs(stack), tmp_path / "out")
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(EmsegError, match="--part"):
            parse_part(bad)


def test_cli_folder_with_a_corrupt_file(tmp_path, monkeypatch, capsys, one_torch_thread):
    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "a.tif", _plane(40))
    Image.fromarray(_plane(41)).save(raw / "b.png")
    (raw / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    code, _, err = run_cli(monkeypatch, capsys, "segment", raw / "*", "--out", tmp_path / "out", "--model", MODEL,
                           "--backend", "torch", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert "c.png: failed" in lines[0] and "2 segmented, 0 already complete, 1 failed" in lines[1]
    assert _complete(tmp_path / "out" / "a.zarr") and _complete(tmp_path / "out" / "b.zarr")
    code, out, err = run_cli(monkeypatch, capsys, "segment", raw / "a.tif", "--out", tmp_path / "x.zarr", "--part",
                             "1/2")
    assert code == 2 and "--part splits the files of a folder" in err


def test_a_pattern_the_shell_expanded_is_one_line_saying_to_quote_it(tmp_path, monkeypatch, capsys):
    """`segment raw/*.tif` unquoted reaches us as many arguments: one line that says to quote the pattern."""
    files = []
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((32, 32), np.uint8))
        files.append(tmp_path / name)
    code, _, err = run_cli(monkeypatch, capsys, "segment", *files, "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "quote the pattern" in lines[0], err
    assert not (tmp_path / "out").exists()
