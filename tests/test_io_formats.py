"""Every input format reads the same voxels as the same volume written as zarr, block by block, lazily.

Fixtures are written with the tools that make these files in the field: tensorstore's n5 driver (in N5's
fastest-first dimension order, as Java N5 writes it), h5py, tifffile (OME-TIFF and ImageJ metadata included),
ome-zarr-py (OME-Zarr 0.4 and 0.5 in bioformats2raw containers), zarr; remote reads go through a local HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import json
import sys
import threading

import dask.array as da
import h5py
import numpy as np
import pytest
import tensorstore as ts
import tifffile
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume, read_volume, write_ome_image, write_ome_labels

SHAPE = (12, 20, 24)  # 12 planes: a folder of pages slice_0 .. slice_11 sorts naturally, not as text
BLOCK = (slice(3, 7),)  # a block of planes, as the runtime reads them


def make_volume(seed: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)


def write_zarr(path, data: np.ndarray):
    zarr.save_array(str(path), data)
    return path


def write_n5(path, data: np.ndarray, attributes: dict | None = None):
    """An N5 dataset as Java N5 writes it: dimensions and blockSize fastest-first (x, y, z)."""
    metadata = {"dimensions": list(data.shape[::-1]), "blockSize": [8, 8, 2], "dataType": data.dtype.name,
                "compression": {"type": "gzip"}, **(attributes or {})}
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}, "metadata": metadata,
                     "create": True}).result()
    store.T[...] = data
    return path


def assert_same_reads(volume_a, volume_b, data: np.ndarray):
    np.testing.assert_array_equal(np.asarray(volume_a.array[...]), data)
    np.testing.assert_array_equal(np.asarray(volume_b.array[...]), data)
    np.testing.assert_array_equal(volume_a.array[BLOCK], volume_b.array[BLOCK])
    np.testing.assert_array_equal(volume_a.array[5], data[5])
    np.testing.assert_array_equal(volume_a.array[-1, 2:9, ::3], data[-1, 2:9, ::3])
    assert volume_a.shape == volume_b.shape == data.shape and volume_a.dtype == volume_b.dtype == data.dtype
    assert volume_a.axes == ("z", "y", "x")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


DTYPES = ["uint8", "int16"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_n5_reads_like_zarr_in_zyx_order_with_its_resolution(tmp_path, dtype):
    data = make_volume(1, dtype)
    write_n5(tmp_path / "c.n5" / "volumes" / "raw", data,
             {"axes": ["x", "y", "z"], "pixelResolution": {"dimensions": [4.0, 4.0, 5.24], "unit": "nm"}})
    n5 = open_volume(tmp_path / "c.n5", key="volumes/raw")
    reference = open_volume(write_zarr(tmp_path / "ref.zarr", data))
    assert_same_reads(n5, reference, data)
    assert n5.voxel_size == (5.24, 4.0, 4.0) and n5.units == ("nanometer",) * 3 and n5.format == "n5"
    np.testing.assert_array_equal(read_volume(tmp_path / "c.n5", key="volumes/raw"), read_volume(tmp_path / "ref.zarr"))


def test_n5_cosem_multiscale_group_levels_and_transforms(tmp_path):
    """OpenOrganelle's layout: em/fibsem-int16/{s0,s1} with a `multiscales` entry per level (COSEM transforms)."""
    data = make_volume(2, "int16")
    group = tmp_path / "jrc_cell.n5" / "em" / "fibsem-int16"
    write_n5(group / "s0", data)
    write_n5(group / "s1", np.ascontiguousarray(data[:, ::2, ::2]))
    transform = {"axes": ["z", "y", "x"], "units": ["nm", "nm", "nm"], "ordering": "C"}
    levels = [{"path": "s0", "transform": {**transform, "scale": [5.24, 4.0, 4.0], "translate": [0.0, 0.0, 0.0]}},
              {"path": "s1", "transform": {**transform, "scale": [5.24, 8.0, 8.0], "translate": [0.0, 2.0, 2.0]}}]
    (group / "attributes.json").write_text(json.dumps({"multiscales": [{"datasets": levels, "name": "fibsem-int16"}]}))

    s0 = open_volume(tmp_path / "jrc_cell.n5", key="em/fibsem-int16")
    s1 = open_volume(tmp_path / "jrc_cell.n5", key="em/fibsem-int16", level=1)
    np.testing.assert_array_equal(s0.array[BLOCK], data[BLOCK])
    np.testing.assert_array_equal(s1.array[...], data[:, ::2, ::2])
    assert s0.voxel_size == (5.24, 4.0, 4.0) and s1.voxel_size == (5.24, 8.0, 8.0) and s1.translation == (0.0, 2.0, 2.0)
    assert s1.dataset_path == "s1" and s1.units == ("nanometer",) * 3
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "jrc_cell.n5")
    assert "choose a dataset with --key" in one_line_error(excinfo) and "em/fibsem-int16/s0" in str(excinfo.value)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "jrc_cell.n5", key="em/fibsem-int16", level=2)
    assert "out of range" in one_line_error(excinfo)


def test_n5_reads_only_the_blocks_it_is_asked_for(tmp_path):
    """A block of planes decodes its own N5 blocks only: planes elsewhere may be unreadable."""
    data = make_volume(3, "uint8")
    path = write_n5(tmp_path / "c.n5" / "raw", data)
    (path / "0" / "0" / "0").write_bytes(b"not an N5 block")  # N5 block (x 0, y 0, z 0): z = 0, 1
    volume = open_volume(tmp_path / "c.n5", key="raw")
    np.testing.assert_array_equal(volume.array[BLOCK], data[BLOCK])
    with pytest.raises(ValueError, match="raw/0/0/0"):  # tensorstore names the block it cannot decode
        volume.array[0:2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_hdf5_reads_like_zarr(tmp_path, dtype):
    data = make_volume(4, dtype)
    with h5py.File(tmp_path / "cell.h5", "w") as h5:
        dataset = h5.create_dataset("volumes/raw", data=data, chunks=(2, 10, 12), compression="gzip")
        dataset.attrs["element_size_um"] = [0.005, 0.004, 0.004]
        h5.create_dataset("volumes/labels", data=np.zeros(SHAPE, np.uint8))
    hdf5 = open_volume(tmp_path / "cell.h5", key="volumes/raw")
    assert_same_reads(hdf5, open_volume(write_zarr(tmp_path / "ref.zarr", data)), data)
    assert hdf5.voxel_size == (0.005, 0.004, 0.004) and hdf5.units == ("micrometer",) * 3
    assert hdf5.path == tmp_path / "cell.h5" and hdf5.format == "hdf5"
    np.testing.assert_array_equal(read_volume(tmp_path / "cell.h5", key="/volumes/raw"), data)

    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "cell.h5")
    assert "--key" in one_line_error(excinfo) and "volumes/raw" in str(excinfo.value)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "cell.h5", key="volumes/nope")
    assert "no dataset 'volumes/nope'" in one_line_error(excinfo) and "volumes/labels" in str(excinfo.value)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "cell.h5", key="volumes")
    assert "is an HDF5 group" in one_line_error(excinfo)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multipage_tiff_reads_like_zarr(tmp_path, dtype):
    data = make_volume(5, dtype)
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    tiff = open_volume(tmp_path / "stack.tif")
    assert_same_reads(tiff, open_volume(write_zarr(tmp_path / "ref.zarr", data)), data)
    assert tiff.voxel_size == (1.0, 1.0, 1.0) and tiff.units == (None, None, None)


def test_ome_tiff_carries_its_physical_sizes_and_units_per_series_and_level(tmp_path):
    """OME-XML PhysicalSizeX/Y/Z with their units (micrometres where none is named, as the OME schema says);
    each series its own; a pyramid level's voxels larger by the level's ratio."""
    data = make_volume(19, "uint8")
    physical = {"PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "nm",
                "PhysicalSizeZ": 5.0, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(tmp_path / "nm.ome.tif", data, ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", **physical})
    tiff = open_volume(tmp_path / "nm.ome.tif")
    np.testing.assert_array_equal(tiff.array[BLOCK], data[BLOCK])
    assert tiff.voxel_size == (5.0, 4.0, 4.0) and tiff.units == ("nanometer",) * 3
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as writer:  # two series, sizes in µm (default)
        writer.write(data, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeX": 0.004,
                                                                "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.005})
        writer.write(data[:, :10], photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeX": 0.008,
                                                                        "PhysicalSizeY": 0.008})
    first, second = (open_volume(tmp_path / "two.ome.tif", key=k) for k in ("0", "1"))
    assert first.voxel_size == (0.005, 0.004, 0.004) and first.units == ("micrometer",) * 3
    assert second.shape == (12, 10, 24) and second.voxel_size == (1.0, 0.008, 0.008)
    assert second.units == (None, "micrometer", "micrometer")  # z: no size given, so no unit invented
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", ome=True) as writer:
        writer.write(data[:, :16, :16], subifds=1, tile=(16, 16), photometric="minisblack",
                     metadata={"axes": "ZYX", **physical})
        writer.write(data[:, :8:2, :8:2], subfiletype=1, tile=(16, 16), photometric="minisblack")
    level1 = open_volume(tmp_path / "pyramid.ome.tif", level=1)
    assert level1.shape == (12, 4, 4) and level1.voxel_size == (5.0, 16.0, 16.0)
    for size, expected in (("four", "its OME PhysicalSizeX 'four' is not a number"),
                           ("-4", "voxel size (scale) (1.0, 1.0, -4.0) along z,y,x")):
        tifffile.imwrite(tmp_path / "bad.ome.tif", data, ome=True, photometric="minisblack",
                         metadata={"axes": "ZYX", "PhysicalSizeX": size})
        with pytest.raises(EmsegError) as excinfo:
            open_volume(tmp_path / "bad.ome.tif")
        assert expected in one_line_error(excinfo)


def test_imagej_tiff_carries_its_voxel_size(tmp_path):
    data = make_volume(6, "uint8")
    tifffile.imwrite(tmp_path / "fiji.tif", data, imagej=True, resolution=(1 / 4.0, 1 / 4.0),
                     metadata={"spacing": 5.0, "unit": "nm", "axes": "ZYX"})
    tiff = open_volume(tmp_path / "fiji.tif")
    np.testing.assert_array_equal(tiff.array[BLOCK], data[BLOCK])
    assert tiff.voxel_size == (5.0, 4.0, 4.0) and tiff.units == ("nanometer",) * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_folder_of_tiff_pages_reads_in_natural_order_and_only_the_pages_asked_for(tmp_path, dtype):
    data = make_volume(7, dtype)
    folder = tmp_path / "pages"
    folder.mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(folder / f"slice_{z}.tif", plane)  # slice_10 sorts after slice_9
    (folder / "notes.txt").write_text("acquired on the FIB-SEM")
    tiff = open_volume(folder)
    assert_same_reads(tiff, open_volume(write_zarr(tmp_path / "ref.zarr", data)), data)
    for z in (1, 10):  # planes outside the block (the first file's header describes them all)
        (folder / f"slice_{z}.tif").write_bytes(b"not a TIFF")
    damaged = open_volume(folder)
    np.testing.assert_array_equal(damaged.array[BLOCK], data[BLOCK])
    with pytest.raises(tifffile.TiffFileError):
        damaged.array[10]


def test_compressed_tiff_is_read_or_refused_at_open_naming_the_extra(tmp_path, monkeypatch):
    data = make_volume(18, "uint8")
    tifffile.imwrite(tmp_path / "lzw.tif", data, compression="lzw", photometric="minisblack")  # needs imagecodecs
    np.testing.assert_array_equal(open_volume(tmp_path / "lzw.tif").array[BLOCK], data[BLOCK])
    decoders = tifffile.TIFF.DECOMPRESSORS  # as if imagecodecs were not installed: no codec beyond tifffile's own
    monkeypatch.setattr(decoders, "_codecs", {1: decoders[1]})
    monkeypatch.setattr(sys.modules["tifffile.tifffile"], "imagecodecs", None)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "lzw.tif")
    assert "LZW-compressed" in one_line_error(excinfo) and "pip install 'emseg-rt[tiff]'" in str(excinfo.value)


def test_tiff_errors_are_one_line(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"not a TIFF at all")
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "broken.tif")
    assert "could not be opened as TIFF" in one_line_error(excinfo)
    tifffile.imwrite(tmp_path / "one.tif", make_volume(8, "uint8"))
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "one.tif", key="3")
    assert "no image series '3'" in one_line_error(excinfo)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 8, 8, 3), np.uint8))  # 4 RGB planes: z, y, x, samples
    assert open_volume(tmp_path / "rgb.tif").axes == ("z", "y", "x", "c")
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "rgb.tif", spatial=True)
    assert "3 channels (axis 'c' of z,y,x,c" in one_line_error(excinfo)


@pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")  # inside ome-zarr-py
def test_bioformats2raw_5d_singletons_are_squeezed_with_composed_transforms(tmp_path):
    """OME-Zarr 0.4 from bioformats2raw: root → image 0 → (1, 1, Z, Y, X) levels, written by ome-zarr-py."""
    import ome_zarr.format
    import ome_zarr.writer

    data = make_volume(9, "uint16")
    root = zarr.open_group(str(tmp_path / "cell.ome.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    image = root.create_group("0")
    ome_zarr.writer.write_image(data[None, None], image, axes="tczyx", fmt=ome_zarr.format.FormatV04(),
                                scale_factors=(2,), scale={"t": 1.0, "c": 1.0, "z": 5.0, "y": 4.0, "x": 4.0},
                                axes_units={a: "nanometer" for a in "zyx"})
    attrs = dict(image.attrs)  # a whole-image shift and stretch at the multiscales level
    attrs["multiscales"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0, 1.0, 2.0, 1.0, 1.0]},
        {"type": "translation", "translation": [0, 0, 100, 200, 300]}]
    image.attrs.update(attrs)

    s0 = open_volume(tmp_path / "cell.ome.zarr")
    assert s0.shape == SHAPE and s0.axes == ("z", "y", "x") and s0.is_ome
    np.testing.assert_array_equal(s0.array[BLOCK], data[BLOCK])
    np.testing.assert_array_equal(read_volume(tmp_path / "cell.ome.zarr"), data)
    assert s0.voxel_size == (10.0, 4.0, 4.0) and s0.translation == (100.0, 200.0, 300.0)
    assert s0.units == ("nanometer",) * 3 and str(s0.path).endswith("cell.ome.zarr/0")
    s1 = open_volume(tmp_path / "cell.ome.zarr", level=1)
    assert s1.voxel_size == (10.0, 8.0, 8.0) and s1.translation == (100.0, 202.0, 302.0)
    np.testing.assert_array_equal(s1.array[2], zarr.open_array(str(tmp_path / "cell.ome.zarr" / "0" / "s1"))[0, 0, 2])
    assert read_volume(tmp_path / "cell.ome.zarr", spatial=True).shape == SHAPE


def test_a_channel_axis_longer_than_one_is_kept_or_refused_in_one_line(tmp_path):
    data = np.stack([make_volume(10, "uint8"), make_volume(11, "uint8")])
    write_ome_image(tmp_path / "two.zarr", data[None], axes="tczyx")  # (t=1, c=2, z, y, x)
    volume = open_volume(tmp_path / "two.zarr")  # singleton t squeezed, c kept: e.g. per-class probabilities
    assert volume.axes == ("c", "z", "y", "x") and volume.shape == (2,) + SHAPE
    np.testing.assert_array_equal(volume.array[1, 3:5], data[1, 3:5])
    with pytest.raises(EmsegError) as excinfo:
        open_volume(tmp_path / "two.zarr", spatial=True)
    assert "2 channels (axis 'c' of t,c,z,y,x" in one_line_error(excinfo)


def test_zarr_v3_dimension_names_squeeze_a_singleton_channel(tmp_path):
    data = make_volume(12, "int16")
    zarr.create_array(str(tmp_path / "czyx.zarr"), data=data[None], dimension_names=["c", "z", "y", "x"])
    volume = open_volume(tmp_path / "czyx.zarr")
    assert volume.axes == ("z", "y", "x") and volume.shape == SHAPE
    np.testing.assert_array_equal(volume.array[BLOCK], data[BLOCK])
    # zarr's own attributes pass through the squeezed view (the runtime's missing-chunk check reads them)
    stored = zarr.open_array(str(tmp_path / "czyx.zarr"))
    assert volume.array.nchunks == volume.array.nchunks_initialized == stored.nchunks


def test_in_memory_numpy_dask_and_zarr_arrays(tmp_path):
    data = make_volume(13, "int16")
    touched: list[int] = []

    def record(block, block_info=None):
        touched.extend(range(*block_info[0]["array-location"][0]))
        return block

    lazy = da.from_array(data, chunks=(1, 20, 24)).map_blocks(record, dtype=data.dtype)
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(2, 10, 12))
    for source in (data, lazy, in_memory):
        volume = open_volume(source)
        assert volume.path is None and volume.axes == ("z", "y", "x") and volume.voxel_size == (1.0, 1.0, 1.0)
        assert volume.units == (None, None, None) and volume.shape == SHAPE and volume.dtype == np.int16
        block = volume.array[BLOCK]
        assert isinstance(block, np.ndarray)
        np.testing.assert_array_equal(block, data[BLOCK])
    assert sorted(touched) == [3, 4, 5, 6]  # dask computed the block's planes and nothing else
    np.testing.assert_array_equal(read_volume(lazy), data)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(data, key="raw")
    assert "in-memory numpy array (12, 20, 24) int16" in one_line_error(excinfo)
    with pytest.raises(EmsegError) as excinfo:
        open_volume([[1, 2], [3, 4]])
    assert "numpy, dask or zarr array" in one_line_error(excinfo)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): a local HTTP server on 127.0.0.1 serving `folder`, stopped after the test."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_http_urls_read_zarr_ome_zarr_labels_and_n5_unmangled(http_root):
    folder, base = http_root
    data = make_volume(14, "uint8")
    labels = (data > 128).astype(np.uint8)
    write_ome_image(folder / "img.zarr", data, voxel_size=(5.0, 4.0, 4.0), chunks=(2, 20, 24))
    write_ome_labels(folder / "img.zarr", "organelles", labels, ["mitochondria"])
    zarr.save_array(str(folder / "v2.zarr"), data, zarr_format=2)
    write_n5(folder / "c.n5" / "raw", data, {"axes": ["x", "y", "z"]})

    url = f"{base}/img.zarr"
    remote = open_volume(url)
    assert remote.path == url and remote.voxel_size == (5.0, 4.0, 4.0) and remote.is_ome
    assert_same_reads(remote, open_volume(folder / "img.zarr"), data)
    np.testing.assert_array_equal(read_volume(url, labels="organelles"), labels)
    np.testing.assert_array_equal(read_volume(f"{base}/v2.zarr")[BLOCK], data[BLOCK])
    n5 = open_volume(f"{base}/c.n5", key="raw")
    assert n5.path == f"{base}/c.n5/raw"
    np.testing.assert_array_equal(n5.array[BLOCK], data[BLOCK])

    with pytest.raises(EmsegError) as excinfo:
        open_volume(f"{base}/missing.zarr")
    assert f"{base}/missing.zarr is not a zarr array or group" in one_line_error(excinfo)


def test_s3_without_s3fs_names_the_extra(monkeypatch):
    import importlib

    registry = importlib.import_module("fsspec.registry")  # (`fsspec.registry` the attribute is a read-only view)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # forget an s3fs class imported earlier
    with pytest.raises(EmsegError) as excinfo:
        open_volume("s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.zarr", key="recon-1/em/fibsem-uint8")
    message = one_line_error(excinfo)
    assert "s3fs" in message and "pip install 'emseg-rt[remote]'" in message


@pytest.mark.parametrize("module, extra, make_input", [
    ("tensorstore", "n5", lambda p: write_n5(p / "c.n5" / "raw", make_volume(15, "uint8")).parent),
    ("h5py", "hdf5", lambda p: (h5py.File(p / "a.h5", "w").close(), p / "a.h5")[1]),
    ("tifffile", "tiff", lambda p: (tifffile.imwrite(p / "a.tif", make_volume(15, "uint8")), p / "a.tif")[1]),
])
def test_a_missing_reader_library_names_its_extra(tmp_path, monkeypatch, module, extra, make_input):
    source = make_input(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(EmsegError) as excinfo:
        open_volume(source, key="raw" if extra == "n5" else None)
    assert f"pip install 'emseg-rt[{extra}]'" in one_line_error(excinfo)


def test_missing_inputs_and_unknown_formats_are_one_line_errors(tmp_path):
    write_n5(tmp_path / "c.n5" / "raw", make_volume(16, "uint8"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "volume.raw").write_bytes(b"\0" * 64)
    cases = [
        (tmp_path / "missing.h5", {}, "does not exist"),
        (tmp_path / "c.n5", {"key": "nope"}, "has no N5 dataset or group 'nope' (datasets: raw)"),
        (tmp_path / "c.n5", {"key": "raw", "level": 1}, "not a multiscale group"),
        (tmp_path / "empty", {}, "not a zarr array or group"),
        (tmp_path / "volume.raw", {}, "supported: zarr / OME-Zarr, N5, HDF5"),
        ("https://127.0.0.1:9/cell.h5", {}, "local files only"),
        ("s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.n5", {"key": "em/fibsem-uint16"},
         "https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2/jrc_hela-2.n5"),
    ]
    for source, options, expected in cases:
        with pytest.raises(EmsegError) as excinfo:
            open_volume(source, **options)
        assert expected in one_line_error(excinfo), source


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
def test_each_format_segments_to_the_labels_of_the_same_voxels_as_zarr(tmp_path, engine, dtype):
    from emseg_rt.runtime import segment_volume

    info = np.iinfo(dtype)
    data = np.random.default_rng(17).integers(info.min, info.max, (4, 72, 64), dtype=dtype, endpoint=True)
    write_zarr(tmp_path / "ref.zarr", data)
    write_n5(tmp_path / "v.n5" / "raw", data)
    with h5py.File(tmp_path / "v.h5", "w") as h5:
        h5.create_dataset("raw", data=data, chunks=(1, 36, 32))
    tifffile.imwrite(tmp_path / "v.tif", data, photometric="minisblack")  # 4 planes, not one RGBA image
    (tmp_path / "pages").mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(tmp_path / "pages" / f"p{z}.tif", plane)
    inputs = {"zarr": (tmp_path / "ref.zarr", None), "n5": (tmp_path / "v.n5", "raw"),
              "hdf5": (tmp_path / "v.h5", "raw"), "tiff": (tmp_path / "v.tif", None),
              "tiff folder": (tmp_path / "pages", None)}
    labels = {}
    for name, (source, key) in inputs.items():
        assert open_volume(source, key=key, spatial=True).axes == ("z", "y", "x"), name
        report = segment_volume(source, tmp_path / f"out-{name.replace(' ', '-')}.zarr", backend=engine, key=key,
                                block=2)
        assert report.complete
        labels[name] = read_volume(report.label_path)
    assert len(np.unique(labels["zarr"])) > 1  # the model found something to label
    for name, result in labels.items():
        np.testing.assert_array_equal(result, labels["zarr"], err_msg=name)


@pytest.fixture(scope="module")
def default_engine():
    from emseg_rt.runtime import load_backend

    return load_backend(None, "torch")  # the embedded default model, as `segment` runs it without --model


def ome_zarr_reader_layer(path) -> dict:
    """What ome-zarr-py's Reader (napari-ome-zarr before 0.8 displays this) makes of the label image at `path`:
    name, axes (with units) and the scale of each level."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    return {"name": node.metadata["name"], "axes": node.metadata["axes"],
            "scales": [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]}


def nanometre_axes(*sizes: float) -> list[dict]:
    return [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"][-len(sizes):]


@pytest.mark.usefixtures("one_torch_thread")
def test_ome_tiff_physical_sizes_reach_the_segment_output(tmp_path, default_engine):
    from emseg_rt.runtime import segment_volume

    data = np.random.default_rng(20).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cell.ome.tif", data, ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.0,
                               "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 10.0, "PhysicalSizeZUnit": "nm"})
    report = segment_volume(tmp_path / "cell.ome.tif", tmp_path / "seg.zarr", backend=default_engine,
                            label_name="cells")
    assert report.complete
    layer = ome_zarr_reader_layer(tmp_path / "seg.zarr")
    assert layer == {"name": "cells", "axes": nanometre_axes(10, 4, 4), "scales": [[10.0, 4.0, 4.0]]}


def write_bioformats2raw(path, zarr_format: int, images: list[np.ndarray], series: list[str] | None = None):
    """A bioformats2raw container as bioformats2raw lays it out: root attribute `bioformats2raw.layout` 3 (under
    "ome" in 0.5), images 0, 1, ... each an OME image with (t, c, z, y, x) levels, and OME/METADATA.ome.xml;
    image k has voxel size (5, 4 (k + 1), 4 (k + 1)) nm, so each image is known by its scale."""
    import ome_zarr.format
    import ome_zarr.writer

    version = {2: "0.4", 3: "0.5"}[zarr_format]
    fmt = ome_zarr.format.FormatV04() if version == "0.4" else ome_zarr.format.FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    layout = {"bioformats2raw.layout": 3}
    root.attrs.update(layout if version == "0.4" else {"ome": {"version": version, **layout}})
    for k, data in enumerate(images):
        ome_zarr.writer.write_image(data[None, None], root.create_group(str(k)), axes="tczyx", fmt=fmt,
                                    scale_factors=(), axes_units={a: "nanometer" for a in "zyx"},
                                    scale={"t": 1.0, "c": 1.0, "z": 5.0, "y": 4.0 * (k + 1), "x": 4.0 * (k + 1)})
    ome = root.create_group("OME")
    if series is not None:
        ome.attrs.update({"series": series} if version == "0.4" else {"ome": {"version": version, "series": series}})
    images_xml = "".join(f'<Image ID="Image:{k}" Name="series {k}"/>' for k in range(len(images)))
    (path / "OME" / "METADATA.ome.xml").write_text(
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">{images_xml}</OME>')
    return path


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_bioformats2raw_root_segments_its_image_0_or_the_one_key_names(tmp_path, engine, zarr_format):
    from emseg_rt.runtime import segment_volume

    rng = np.random.default_rng(21)
    images = [rng.integers(0, 256, (2, 64, 64), dtype=np.uint8), rng.integers(0, 256, (1, 48, 40), dtype=np.uint8)]
    root = write_bioformats2raw(tmp_path / "plate.ome.zarr", zarr_format, images)
    for key, image in ((None, 0), ("1", 1)):
        volume = open_volume(root, key=key, spatial=True)
        np.testing.assert_array_equal(volume.array[...], images[image])
        assert str(volume.path).endswith(f"plate.ome.zarr/{image}")
        out = tmp_path / f"seg-{key}.zarr"
        assert segment_volume(root, out, backend=engine, key=key).complete
        labels = read_volume(out)
        assert labels.shape == images[image].shape
        side = 4.0 * (image + 1)
        assert ome_zarr_reader_layer(out) == {"name": "organelles", "axes": nanometre_axes(5, side, side),
                                              "scales": [[5.0, side, side]]}
    # The OME group's `series` names the images in OME-XML order: its first is image 0.
    reordered = write_bioformats2raw(tmp_path / "reordered.ome.zarr", zarr_format, images, series=["1", "0"])
    assert open_volume(reordered).shape == images[1].shape
    with pytest.raises(EmsegError) as excinfo:
        open_volume(write_bioformats2raw(tmp_path / "none.ome.zarr", zarr_format, images, series=["7"]))
    assert "bioformats2raw container without image '7'; choose an image with --key (groups: 0, 1, OME)" in (
        one_line_error(excinfo))
