"""Hostile and wrong inputs outside `segment` (issue 10): crafted model packages, crafted training state,
directories that are not ours, and CLI inputs that used to be accepted or end in a traceback.

Each test asserts what a user cares about: the crafted file is refused in one line and nothing outside the
package is read or written; a pickle that would run code is refused and did not run; a directory that is
not ours keeps every file; every CLI error is exactly one stderr line with exit code 2.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.errors import EmsegError
from emseg_rt.package import MANIFEST_HASH_NAME, MANIFEST_NAME, load_package, sha256_file, write_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = "scsam-tiny"  # 128² tiles, 3 classes
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None  # builds engines ahead of time, no GPU needed


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """A real package of scsam-tiny (the full graph) exported once for the module into a private cache."""
    from emseg_rt.export.cache import cached_package

    saved = os.environ.get("EMSEG_RT_CACHE")
    os.environ["EMSEG_RT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return cached_package(MODEL)
    finally:
        if saved is None:
            os.environ.pop("EMSEG_RT_CACHE", None)
        else:
            os.environ["EMSEG_RT_CACHE"] = saved


@pytest.fixture
def package(tiny_package, tmp_path) -> Path:
    """A private copy of the tiny package, to be tampered with."""
    return Path(shutil.copytree(tiny_package, tmp_path / "pkg"))


def edit_manifest(package_dir: Path, edit) -> dict:
    """Apply `edit(manifest)` and write it back with a consistent manifest.sha256: a crafted package whose
    author recomputed every hash. The loader's checks must hold without the hash's help."""
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    edit(manifest)
    write_manifest(package_dir, manifest)
    return manifest


def matmul_graph(location: str | None, weight: np.ndarray) -> onnx.ModelProto:
    """x (batch, 64) @ w (64, 32): w inline (location None) or as external data at `location`."""
    tensor = onnx.numpy_helper.from_array(weight, "w")
    if location is not None:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(weight.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 32])],
        [tensor],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)


def put_graph(package_dir: Path, model: onnx.ModelProto, listed: dict[str, Path]) -> None:
    """Replace the full graph with `model`, listing (and hashing) `listed` {relative name: file} too."""
    onnx.save(model, str(package_dir / "full.onnx"))

    def edit(manifest):
        manifest["files"]["full.onnx"] = sha256_file(package_dir / "full.onnx")
        for name, path in listed.items():
            manifest["files"][name] = sha256_file(path)
        manifest["components"]["full"]["external_data"] = list(listed)

    edit_manifest(package_dir, edit)


# --------------------------------------------------------------------------------- manifest hash


def test_manifest_hash_is_written_and_checks_out(package):
    data = (package / MANIFEST_NAME).read_bytes()
    recorded = (package / MANIFEST_HASH_NAME).read_text()
    assert recorded == f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n"  # `sha256sum -c` format
    assert load_package(package).name == MODEL


@pytest.mark.parametrize("field,value", [("tile", 64), ("classes", ["a", "b", "c"]), ("batch_max", 4096),
                                         ("family", "vanilla-sam")])
def test_edited_manifest_is_refused(package, field, value):
    manifest = json.loads((package / MANIFEST_NAME).read_text())
    manifest[field] = value
    (package / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")  # hash file left as it was
    with pytest.raises(EmsegError, match="manifest.json does not match manifest.sha256"):
        load_package(package)


def test_edited_manifest_is_one_line_in_inspect(package, monkeypatch, capsys):
    text = (package / MANIFEST_NAME).read_text()
    (package / MANIFEST_NAME).write_text(text.replace('"tile": 128', '"tile": 96'))
    assert_one_line(run_cli(monkeypatch, capsys, "inspect", package), "does not match manifest.sha256")


def test_package_without_manifest_hash_is_refused_with_re_export(package, monkeypatch, capsys):
    (package / MANIFEST_HASH_NAME).unlink()
    with pytest.raises(EmsegError, match="no manifest.sha256.*re-export"):
        load_package(package)
    assert_one_line(run_cli(monkeypatch, capsys, "inspect", package), "re-export")


# --------------------------------------------------------------------------- names become paths


@pytest.mark.parametrize("name", ["../x", "../../escaped", "/tmp/x", "Full", "a.b", ""])
def test_component_name_must_be_an_identifier(package, name):
    edit_manifest(package, lambda m: m["components"].__setitem__(name, m["components"]["full"]))
    with pytest.raises(EmsegError, match="not an identifier"):
        load_package(package)


@pytest.mark.parametrize("target", ["../../x", "sm86/../../y", "SM86", "sm"])
def test_engine_target_must_be_sm_digits(package, target):
    (package / "engines").mkdir()
    (package / "engines" / "full.sm86.engine").write_bytes(b"engine")
    record = {"file": "engines/full.sm86.engine", "target": target, "flavour": "tensorrt-rtx",
              "trt_version": "1", "batch_max": 1}

    def edit(manifest):
        manifest["engines"] = {"full": {target: record}}
        manifest["files"]["engines/full.sm86.engine"] = sha256_file(package / "engines" / "full.sm86.engine")

    edit_manifest(package, edit)
    with pytest.raises(EmsegError, match="sm<digits>"):
        load_package(package)


@pytest.mark.skipif(not HAVE_RTX, reason="tensorrt-rtx is not installed (pip install tensorrt-rtx): build needs it")
def test_build_never_writes_outside_the_package(package, tmp_path, monkeypatch, capsys):
    """A component named '../../escaped' used to become engines/../../escaped.sm86.engine, outside the package."""
    edit_manifest(package, lambda m: m["components"].__setitem__("../../escaped", m["components"]["full"]))
    before = sorted(p for p in tmp_path.rglob("*"))
    assert_one_line(run_cli(monkeypatch, capsys, "build", package, "--target", "sm86"), "not an identifier")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere, engines/ included
    assert_one_line(run_cli(monkeypatch, capsys, "build", package, "--target", "sm86/../.."), "--target")


# ------------------------------------------------------------------------------ external data


def test_external_data_symlinked_outside_is_refused(package, tmp_path, monkeypatch, capsys):
    """The graph's weights point at `full.onnx.data`, a symlink to a file outside the package (a stand-in
    for /etc/passwd), listed with its hash as a crafted manifest would: refused by load_package, inspect
    and build before ONNX Runtime or TensorRT reads a byte of it."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(64, 32)).astype(np.float32)
    secret = tmp_path / "passwd"
    secret.write_bytes(weight.tobytes())
    os.symlink(secret, package / "full.onnx.data")
    put_graph(package, matmul_graph("full.onnx.data", weight), {"full.onnx.data": package / "full.onnx.data"})
    with pytest.raises(EmsegError, match="outside the package"):
        load_package(package)
    with pytest.raises(EmsegError, match="outside the package"):
        load_package(package, verify=False)
    assert_one_line(run_cli(monkeypatch, capsys, "inspect", package, "--no-verify"), "outside the package")
    if HAVE_RTX:
        assert_one_line(run_cli(monkeypatch, capsys, "build", package, "--target", "sm86"), "outside the package")
        assert not (package / "engines").exists()


def test_unlisted_external_data_symlink_is_refused(package, tmp_path):
    """The same symlink, not listed in the manifest at all (the graph alone names it)."""
    weight = np.random.default_rng(4).normal(size=(64, 32)).astype(np.float32)
    secret = tmp_path / "passwd"
    secret.write_bytes(weight.tobytes())
    os.symlink(secret, package / "weights.bin")
    put_graph(package, matmul_graph("weights.bin", weight), {})
    with pytest.raises(EmsegError, match="outside the package"):
        load_package(package)


@pytest.mark.parametrize("location", ["weights.bin", "../outside.bin", "ABSOLUTE"])
def test_external_data_must_be_inside_and_listed(package, tmp_path, location):
    """A regular file inside the package that the manifest does not list, a location climbing out with
    '..', and an absolute location: all refused."""
    weight = np.random.default_rng(5).normal(size=(64, 32)).astype(np.float32)
    (package / "weights.bin").write_bytes(weight.tobytes())
    (tmp_path / "outside.bin").write_bytes(weight.tobytes())
    location = str(tmp_path / "outside.bin") if location == "ABSOLUTE" else location
    put_graph(package, matmul_graph(location, weight), {})
    with pytest.raises(EmsegError, match="does not list|outside the package"):
        load_package(package)


def test_listed_external_data_inside_the_package_is_accepted(package):
    """The control: the package's own graph with its weights moved to external data inside the package, listed
    and hashed, loads and runs as before (a graph that is not the one the manifest describes is refused: the
    manifest is checked against its graph, issue 26)."""
    from emseg_rt.onnx_session import OnnxGraph

    inline = package.parent / "inline.onnx"
    shutil.copyfile(package / "full.onnx", inline)
    onnx.save(onnx.load(str(inline)), str(package / "full.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="full.onnx.data", size_threshold=1024)
    put_graph(package, onnx.load(str(package / "full.onnx"), load_external_data=False),
              {"full.onnx.data": package / "full.onnx.data"})
    loaded = load_package(package)
    assert loaded.components["full"].external_data == ("full.onnx.data",)
    tiles = np.random.default_rng(7).integers(0, 256, (2, 1, 128, 128), dtype=np.uint8)
    got, want = OnnxGraph(loaded.full_onnx_path).run({"tiles": tiles}), OnnxGraph(inline).run({"tiles": tiles})
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-6, atol=1e-6)


def test_the_external_data_scan_finds_a_location_across_read_boundaries(tmp_path):
    """Graphs without the bytes "location" are not parsed (no external data is possible); the scan that
    decides this must find the word wherever it falls relative to its read chunks."""
    from emseg_rt.package import _mentions

    path = tmp_path / "graph.onnx"
    for offset in range(12):
        for chunk in (1, 3, 7, 8, 9, 64):
            path.write_bytes(b"x" * offset + b"location" + b"y" * 3)
            assert _mentions(path, b"location", chunk=chunk), (offset, chunk)
            path.write_bytes(b"x" * offset + b"locatio" + b"y" + b"ocation")
            assert not _mentions(path, b"location", chunk=chunk), (offset, chunk)


def test_any_symlink_leaving_the_package_is_refused(package, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", package / "engines")  # build would write its engines through it
    with pytest.raises(EmsegError, match="engines is a symlink to a place outside"):
        load_package(package)


def test_inspect_no_verify_with_a_missing_file_is_one_line(package, monkeypatch, capsys):
    (package / "full.onnx").unlink()
    assert_one_line(run_cli(monkeypatch, capsys, "inspect", package, "--no-verify"), "full.onnx is missing")


# ------------------------------------------------------------------------------ training state


class _RunsCode:
    """Unpickling this calls open(marker, 'w'): it creates `marker`, proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def small_volume():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (2, 128, 128), dtype=np.uint8), rng.integers(0, 4, (2, 128, 128), dtype=np.uint8)


def test_crafted_state_pickle_is_refused_and_does_not_run(tmp_path, small_volume):
    from emseg_rt.models import build
    from emseg_rt.training import train_head

    marker = tmp_path / "code-ran"
    out = tmp_path / "head.pt"
    torch.save({"model": MODEL, "step": 1, "payload": _RunsCode(marker)}, tmp_path / "head.pt.state")
    image, labels = small_volume
    with pytest.raises(EmsegError, match="not a training state written by `emseg-rt train`") as caught:
        train_head(build(MODEL), image, labels, out, steps=2, resume=True)
    assert not marker.exists()
    assert "weights_only" not in str(caught.value)  # no advice to load it unsafely
    assert not (tmp_path / "head.pt.cache.zarr").exists()  # refused before any work


@pytest.mark.parametrize("content", ["garbage", "foreign-dict", "tensor"])
def test_foreign_state_file_is_one_line(tmp_path, monkeypatch, capsys, small_volume, content):
    image, labels = small_volume
    data = tmp_path / "img.zarr"
    zarr.create_array(str(data), data=image)
    zarr.create_array(str(tmp_path / "truth.zarr"), data=labels)
    state = tmp_path / "head.pt.state"
    if content == "garbage":
        state.write_bytes(os.urandom(256))
    elif content == "foreign-dict":
        torch.save({"epoch": 3, "weights": torch.zeros(2)}, state)
    else:
        torch.save(torch.zeros(3), state)
    assert_one_line(run_cli(monkeypatch, capsys, "train", MODEL, "--data", data, "--labels", tmp_path / "truth.zarr",
                        "--out", tmp_path / "head.pt", "--resume", "--steps", "2", "--quiet"),
                    "--resume", "not a training state")


def test_every_torch_load_is_weights_only():
    """No torch.load in the package may unpickle arbitrary objects."""
    root = Path(__file__).resolve().parents[1] / "emseg_rt"
    calls = [(path, line) for path in root.rglob("*.py") for line in path.read_text().splitlines()
             if "torch.load(" in line and not line.lstrip().startswith(("#", '"', "`"))]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


# ------------------------------------------------------------------------- directories not ours


def test_export_overwrite_keeps_a_directory_that_is_not_a_package(tmp_path, monkeypatch, capsys):
    from emseg_rt.export import export_package

    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    (project / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EmsegError, match="not an emseg-rt model package"):
        export_package("sam-star-tiny", project, overwrite=True)
    assert_one_line(run_cli(monkeypatch, capsys, "export", "sam-star-tiny", "--out", project, "--overwrite"),
                    "not an emseg-rt model package")
    assert sorted(p.name for p in project.iterdir()) == ["manifest.json", "notes.txt"]
    assert (project / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no staging left behind


def test_export_install_rechecks_the_destination(tmp_path, package):
    """The destination is checked again when the finished package is renamed into place: a directory that
    became someone else's during the export is kept; a package is replaced; an empty directory too."""
    from emseg_rt.export.writer import _install

    def staging(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(package, path)
        return path

    user = tmp_path / "user"
    user.mkdir()
    (user / "data.bin").write_bytes(b"precious")
    with pytest.raises(EmsegError, match="not an emseg-rt model package"):
        _install(staging("s1"), user, overwrite=True)
    assert (user / "data.bin").read_bytes() == b"precious"
    old = tmp_path / "old-package"
    shutil.copytree(package, old)
    (old / "stale.txt").write_text("from the old package")
    _install(staging("s2"), old, overwrite=True)
    assert not (old / "stale.txt").exists() and load_package(old).name == MODEL
    empty = tmp_path / "empty"
    empty.mkdir()
    _install(staging("s3"), empty, overwrite=False)
    assert load_package(empty).name == MODEL
    with pytest.raises(EmsegError, match="not empty"):
        _install(staging("s4"), old, overwrite=False)
    link = tmp_path / "link"
    os.symlink(user, link)
    with pytest.raises(EmsegError, match="symlink"):
        _install(staging("s5"), link, overwrite=True)
    assert (user / "data.bin").read_bytes() == b"precious"


def test_train_cache_keeps_a_directory_that_is_not_a_cache(tmp_path, monkeypatch, capsys, small_volume):
    from emseg_rt.models import build
    from emseg_rt.training import build_cache, train_head

    image, labels = small_volume
    for name, payload in (("plain", None), ("other.zarr", "zarr")):
        user = tmp_path / name
        user.mkdir()
        (user / "keep.txt").write_text("mine")
        if payload == "zarr":  # someone else's zarr group, attributes and all
            zarr.open_group(str(user), mode="a").attrs.update({"key": "x", "project": "mine"})
        before = sorted(p.relative_to(user) for p in user.rglob("*"))
        with pytest.raises(EmsegError, match="not an emseg-rt embedding cache"):
            train_head(build(MODEL), image, labels, tmp_path / f"{name}.pt", steps=1, cache_path=user)
        with pytest.raises(EmsegError, match="not an emseg-rt embedding cache"):
            build_cache(user, build(MODEL), image, labels, ["v"])
        assert sorted(p.relative_to(user) for p in user.rglob("*")) == before
        assert (user / "keep.txt").read_text() == "mine"
    # the `.partial` sibling a cache is written into is checked the same way
    (tmp_path / "c.zarr.partial").mkdir()
    (tmp_path / "c.zarr.partial" / "keep.txt").write_text("mine")
    data = tmp_path / "img.zarr"
    zarr.create_array(str(data), data=image)
    zarr.create_array(str(tmp_path / "truth.zarr"), data=labels)
    assert_one_line(run_cli(monkeypatch, capsys, "train", MODEL, "--data", data, "--labels", tmp_path / "truth.zarr",
                        "--out", tmp_path / "h.pt", "--cache", tmp_path / "c.zarr", "--steps", "1", "--quiet"),
                    "c.zarr.partial", "not an emseg-rt embedding cache")
    assert (tmp_path / "c.zarr.partial" / "keep.txt").read_text() == "mine"


def test_a_stale_cache_of_ours_is_rebuilt_in_place(tmp_path):
    """The counterpart: our own cache with another key is replaced (built beside it, then swapped)."""
    from emseg_rt.models import build
    from emseg_rt.training import build_cache
    from emseg_rt.training.cache import is_embedding_cache

    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, (1, 128, 128), dtype=np.uint8)
    labels = rng.integers(0, 4, (1, 128, 128), dtype=np.uint8)
    model = build(MODEL)
    first = build_cache(tmp_path / "c.zarr", model, image, labels, ["a"])
    second = build_cache(tmp_path / "c.zarr", model, image, labels, ["b"])
    assert first.key != second.key and is_embedding_cache(tmp_path / "c.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


# ------------------------------------------------------------------------- CLI: refuse, one line


def test_bench_refuses_an_unknown_device(monkeypatch, capsys):
    assert_one_line(run_cli(monkeypatch, capsys, "bench", "--device", "tpu", "--size", "tiny", "--models", "scsam",
                        "--quiet"), "--device 'tpu'", "auto, cpu, cuda")
    from emseg_rt.bench.table5 import BenchConfig

    with pytest.raises(EmsegError, match="--device 'tpu'"):
        BenchConfig(models=("scsam",), size="tiny", device="tpu").validate()


@pytest.fixture
def train_inputs(tmp_path, small_volume):
    """(write(name, array) → path of a plain zarr array, path of the uint8 image)."""
    image, _ = small_volume

    def write(name: str, array: np.ndarray) -> Path:
        path = tmp_path / name
        zarr.create_array(str(path), data=array)
        return path

    return write, write("img.zarr", image)


@pytest.mark.parametrize("case", ["float labels", "negative labels", "NaN data", "float data"])
def test_train_refuses_wrong_data(tmp_path, monkeypatch, capsys, small_volume, train_inputs, case):
    image, labels = small_volume
    write, data = train_inputs
    label_array = {"float labels": labels.astype(np.float32),
                   "negative labels": labels.astype(np.int16) - 1}.get(case, labels)
    if case == "NaN data":
        floats = image.astype(np.float32)
        floats[0, 5, 5] = np.nan
        data = write("nan.zarr", floats)
    elif case == "float data":
        data = write("float.zarr", image.astype(np.float32))
    truth = write("truth.zarr", label_array)
    expected = {"float labels": "integer class ids", "negative labels": "negative",
                "NaN data": "NaN", "float data": "uint8"}[case]
    assert_one_line(run_cli(monkeypatch, capsys, "train", MODEL, "--data", data, "--labels", truth,
                        "--out", tmp_path / "head.pt", "--steps", "1", "--quiet"), expected)
    assert not (tmp_path / "head.pt").exists() and not (tmp_path / "head.pt.cache.zarr").exists()


@pytest.mark.parametrize("case", ["negative prediction", "out-of-range truth", "corrupt chunk"])
def test_eval_refuses_wrong_or_corrupt_labels(tmp_path, monkeypatch, capsys, case):
    rng = np.random.default_rng(13)
    truth = rng.integers(0, 4, (2, 32, 32), dtype=np.uint8)
    pred = truth.astype(np.int16)
    if case == "negative prediction":
        pred[0, 0, 0] = -1
    elif case == "out-of-range truth":
        truth[1, 2, 3] = 7
    zarr.create_array(str(tmp_path / "pred.zarr"), data=pred, chunks=(1, 32, 32))
    zarr.create_array(str(tmp_path / "truth.zarr"), data=truth, chunks=(1, 32, 32))
    if case == "corrupt chunk":
        chunk = tmp_path / "pred.zarr" / "c" / "1" / "0" / "0"
        assert chunk.is_file()
        chunk.write_bytes(b"not a compressed chunk" * 4)
    expected = {"negative prediction": "prediction holds label -1", "out-of-range truth": "ground truth holds label 7",
                "corrupt chunk": "corrupt"}[case]
    assert_one_line(run_cli(monkeypatch, capsys, "eval", tmp_path / "pred.zarr", tmp_path / "truth.zarr", "--json"),
                    expected)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only filesystem (a small tmpfs mounted read-only); skipped, saying so, where
    this process may not mount one."""
    target = tmp_path / "read-only"
    target.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a read-only filesystem for the EROFS cases")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "the EROFS cases need one (root or CAP_SYS_ADMIN)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def test_phantom_and_train_on_a_read_only_filesystem(read_only_dir, tmp_path, monkeypatch, capsys,
                                                     small_volume):
    assert_one_line(run_cli(monkeypatch, capsys, "phantom", read_only_dir / "cell.zarr", "--shape", "2,32,32"),
                    "Read-only file system")
    image, labels = small_volume
    zarr.create_array(str(tmp_path / "img.zarr"), data=image)
    zarr.create_array(str(tmp_path / "truth.zarr"), data=labels)
    assert_one_line(run_cli(monkeypatch, capsys, "train", MODEL, "--data", tmp_path / "img.zarr",
                        "--labels", tmp_path / "truth.zarr", "--out", read_only_dir / "head.pt",
                        "--steps", "1", "--quiet"), "Read-only file system")
    assert_one_line(run_cli(monkeypatch, capsys, "train", MODEL, "--data", tmp_path / "img.zarr",
                        "--labels", tmp_path / "truth.zarr", "--out", tmp_path / "head.pt",
                        "--cache", read_only_dir / "c.zarr", "--steps", "1", "--quiet"), "Read-only file system")
