"""The model package: manifest contents, hash verification, and refusal of paths outside the package."""

from __future__ import annotations

import json
import os

import pytest

from emseg_rt.errors import EmsegError
from emseg_rt.export import load_package
from emseg_rt.export.package import MANIFEST_NAME, sha256_file
from test_export_support import copy_package, tiny_package


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
    (package_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
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
