"""OME-Zarr writers and the volume reader: round trips, metadata other readers understand, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io import (
    list_label_groups,
    open_volume,
    read_label_metadata,
    read_volume,
    write_ome_image,
    write_ome_labels,
    write_volume_with_labels,
)


def test_image_and_labels_round_trip_and_open_in_ome_zarr_reader(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 40, 36), dtype=np.uint8)
    labels = rng.integers(0, 4, image.shape, dtype=np.uint8)
    path = write_ome_image(tmp_path / "img.zarr", image, voxel_size=(30.0, 4.0, 4.0), levels=2)
    write_ome_labels(path, "organelles", labels, ["nucleus", "mitochondria", "granules"])

    np.testing.assert_array_equal(read_volume(path), image)
    np.testing.assert_array_equal(read_volume(path, level=1), image[:, ::2, ::2])
    vol = open_volume(path / "labels" / "organelles")
    assert vol.axes == ("z", "y", "x") and vol.voxel_size == (30.0, 4.0, 4.0) and vol.units == ("nanometer",) * 3
    np.testing.assert_array_equal(np.asarray(vol), labels)
    meta = read_label_metadata(path / "labels" / "organelles")
    assert [p["class"] for p in meta["properties"]] == ["nucleus", "mitochondria", "granules"]

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(path / "labels" / "organelles")))())
    assert any(node.specs and isinstance(node.specs[0], Label) for node in nodes)
    label_node = next(n for n in nodes if n.specs and isinstance(n.specs[0], Label))
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)


def test_reads_plain_v2_and_v3_arrays_and_group_keys(tmp_path):
    data = np.random.default_rng(2).random((3, 8, 9)).astype(np.float32)
    zarr.save_array(str(tmp_path / "v2.zarr"), data, zarr_format=2)
    np.testing.assert_array_equal(read_volume(tmp_path / "v2.zarr"), data)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=data)
    np.testing.assert_array_equal(read_volume(tmp_path / "g.zarr", key="raw"), data)
    with pytest.raises(EmsegError, match="--key"):
        open_volume(tmp_path / "g.zarr")
    with pytest.raises(EmsegError, match="no member 'nope'"):
        open_volume(tmp_path / "g.zarr", key="nope")


def test_reader_errors_name_the_path(tmp_path):
    with pytest.raises(EmsegError, match="does not exist"):
        open_volume(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(EmsegError, match="not a zarr"):
        open_volume(tmp_path / "plain")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(EmsegError, match="not a zarr"):
        open_volume(tmp_path / "file.txt")
    path = write_ome_image(tmp_path / "img.zarr", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(EmsegError, match="out of range"):
        open_volume(path, level=3)


def test_volume_with_labels_is_written_whole_and_read_back_by_label_name(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    truth = rng.integers(0, 3, image.shape, dtype=np.uint8)
    guess = rng.integers(0, 3, image.shape, dtype=np.uint8)
    path = write_volume_with_labels(tmp_path / "v.zarr", image, {"truth": truth, "guess": guess}, ("a", "b"),
                                    voxel_size=(2.0, 1.0, 1.0), attributes={"made_by": {"seed": 3}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr"]  # no .partial left behind
    assert list_label_groups(path) == ["truth", "guess"]
    np.testing.assert_array_equal(read_volume(path), image)
    np.testing.assert_array_equal(read_volume(path, labels="truth"), truth)
    np.testing.assert_array_equal(read_volume(path, labels="guess"), guess)
    assert open_volume(path, labels="truth").voxel_size == (2.0, 1.0, 1.0)
    assert zarr.open_group(str(path), mode="r").attrs["made_by"] == {"seed": 3}
    with pytest.raises(EmsegError, match="no label group labels/nope; it has: truth, guess"):
        read_volume(path, labels="nope")
    with pytest.raises(EmsegError, match="already exists"):
        write_volume_with_labels(path, image, {}, ("a", "b"))
    with pytest.raises(EmsegError, match="does not exist"):
        write_volume_with_labels(tmp_path / "no" / "v.zarr", image, {}, ("a", "b"))
    assert list_label_groups(tmp_path / "missing.zarr") == []


def test_scale_and_translation_compose_dataset_and_multiscales_transforms(tmp_path):
    """OME-Zarr 0.5: physical = (index · s_dataset + t_dataset) · s_multiscales + t_multiscales, per level."""
    image = np.random.default_rng(4).integers(0, 256, (3, 16, 12), dtype=np.uint8)
    path = write_ome_image(tmp_path / "img.zarr", image, voxel_size=(30.0, 4.0, 4.0), levels=2)
    group = zarr.open_group(str(path), mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [2.0, 1.0, 1.0]}, {"type": "translation", "translation": [1000.0, 64.0, 32.0]}]
    ome["multiscales"][0]["datasets"][1]["coordinateTransformations"].append(
        {"type": "translation", "translation": [0.0, 1.0, 1.0]})  # our stride-sampled levels carry none
    group.attrs["ome"] = ome
    s0, s1 = open_volume(path), open_volume(path, level=1)
    assert s0.voxel_size == (60.0, 4.0, 4.0) and s0.translation == (1000.0, 64.0, 32.0)
    assert s1.voxel_size == (60.0, 8.0, 8.0) and s1.translation == (1000.0, 65.0, 33.0)  # t_d · s_m + t_m
    plain = open_volume(write_ome_image(tmp_path / "plain.zarr", image))
    assert plain.voxel_size == (1.0, 1.0, 1.0) and plain.translation == (0.0, 0.0, 0.0)
