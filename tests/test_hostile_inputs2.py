"""Hostile inputs on the reading side (issue 26, items 1-3): metadata that declares what no volume has, member
paths that climb out of their group, JSON nested past Python's recursion limit, point prompts that prompt
nothing, and model packages whose manifest does not describe their graph.

Each case is refused by the one boundary check of its input kind (`io.open_volume` and its readers,
`io.zarr_reader.check_member`, `runtime.prompts`, `package.load_package`), shared by every command: one
`emseg-rt: error:` line, exit code 2, no traceback, and nothing written or changed. Packages are made by hand
(a four-node ONNX graph and its manifest, milliseconds), so no export runs here; the control test shows such a
package segments a volume, so the refusals are of the crafted fields, not of the hand-made package.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.constants import MODEL_FAMILIES
from emseg_rt.errors import EmsegError
from emseg_rt.io import read_volume
from emseg_rt.package import MANIFEST_NAME, PACKAGE_FORMAT, load_package, sha256_file, write_manifest

TILE = 16


# ------------------------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` → sha256 of its bytes ('dir' / 'link' for those). The lock files
    writers take beside their output (`.NAME.emseg-rt.lock`, empty of meaning once released) are left out."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.name.endswith(".emseg-rt.lock"):
            continue
        if path.is_symlink():
            found[rel] = f"link {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def refused(monkeypatch, capsys, root: Path, *args, fragments: tuple[str, ...]) -> str:
    """Run `emseg-rt ARGS` in-process: one line holding every fragment, exit 2, and nothing under `root` changed."""
    before = snapshot(root)
    line = assert_one_line(run_cli(monkeypatch, capsys, *args), *fragments)
    assert snapshot(root) == before
    return line


def small_volume(path: Path, dtype=np.uint8) -> Path:
    data = np.random.default_rng(0).integers(0, 200, (2, 32, 32)).astype(dtype)
    zarr.create_array(str(path), data=data, chunks=(1, 32, 32))
    return path


def ome_image(path: Path, dataset_path: str = "0", scale=(1.0, 1.0, 1.0), translation=None) -> Path:
    """An OME-Zarr 0.4 image (zarr v2) of one level at `0`, whose multiscales metadata names `dataset_path`."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.random.default_rng(1).integers(0, 200, (2, 32, 32), dtype=np.uint8))
    transforms = [{"type": "scale", "scale": list(scale)}]
    if translation is not None:
        transforms.append({"type": "translation", "translation": list(translation)})
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                   "datasets": [{"path": dataset_path, "coordinateTransformations": transforms}]}]
    return path


def tiny_graph(tile: int = TILE, classes: int = 3) -> onnx.ModelProto:
    """tiles (batch, 1, T, T) uint8 → logits (batch, K, T, T) float32 (the tile K times), labels (batch, T, T)
    uint8."""
    h = onnx.helper
    nodes = [h.make_node("Cast", ["tiles"], ["f"], to=onnx.TensorProto.FLOAT),
             h.make_node("Concat", ["f"] * classes, ["logits"], axis=1),
             h.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0),
             h.make_node("Cast", ["best"], ["labels"], to=onnx.TensorProto.UINT8)]
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("tiles", onnx.TensorProto.UINT8,
                                                                  ["batch", 1, tile, tile])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes, tile, tile]),
                          h.make_tensor_value_info("labels", onnx.TensorProto.UINT8, ["batch", tile, tile])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)


def make_package(root: Path, edit=None) -> Path:
    """A hand-made scsam package of `tiny_graph`, with `edit(manifest)` applied and every hash recomputed (as
    a crafted package's author would): the loader's checks must hold without the hashes' help."""
    root.mkdir()
    onnx.save(tiny_graph(), str(root / "full.onnx"))
    tiles = {"name": "tiles", "dtype": "uint8", "shape": ["batch", 1, TILE, TILE]}
    manifest = {
        "format": PACKAGE_FORMAT, "format_version": 1, "name": "hand-tiny", "family": "scsam", "size": "tiny",
        "classes": ["nucleus", "mitochondria", "granules"], "tile": TILE, "grid": 1, "precision": "fp32",
        "batch_max": 4, "opset": 18, "input": {**tiles, "layout": "NCHW", "normalisation": {"inside_graph": True}},
        "prompts": [],
        "components": {"full": {"role": "full", "file": "full.onnx", "external_data": [], "inputs": [tiles],
                                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3, TILE, TILE]},
                                            {"name": "labels", "dtype": "uint8", "shape": ["batch", TILE, TILE]}]}},
        "files": {}, "parity": {"passed": True}, "engines": {}, "toolchain": {}, "checkpoints": [],
    }
    if edit is not None:
        edit(manifest, root)
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(root.iterdir())
                         if p.is_file() and p.name not in (MANIFEST_NAME, "manifest.sha256")}
    write_manifest(root, manifest)
    return root


def test_the_hand_made_package_loads_and_segments(tmp_path, monkeypatch, capsys):
    """The control: the package the refusals below start from is accepted and runs."""
    package = make_package(tmp_path / "pkg")
    assert load_package(package).tile == TILE
    code, _, err = run_cli(monkeypatch, capsys, "segment", small_volume(tmp_path / "in.zarr"), "--model", package,
                           "--backend", "onnxruntime", "--out", tmp_path / "out.zarr", "--quiet")
    assert code == 0, err
    assert read_volume(tmp_path / "out.zarr").shape == (2, 32, 32)


def test_the_families_a_manifest_may_name_are_the_registry_families():
    from emseg_rt.models.registry import FAMILY_DESCRIPTIONS

    assert set(MODEL_FAMILIES) == set(FAMILY_DESCRIPTIONS)


# --------------------------------------------------------------------- memory: what metadata claims


def absurd_array(path: Path, shape, chunks, dtype="uint8") -> Path:
    """A zarr array whose metadata declares `shape` (no chunk written: only metadata costs anything)."""
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype)
    return path


ABSURD = {  # name → (shape, chunks, the words of the refusal)
    "one chunk of 10 GB": ((2, 100_000, 100_000), (1, 100_000, 100_000), ("chunks of 1×100000×100000", "rewrite")),
    "planes of 100 TB": ((2, 10**7, 10**7), (1, 512, 512), ("one z plane", "needs about", "available")),
    "a billion chunks": ((10**9, 256, 256), (1, 256, 256), ("one y plane", "needs about", "available")),
    "10^18 voxels": ((10**6, 10**6, 10**6), (1, 256, 256), ("1e+18 voxels", "fix its shape")),
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_metadata_is_refused_before_anything_is_read(tmp_path, monkeypatch, capsys, case):
    shape, chunks, words = ABSURD[case]
    source = absurd_array(tmp_path / "absurd.zarr", shape, chunks)
    refused(monkeypatch, capsys, tmp_path, "segment", source, "--model", "scsam-tiny", "--out", tmp_path / "o.zarr",
            "--quiet", fragments=words)
    refused(monkeypatch, capsys, tmp_path, "segment", source, "--model", "scsam-tiny", "--out", tmp_path / "o.zarr",
            "--quiet", "--allow-missing-chunks", fragments=words)


def test_eval_refuses_a_volume_larger_than_memory(tmp_path, monkeypatch, capsys):
    source = absurd_array(tmp_path / "absurd.zarr", (16, 10**6, 10**6), (1, 512, 512))
    refused(monkeypatch, capsys, tmp_path, "eval", source, source, fragments=("the whole volume", "needs about"))


def test_missing_chunks_are_counted_from_the_listing_not_the_declared_grid(tmp_path):
    """zarr's nchunks_initialized walks every key of the declared grid (hours for 10^8 chunks); ours lists what is
    stored, and agrees with zarr on arrays of every key encoding, nested and sharded."""
    from emseg_rt.io.zarr_reader import chunk_counts

    for index, (fmt, kwargs) in enumerate([(2, {}), (2, {"chunk_key_encoding": {"name": "v2", "separator": "/"}}),
                                           (3, {}), (3, {"chunk_key_encoding": {"name": "v2", "separator": "."}}),
                                           (3, {"shards": (2, 64, 64)})]):
        array = zarr.create_array(str(tmp_path / f"a{index}.zarr"), shape=(4, 64, 64), chunks=(1, 32, 32),
                                  dtype="uint8", zarr_format=fmt, **kwargs)
        array[:2] = 1
        assert chunk_counts(array) == (array.nchunks_initialized, array.nchunks) == (8, 16)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    inner = group.create_array("0", shape=(4, 64, 64), chunks=(1, 32, 32), dtype="uint8")
    inner[:3] = 1
    group.create_array("01", shape=(4, 64, 64), chunks=(1, 32, 32), dtype="uint8")[:] = 1  # "0" is its prefix
    assert chunk_counts(inner) == (12, 16)
    huge = absurd_array(tmp_path / "huge.zarr", (16, 10**6, 10**6), (1, 256, 256))
    assert chunk_counts(zarr.open_array(str(huge), mode="r")) == (0, 16 * 3907**2)  # at once, no grid walk


def test_statistics_are_sampled_in_strips_with_the_same_numbers(monkeypatch):
    """A plane larger than STRIP_VOXELS is read a strip of rows at a time; the sample (and so every output
    byte) is the one the whole plane gives."""
    from emseg_rt.runtime import normalise

    volume = np.random.default_rng(2).integers(0, 5000, (3, 300, 257)).astype(np.uint16)
    whole = normalise.sample_planes(volume, "v", max_planes=16, samples_per_plane=4096, seed=0)
    full_planes = normalise.dataset_normalisation(volume, "v")
    monkeypatch.setattr(normalise, "STRIP_VOXELS", 1000)
    read = []
    monkeypatch.setattr(normalise, "check_finite", lambda values, where: read.append(values.size))
    strips = normalise.sample_planes(volume, "v", max_planes=16, samples_per_plane=4096, seed=0)
    np.testing.assert_array_equal(strips[0], whole[0])
    assert max(read) <= 1000 and normalise.dataset_normalisation(volume, "v") == full_planes


ADDRESS_SPACE = 8 << 30  # importing torch maps ~4 GiB here (a tiny segment runs in 5); the plane below needs 37


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_segment_under_an_address_space_limit_refuses_absurd_metadata(tmp_path):
    """`ulimit -v`: with 8 GiB of address space, segment on a uint16 array declaring 100000×100000 planes (no
    chunk stored, so nothing bounds it but the metadata) used to allocate a whole plane for its intensity
    statistics (`_ArrayMemoryError: Unable to allocate 18.6 GiB`, a traceback; unlimited, it grew past 13 GB until
    the kernel's OOM killer took it); now it exits 2 with one line, having written nothing."""
    source = absurd_array(tmp_path / "absurd.zarr", (2, 100_000, 100_000), (1, 1024, 1024), dtype="uint16")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-m", "emseg_rt", "segment", str(source), "--model", "scsam-tiny",
                           "--out", str(tmp_path / "o.zarr"), "--quiet", "--allow-missing-chunks"],
                          preexec_fn=limit, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "one z plane" in lines[0] and "needs about" in lines[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absurd.zarr"]


# ------------------------------------------------------------------------ member paths and OME metadata


def test_dot_dot_and_empty_member_paths_are_refused(tmp_path, monkeypatch, capsys):
    """`..` in --key, in a multiscales dataset path and in eval's --pred-labels / --gt-labels used to reach
    zarr (ValueError traceback) or the file system (a sibling directory opened); an empty dataset path opened
    the group itself (AttributeError: 'Group' object has no attribute 'ndim')."""
    small_volume(tmp_path / "secret.zarr")
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("raw", data=np.zeros((2, 32, 32), np.uint8))
    segment = ("segment", "--model", "scsam-tiny", "--out", tmp_path / "o.zarr", "--quiet")
    for key in ("../secret.zarr", "raw/..", "./raw", "raw//x"):
        refused(monkeypatch, capsys, tmp_path, segment[0], tmp_path / "group.zarr", "--key", key, *segment[1:],
                fragments=(f"--key {key!r}", "not a path inside the group"))
    for dataset_path in ("../secret.zarr", "", "0/..", "."):
        image = ome_image(tmp_path / f"image{len(dataset_path)}.zarr", dataset_path)
        refused(monkeypatch, capsys, tmp_path, segment[0], image, *segment[1:],
                fragments=(f"multiscales dataset path {dataset_path!r}", "fix the metadata"))
    image = ome_image(tmp_path / "img.zarr")
    labels = zarr.open_group(str(image / "labels"), mode="a", zarr_format=2)
    labels.attrs["labels"] = ["org"]
    ome_image(image / "labels" / "org")
    zarr.open_group(str(image / "labels" / "org"), mode="a", zarr_format=2).attrs["image-label"] = {"version": "0.4"}
    for name in ("../org", "..", "org/../org", ""):
        for option in ("--pred-labels", "--gt-labels"):
            refused(monkeypatch, capsys, tmp_path, "eval", image, image, option, name,
                    fragments=(f"{option} {name!r}", "not a path inside the group"))
    labels.attrs["labels"] = ["../secret"]  # the label image eval picks when none is named
    refused(monkeypatch, capsys, tmp_path, "eval", image, image, "--gt-labels", "org",
            fragments=("lists the label image '../secret'", "fix the metadata"))


@pytest.mark.parametrize("scale,translation,words", [
    ((float("nan"), 1.0, 1.0), None, "voxel size (scale) (nan, 1.0, 1.0)"),
    ((0.0, 1.0, 1.0), None, "must be finite numbers > 0"),
    ((1.0, -2.0, 1.0), None, "must be finite numbers > 0"),
    ((1.0, 1.0, 1.0), (0.0, float("inf"), 0.0), "origin (translation)"),
    (("a", "b", "c"), None, "not lists of numbers"),
])
def test_ome_scale_must_be_finite_positive_numbers(tmp_path, monkeypatch, capsys, scale, translation, words):
    """A NaN scale used to be written into the output's metadata as NaN (invalid JSON for every other reader)."""
    image = ome_image(tmp_path / "img.zarr", scale=scale, translation=translation)
    refused(monkeypatch, capsys, tmp_path, "segment", image, "--model", "scsam-tiny", "--out", tmp_path / "o.zarr",
            "--quiet", fragments=(words,))


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_metadata_nested_past_the_recursion_limit_is_one_line(tmp_path, monkeypatch, capsys):
    image = ome_image(tmp_path / "img.zarr")
    attrs = json.loads((image / ".zattrs").read_text())
    (image / ".zattrs").write_text(json.dumps(attrs)[:-1] + f', "x": {deep_json(100_000)}}}')
    refused(monkeypatch, capsys, tmp_path, "segment", image, "--model", "scsam-tiny", "--out", tmp_path / "o.zarr",
            "--quiet", fragments=("could not be opened as zarr", "RecursionError"))


# ---------------------------------------------------------------------------------------- packages


def deep_manifest(manifest: dict, root: Path) -> None:
    manifest["notes"] = "DEEP"


@pytest.mark.parametrize("command", ["inspect", "segment", "build"])
def test_a_manifest_nested_past_the_recursion_limit_is_one_line(tmp_path, monkeypatch, capsys, command):
    package = make_package(tmp_path / "pkg", deep_manifest)
    text = (package / MANIFEST_NAME).read_text().replace('"DEEP"', deep_json(5000))
    (package / MANIFEST_NAME).write_text(text)  # with its hash recomputed, as a crafted package would
    (package / "manifest.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST_NAME}\n")
    args = {"inspect": ("inspect", package),
            "segment": ("segment", small_volume(tmp_path / "in.zarr"), "--model", package, "--backend", "onnxruntime",
                        "--out", tmp_path / "o.zarr", "--quiet"),
            "build": ("build", package, "--target", "sm86")}[command]
    refused(monkeypatch, capsys, tmp_path, *args, fragments=("manifest.json is nested too deeply",))


def test_an_external_data_location_with_a_nul_byte_is_refused(tmp_path, monkeypatch, capsys):
    def nul_location(manifest, root):
        model = tiny_graph()
        weight = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "unused")
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "w\x00.bin"), ("offset", "0"), ("length", "4")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        model.graph.initializer.append(weight)
        onnx.save(model, str(root / "full.onnx"))
        (root / "w.bin").write_bytes(bytes(4))

    package = make_package(tmp_path / "pkg", nul_location)
    for flags in ((), ("--no-verify",)):
        refused(monkeypatch, capsys, tmp_path, "inspect", package, *flags,
                fragments=("full.onnx reads external data from 'w\\x00.bin'", "not a file name"))
    with pytest.raises(EmsegError, match="not a file name"):
        load_package(package)


@pytest.mark.parametrize("loop", [("a", "b"), ("self",)])
def test_a_symlink_loop_inside_a_package_is_refused(tmp_path, monkeypatch, capsys, loop):
    package = make_package(tmp_path / "pkg")
    for name, target in zip(loop, loop[1:] + loop[:1]):
        os.symlink(target, package / name)
    refused(monkeypatch, capsys, tmp_path, "inspect", package, fragments=("is a symlink loop",))
    refused(monkeypatch, capsys, tmp_path, "segment", small_volume(tmp_path / "in.zarr"), "--model", package,
            "--backend", "onnxruntime", "--out", tmp_path / "o.zarr", "--quiet", fragments=("is a symlink loop",))


def set_field(key, value):
    return lambda manifest, root: manifest.__setitem__(key, value)


CRAFTED = {  # name → (edit of the manifest, words of the refusal)
    "tile 0": (set_field("tile", 0), "manifest tile 0 is not a tile side"),
    "tile 10,000,000": (set_field("tile", 10_000_000), "manifest tile 10000000 is not a tile side"),
    "tile 16.5": (set_field("tile", 16.5), "manifest tile 16.5"),
    "batch_max 0": (set_field("batch_max", 0), "manifest batch_max 0 is not a largest batch"),
    "batch_max 1e400": (set_field("batch_max", float("inf")), "manifest batch_max inf"),
    "300 classes": (set_field("classes", [f"c{i}" for i in range(300)]),
                    "full graph's logits should be ('batch', 300, 16, 16), but it is ('batch', 3, 16, 16)"),
    "4 classes for 3": (set_field("classes", ["a", "b", "c", "d"]), "logits should be ('batch', 4, 16, 16)"),
    "repeated class": (set_field("classes", ["a", "a", "b"]), "distinct names"),
    "prompted family": (set_field("family", "vanilla-sam"), "inputs should be ('tiles', 'point_coords'"),
    "unknown family": (set_field("family", "resnet"), "family 'resnet' is not one this emseg-rt knows"),
    "prompts it lacks": (set_field("prompts", ["point_coords", "point_labels"]), "full graph's prompts should be ()"),
}


def _tile_everywhere(manifest, root):
    """Tile 32 written consistently through the manifest (input, component records): only the graph disagrees."""
    manifest["tile"] = 32
    manifest["input"]["shape"] = ["batch", 1, 32, 32]
    full = manifest["components"]["full"]
    full["inputs"][0]["shape"] = ["batch", 1, 32, 32]
    full["outputs"][0]["shape"] = ["batch", 3, 32, 32]
    full["outputs"][1]["shape"] = ["batch", 32, 32]


def _engine_of_batch_0(manifest, root):
    (root / "full.sm86.engine").write_bytes(b"engine")
    manifest["engines"] = {"full": {"sm86": {"file": "full.sm86.engine", "target": "sm86", "flavour": "tensorrt-rtx",
                                             "trt_version": "1", "batch_max": 0}}}


CRAFTED["engine batch_max 0"] = (_engine_of_batch_0, "batch_max 0 is not the largest batch of engine full/sm86")
CRAFTED["tile in every record but the graph"] = (
    _tile_everywhere, "lists full.onnx's inputs as tiles uint8 ['batch', 1, 32, 32] but the graph has tiles uint8 "
    "['batch', 1, 16, 16]")


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_manifest_that_does_not_describe_its_graph_is_refused(tmp_path, monkeypatch, capsys, case):
    """Self-consistent (every hash recomputed) but impossible packages: refused by load_package, so by inspect
    (with and without --no-verify) and by segment alike."""
    edit, words = CRAFTED[case]
    package = make_package(tmp_path / "pkg", edit)
    with pytest.raises(EmsegError, match="re-export"):
        load_package(package)
    refused(monkeypatch, capsys, tmp_path, "inspect", package, fragments=(words,))
    refused(monkeypatch, capsys, tmp_path, "inspect", package, "--no-verify", fragments=(words,))
    refused(monkeypatch, capsys, tmp_path, "segment", small_volume(tmp_path / "in.zarr"), "--model", package,
            "--backend", "onnxruntime", "--out", tmp_path / "o.zarr", "--quiet", fragments=(words,))


def test_a_truncated_graph_is_refused_even_with_a_matching_hash(tmp_path, monkeypatch, capsys):
    """`inspect` used to list a truncated full.onnx (its hash recomputed) as fine; every graph is now read whole
    (inputs and outputs against the manifest), with or without --no-verify."""
    def truncate(manifest, root):
        data = (root / "full.onnx").read_bytes()
        (root / "full.onnx").write_bytes(data[:len(data) - 7])

    package = make_package(tmp_path / "pkg", truncate)
    for flags in ((), ("--no-verify",)):
        refused(monkeypatch, capsys, tmp_path, "inspect", package, *flags,
                fragments=("full.onnx: not a complete ONNX graph", "truncated"))
    refused(monkeypatch, capsys, tmp_path, "segment", small_volume(tmp_path / "in.zarr"), "--model", package,
            "--backend", "onnxruntime", "--out", tmp_path / "o.zarr", "--quiet",
            fragments=("not a complete ONNX graph",))


def test_inspect_says_what_it_checked(tmp_path, monkeypatch, capsys):
    package = make_package(tmp_path / "pkg")
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", package)
    assert code == 0 and "every sha256 checked" in out and "checked against the manifest" in out
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", package, "--no-verify")
    assert code == 0 and "sha256 NOT checked (--no-verify)" in out


def test_the_graph_reader_agrees_with_onnx_and_refuses_every_cut(tmp_path):
    """`graph_signature` reads inputs and outputs from the protobuf wire format; it agrees with onnx.load on a
    graph with an initialiser listed as an input, and refuses the file cut at any byte."""
    from emseg_rt.package import TensorSpec, graph_signature

    model = tiny_graph()
    weight = onnx.numpy_helper.from_array(np.ones(2, np.float32), "w")
    model.graph.initializer.append(weight)
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2]))
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    inputs, outputs = graph_signature(path)
    assert inputs == (TensorSpec("tiles", "uint8", ("batch", 1, TILE, TILE)),)
    assert [o.name for o in outputs] == ["logits", "labels"] and outputs[0].shape == ("batch", 3, TILE, TILE)
    data = path.read_bytes()
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(EmsegError, match="not a complete ONNX graph"):
            graph_signature(path)


# ------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("text,words", [("", "holds no points (empty)"), ("z,y,x\n", "holds no points (a header only)"),
                                        ("z,y,x,label\n# nothing\n\n", "a header only"),
                                        ("# comments only\n", "holds no points (empty)")])
def test_a_prompts_file_without_points_is_refused(tmp_path, monkeypatch, capsys, text, words):
    """An empty or header-only CSV used to run prompt-free without a word."""
    (tmp_path / "points.csv").write_text(text)
    refused(monkeypatch, capsys, tmp_path, "segment", small_volume(tmp_path / "in.zarr"), "--model", "prompt-das-tiny",
            "--prompts", tmp_path / "points.csv", "--out", tmp_path / "o.zarr", "--quiet", fragments=(words,))


def test_prompts_outside_the_volume_are_refused(tmp_path, monkeypatch, capsys):
    """Points that prompt nothing used to be only noted; they are refused, saying how many and the shape, before
    anything is written (and by segment_labels alike)."""
    from emseg_rt.runtime import segment_labels
    from emseg_rt.runtime.prompts import PointSet

    (tmp_path / "points.csv").write_text("z,y,x\n1,5,5\n2,5,5\n0,40,3\n1,1e300,2\n-0.6,3,3\n1,31.4,31.4\n")
    words = ("4 of 6 points lie outside the volume (2, 32, 32) (z, y, x)", "e.g. (2.0, 5.0, 5.0)")
    source = small_volume(tmp_path / "in.zarr")
    refused(monkeypatch, capsys, tmp_path, "segment", source, "--model", "prompt-das-tiny", "--prompts",
            tmp_path / "points.csv", "--out", tmp_path / "o.zarr", "--quiet", fragments=words)
    with pytest.raises(EmsegError, match="1 of 1 points lie outside"):
        segment_labels(np.zeros((2, 32, 32), np.uint8), model="prompt-das-tiny",
                       prompts=PointSet(np.array([[0.0, 32.0, 0.0]]), np.array([1])))


@pytest.mark.parametrize("case", ["empty array", "complex", "dot-dot level", "wrong shape"])
def test_a_points_array_is_checked(tmp_path, monkeypatch, capsys, case):
    points = tmp_path / "points.zarr"
    if case == "empty array":
        zarr.create_array(str(points), shape=(0, 3), dtype="float64")
        words = ("holds no points",)
    elif case == "complex":
        zarr.create_array(str(points), data=np.ones((2, 3), np.complex64))
        words = ("dtype complex64 is not real numbers",)
    elif case == "wrong shape":
        zarr.create_array(str(points), data=np.ones((2, 5)))
        words = ("shape (2, 5)",)
    else:
        ome_image(points, "../in.zarr")
        words = ("multiscales dataset path '../in.zarr'",)
    refused(monkeypatch, capsys, tmp_path, "segment", small_volume(tmp_path / "in.zarr"), "--model", "prompt-das-tiny",
            "--prompts", points, "--out", tmp_path / "o.zarr", "--quiet", fragments=words)


def test_non_integer_coordinates_are_read_as_sub_voxel_positions_and_said_so():
    """Decided, not refused: a fractional coordinate is documented (docs, runtime.prompts) as a sub-voxel position
    within a plane, the plane along the slicing axis rounded half up, and napari's point layers give fractions;
    a run says how many of its points have them."""
    from emseg_rt.runtime.prompts import PointSet, fractional_note

    assert fractional_note(PointSet(np.array([[1.0, 2.0, 3.0]]), np.array([1]))) is None
    note = fractional_note(PointSet(np.array([[1.0, 2.5, 3.0], [1.0, 2.0, 3.0]]), np.array([1, 0])))
    assert note.startswith("prompts: 1 of 2 points have non-integer coordinates")
