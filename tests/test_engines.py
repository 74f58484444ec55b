"""TensorRT-for-RTX engines: ahead-of-time builds without a GPU, manifest records, clear errors; the
engine runner's checks (running an engine needs an RTX GPU and is skipped without one)."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
import torch

from emseg_rt.engines.build import build_engines, parse_targets
from emseg_rt.engines.runner import EngineRunner, check_engine_compatible
from emseg_rt.errors import EmsegError
from emseg_rt.export import load_package
from emseg_rt.export.package import MANIFEST_NAME, sha256_file, write_manifest
from test_export_support import copy_package, tiny_package

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx_builder = pytest.mark.skipif(not HAVE_RTX, reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")
FAMILIES = ["vanilla-sam", "sam-star", "mae-star", "surgicalsam", "scsam"]


@needs_rtx_builder
@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_full_graph_builds_sm86_engine(family, tmp_path):
    package_dir = copy_package(tiny_package(f"{family}-tiny", "fp16"), tmp_path / "pkg")
    (record,) = build_engines(package_dir, targets="sm86", components=["full"])
    assert record.target == "sm86" and record.flavour == "tensorrt-rtx" and record.bytes > 0
    package = load_package(package_dir)  # verifies the engine's sha256 too
    assert package.engine("full", "sm86").path.is_file()
    assert package.manifest["files"]["engines/full.sm86.engine"] == sha256_file(record.path)
    assert package.manifest["toolchain"]["tensorrt_rtx"] == record.trt_version


@needs_rtx_builder
def test_every_component_builds_for_two_targets(tmp_path):
    package_dir = copy_package(tiny_package("scsam-tiny", "fp32"), tmp_path / "pkg")
    records = build_engines(package_dir, targets="sm86,sm120")
    assert {(r.component, r.target) for r in records} == {
        (c, t) for c in ("sam_encoder", "mae_encoder", "head", "full") for t in ("sm86", "sm120")
    }
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    engine = manifest["engines"]["head"]["sm120"]
    assert engine["profile"] == {"batch": [1, 4, 4]} and engine["batch_max"] == 4
    assert not [p for p in (package_dir / "engines").iterdir() if p.name.startswith(".")]  # no temp files left


def test_target_and_flavour_errors():
    with pytest.raises(EmsegError, match="no Hopper target"):
        parse_targets("sm90")
    with pytest.raises(EmsegError, match="TensorRT for RTX builds for"):
        parse_targets("sm86,banana")
    with pytest.raises(EmsegError, match="--engine-backend 'cuDNN'"):
        build_engines("unused", targets="sm86", flavour="cuDNN")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(EmsegError, match="tensorrt: not installed"):
            build_engines("unused", targets="current", flavour="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(EmsegError, match="no CUDA GPU is visible"):
            parse_targets("current")


@needs_rtx_builder
def test_parser_rejection_is_a_clear_error(tmp_path):
    package_dir = copy_package(tiny_package("sam-star-tiny", "fp32"), tmp_path / "pkg")
    node = onnx.helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    graph = onnx.helper.make_graph(
        [node], "bad",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(package_dir / "head.onnx"))
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    manifest["files"]["head.onnx"] = sha256_file(package_dir / "head.onnx")
    manifest["components"]["head"]["inputs"] = [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    write_manifest(package_dir, manifest)
    with pytest.raises(EmsegError, match="head.onnx: the tensorrt-rtx ONNX parser rejected the graph"):
        build_engines(package_dir, targets="sm86", components=["head"])


@needs_rtx_builder
def test_build_refuses_tampered_package(tmp_path):
    package_dir = copy_package(tiny_package("sam-star-tiny", "fp32"), tmp_path / "pkg")
    with open(package_dir / "full.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(EmsegError, match="full.onnx does not match its sha256"):
        build_engines(package_dir, targets="sm86")


def test_engine_compatibility_checks(tmp_path):
    from emseg_rt.export.package import EngineRecord

    record = EngineRecord(component="full", target="sm86", file="engines/full.sm86.engine",
                          path=tmp_path / "pkg" / "engines" / "full.sm86.engine", flavour="tensorrt-rtx",
                          trt_version="1.7.1.116", batch_max=4, build_seconds=1.0, bytes=10)
    check_engine_compatible(record, "sm86", "1.7.1.116")
    with pytest.raises(EmsegError, match="built for sm86, this GPU is sm89.*emseg-rt build"):
        check_engine_compatible(record, "sm89", "1.7.1.116")
    with pytest.raises(EmsegError, match="built with tensorrt-rtx 1.7.1.116, installed is 1.8.0"):
        check_engine_compatible(record, "sm86", "1.8.0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_runner_without_gpu_says_so():
    package = load_package(tiny_package("sam-star-tiny", "fp32"))
    with pytest.raises(EmsegError, match="needs an NVIDIA GPU"):
        EngineRunner(package)


@pytest.mark.rtx
@pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_RTX),
                    reason="needs an RTX GPU with TensorRT for RTX to run an engine; none on this machine")
def test_runner_matches_onnxruntime_on_rtx_gpu(tmp_path):
    import numpy as np

    from emseg_rt.engines.build import current_target
    from emseg_rt.export.parity import onnx_session
    from emseg_rt.models import build

    package_dir = copy_package(tiny_package("scsam-tiny", "fp16"), tmp_path / "pkg")
    build_engines(package_dir, targets="current", components=["full"])
    package = load_package(package_dir)
    runner = EngineRunner(package, "full", target=current_target())
    tiles = build(package.name).example_inputs(batch=3, seed=4)["tiles"]
    out = runner.run({"tiles": tiles.cuda()})
    torch.cuda.synchronize()
    logits_ort, labels_ort = onnx_session(package.full_onnx_path).run(None, {"tiles": tiles.numpy()})
    rel = np.linalg.norm(out["logits"].cpu().numpy() - logits_ort) / np.linalg.norm(logits_ort)
    assert rel < 2e-2 and (out["labels"].cpu().numpy() == labels_ort).mean() >= 0.995
