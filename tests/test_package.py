"""The model package: manifest contents, hash verification, and refusal of paths outside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_export_support import copy_package, tiny_package

from emseg_rt.errors import EmsegError
from emseg_rt.package import MANIFEST_NAME, load_package, sha256_file, write_manifest


@pytest.fixture(scope="module")
def scsam_package():
    return tiny_package("scsam-tiny", "fp32")


def test_manifest_describes_components_with_symbolic_batch(scsam_package):
    package = load_package(scsam_package)
    assert package.name == "scsam-tiny" and package.family == "scsam" and package.tile == 128
    assert package.classes == ("nucleus", "mitochondria", "granules")
    assert package.input.dtype == "uint8" and package.input.shape == ("batch", 1, 128, 128)
    assert set(package.components) == {"sam_encoder", "mae_encoder", "head", "full"}
    full = package.component("full")
    assert [s.name for s in full.inputs] == ["tiles"]
    assert {s.name: s.dtype for s in full.outputs} == {"logits": "float32", "labels": "uint8"}
    assert full.output("logits").shape == ("batch", 3, 128, 128)
    head = package.component("head")
    assert [s.name for s in head.inputs] == ["sam_embedding", "mae_embedding"]
    assert all(spec.shape[0] == "batch" for spec in head.inputs + head.outputs)
    assert package.full_onnx_path == scsam_package / "full.onnx"
    assert package.normalisation["inside_graph"] is True
    manifest = package.manifest
    for name in ("full.onnx", "head.onnx", "sam_encoder.onnx", "mae_encoder.onnx"):
        assert manifest["files"][name] == sha256_file(scsam_package / name)
    assert manifest["toolchain"]["torch"] and manifest["toolchain"]["onnxruntime"]


def test_tampered_file_is_refused(scsam_package, tmp_path):
    package_dir = copy_package(scsam_package, tmp_path / "pkg")
    with open(package_dir / "head.onnx", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(EmsegError, match=r"head\.onnx does not match its sha256"):
        load_package(package_dir)


def test_missing_file_is_refused(scsam_package, tmp_path):
    package_dir = copy_package(scsam_package, tmp_path / "pkg")
    (package_dir / "mae_encoder.onnx").unlink()
    with pytest.raises(EmsegError, match="mae_encoder.onnx is missing"):
        load_package(package_dir)


@pytest.mark.parametrize("bad_path", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx"])
def test_path_outside_package_is_refused(scsam_package, tmp_path, bad_path):
    package_dir = copy_package(scsam_package, tmp_path / "pkg")
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    manifest["components"]["head"]["file"] = bad_path
    manifest["files"][bad_path] = "0" * 64
    write_manifest(package_dir, manifest)  # with a matching manifest.sha256: the path check must hold alone
    with pytest.raises(EmsegError, match="outside the package"):
        load_package(package_dir)


def test_symlink_leaving_package_is_refused(scsam_package, tmp_path):
    package_dir = copy_package(scsam_package, tmp_path / "pkg")
    outside = tmp_path / "elsewhere.onnx"
    os.replace(package_dir / "head.onnx", outside)
    os.symlink(outside, package_dir / "head.onnx")
    with pytest.raises(EmsegError, match="resolves outside the package"):
        load_package(package_dir)


def test_not_a_package(tmp_path):
    with pytest.raises(EmsegError, match="no manifest.json"):
        load_package(tmp_path)
    with pytest.raises(EmsegError, match="no such directory"):
        load_package(tmp_path / "absent")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(EmsegError, match="not valid JSON"):
        load_package(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "emseg-rt-package", "format_version": 1}))
    with pytest.raises(EmsegError, match="no manifest.sha256.*re-export"):
        load_package(tmp_path)


def test_package_readers_do_not_need_the_exporter():
    """Reading a package and choosing its engine import neither the exporter nor torch (a C++ host's
    tooling, `inspect` and `build` stay light); the export layer re-exports the package types unchanged."""
    code = ("import sys, emseg_rt.package, emseg_rt.engines; "
            "print(sorted(m for m in sys.modules if m.startswith(('emseg_rt.export', 'torch'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    from emseg_rt import export, package

    for name in ("load_package", "ModelPackage", "ComponentSpec", "EngineRecord", "TensorSpec"):
        assert getattr(export, name) is getattr(package, name)
    from emseg_rt.export import TracedGraphs, cached_package, export_package, trace_graphs, write_package

    assert all(callable(f) for f in (TracedGraphs, cached_package, export_package, trace_graphs, write_package))
