"""TensorRT-for-RTX engines: ahead-of-time builds without a GPU, manifest records, clear errors; engine
selection (which engine, flavour and version may run on this GPU); the engine runner (running an engine
needs a GPU that an installed TensorRT can target, and is skipped with that reason without one)."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import onnx
import pytest
import torch
from test_export_support import copy_package, tiny_package

from emseg_rt.engines import (
    EngineRunner,
    build_engines,
    check_engine_compatible,
    current_target,
    engine_flavour_for,
    gpu_target,
    parse_targets,
    select,
    select_engine,
)
from emseg_rt.errors import EmsegError
from emseg_rt.package import MANIFEST_NAME, EngineRecord, load_package, sha256_file, write_manifest

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
    manifest["components"]["head"]["outputs"] = [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]
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
    with pytest.raises(EmsegError, match="needs a CUDA GPU, and none is visible"):
        EngineRunner(package)


# ------------------------------------------------------------------------------- engine selection


def _record(root, target="sm86", flavour="tensorrt-rtx", version="1.7.1.116", component="full"):
    return EngineRecord(component=component, target=target, file=f"engines/{component}.{target}.engine",
                        path=root / "engines" / f"{component}.{target}.engine", flavour=flavour,
                        trt_version=version, batch_max=4, build_seconds=1.0, bytes=10)


def _package_with(root, *records):
    """A package stand-in with only what selection reads: its root and engine records."""
    engines = {}
    for record in records:
        engines.setdefault(record.component, {})[record.target] = record
    return SimpleNamespace(root=root, engines=engines)


@pytest.fixture
def installed(monkeypatch):
    """Which TensorRT flavours select_engine / engine_flavour_for see as installed, and their versions."""
    versions: dict[str, str] = {}
    monkeypatch.setattr(select, "installed_version", versions.get)
    return versions


def test_select_engine_picks_the_engine_for_this_gpu_and_version(tmp_path, installed):
    installed["tensorrt-rtx"] = "1.7.1.116"
    sm86, sm120 = _record(tmp_path), _record(tmp_path, target="sm120")
    package = _package_with(tmp_path, sm86, sm120, _record(tmp_path, component="head"))
    assert select_engine(package, "sm86") is sm86
    assert select_engine(package, "sm120", "full") is sm120


def test_select_engine_refusals_say_what_exists_and_what_to_run(tmp_path, installed):
    installed["tensorrt-rtx"] = "1.7.1.116"
    package = _package_with(tmp_path, _record(tmp_path, target="sm86"), _record(tmp_path, target="sm120"))
    with pytest.raises(EmsegError, match=r"needs a CUDA GPU.*engines for: sm120, sm86") as no_gpu:
        select_engine(package, None)
    with pytest.raises(EmsegError, match=r"has no full engine for this GPU \(sm89; engines for: sm120, sm86\); "
                                         rf"run `emseg-rt build {tmp_path} --target sm89 --engine-backend tensorrt-rtx`"):
        select_engine(package, "sm89")
    with pytest.raises(EmsegError, match=r"has no head engine for this GPU \(sm86; engines for: none\)"):
        select_engine(package, "sm86", "head")
    # Exact versions: a patch release is already a different TensorRT (engines do not deserialise across it).
    installed["tensorrt-rtx"] = "1.7.1.117"
    with pytest.raises(EmsegError, match=r"built with tensorrt-rtx 1.7.1.116, installed is 1.7.1.117.*emseg-rt build"):
        select_engine(package, "sm86")
    del installed["tensorrt-rtx"]
    with pytest.raises(EmsegError, match=r"needs tensorrt-rtx 1.7.1.116, which is not installed here \(pip install "
                                         r"tensorrt-rtx\)"):
        select_engine(package, "sm86")
    assert "\n" not in str(no_gpu.value)


def test_engine_flavour_for_each_gpu(installed):
    assert engine_flavour_for(None) == (None, "no CUDA GPU is visible: TensorRT engines run only on a GPU")
    flavour, reason = engine_flavour_for("sm86")
    assert flavour is None and "no TensorRT is installed for sm86" in reason
    installed["tensorrt-rtx"] = "1.7.1.116"
    assert engine_flavour_for("sm86")[0] == "tensorrt-rtx"
    flavour, reason = engine_flavour_for("sm90")  # TensorRT for RTX has no Hopper target
    assert flavour is None and "no sm90 (Hopper) target" in reason and "pip install tensorrt" in reason
    installed["tensorrt"] = "10.13.0"
    assert engine_flavour_for("sm90") == ("tensorrt", "tensorrt 10.13.0 for sm90")


def test_gpu_target_is_torchs_compute_capability():
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert gpu_target() == current_target() == f"sm{major}{minor}"
    else:
        assert gpu_target() is None
        with pytest.raises(EmsegError, match="no CUDA GPU is visible"):
            current_target()


def _runnable_flavour() -> tuple[str | None, str]:
    return engine_flavour_for(gpu_target())


@pytest.mark.rtx
@pytest.mark.skipif(_runnable_flavour()[0] is None, reason=f"needs a GPU TensorRT can target: {_runnable_flavour()[1]}")
def test_runner_matches_onnxruntime_on_gpu(tmp_path):
    import numpy as np

    from emseg_rt.models import build
    from emseg_rt.onnx_session import OnnxGraph

    flavour, _ = _runnable_flavour()
    package_dir = copy_package(tiny_package("scsam-tiny", "fp16"), tmp_path / "pkg")
    build_engines(package_dir, targets="current", flavour=flavour, components=["full"])
    package = load_package(package_dir)
    runner = EngineRunner(package, "full", target=current_target())
    assert runner.record.flavour == flavour
    tiles = build(package.name).example_inputs(batch=3, seed=4)["tiles"]
    out = runner.run({"tiles": tiles.cuda()})
    torch.cuda.synchronize()
    reference = OnnxGraph(package.full_onnx_path).run({"tiles": tiles.numpy()})
    logits_ort, labels_ort = reference["logits"], reference["labels"]
    rel = np.linalg.norm(out["logits"].cpu().numpy() - logits_ort) / np.linalg.norm(logits_ort)
    assert rel < 2e-2 and (out["labels"].cpu().numpy() == labels_ort).mean() >= 0.995
