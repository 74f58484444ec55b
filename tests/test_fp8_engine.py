"""FP8 (E4M3) Q/DQ packages and their TensorRT for RTX engines (issue 30.4).

The package's parity is measured in ONNX Runtime on the Q/DQ graph (the engines cannot run here). One trace of
the trained default model (scsam-phantom: its class logits are decisive, so label agreement measures the
quantisation; scsam-tiny's random weights leave every pixel a numerical tie, decided fraction 0) serves every
test; the sm89 engine is built once, without a GPU, by TensorRT for RTX.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from emseg_rt.engines import build_engines
from emseg_rt.errors import EmsegError
from emseg_rt.export import load_package, write_package
from emseg_rt.export.fp16 import nodes_in_scope
from emseg_rt.export.fp8 import E4M3_MAX, FP8_OPS

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
NEEDS_RTX = pytest.mark.skipif(not HAVE_RTX, reason="tensorrt_rtx (TensorRT for RTX) is not installed")


@pytest.fixture(scope="module")
def fp8_package(tmp_path_factory, phantom_full_trace):
    """(FP32 trace, fp8 package dir with its sm89 engine when TensorRT for RTX is installed), built once."""
    root = tmp_path_factory.mktemp("fp8")
    traced = phantom_full_trace
    package = write_package(traced, root / "fp8", "fp8", parity_seed=3, calibration_tiles=4)
    if HAVE_RTX:
        build_engines(package, targets="sm89", components=["full"])
    return traced, package


def test_fp8_package_meets_its_parity_bar_in_onnxruntime(fp8_package):
    _, package_dir = fp8_package
    package = load_package(package_dir)
    parity = package.parity
    assert package.precision == "fp8" and parity["passed"] and not parity["allowed_failure"]
    assert parity["runtime"] == "ONNX Runtime CPUExecutionProvider"
    assert parity["targets"] == {"rel_error": 5e-2, "label_agreement": 0.995, "label_metric": "agreement_decided"}
    assert "held-out tiles" in parity["inputs"] and "phantom" in parity["inputs"]
    full = parity["components"]["full"]["outputs"]
    assert 0 < full["logits"]["rel_error"] <= 5e-2  # FP8 rounding is there, and within the bar
    assert full["labels"]["agreement"] >= 0.995 and full["labels"]["agreement_decided"] >= 0.995
    assert package.manifest["fp32_modules"] == ["head", "pixel_encoder"] and package.manifest["opset"] >= 19


def test_fp8_graph_has_e4m3_qdq_on_matmul_operands_only(fp8_package):
    traced, package_dir = fp8_package
    path = load_package(package_dir).full_onnx_path
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    graph = model.graph
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    initializers = {init.name: init for init in graph.initializer}
    dequantizers = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    head = set(nodes_in_scope(model, "head")) | set(nodes_in_scope(model, "pixel_encoder"))  # both stay float
    assert any(n.op_type == "Conv" for n in graph.node if n.name in nodes_in_scope(model, "pixel_encoder"))
    encoder_matmuls = [n for n in graph.node if n.op_type in FP8_OPS and n.name not in head]
    assert any(n.op_type == "MatMul" for n in encoder_matmuls)
    for node in encoder_matmuls:  # both operands (never the bias) come through an E4M3 DequantizeLinear
        for name in node.input[:2]:
            zero_point = initializers[dequantizers[name].input[2]]
            assert zero_point.data_type == TensorProto.FLOAT8E4M3FN, node.name
    readers = {name: [n for n in graph.node if name in n.input] for name in dequantizers}
    assert all(r.op_type in FP8_OPS and r.name not in head for rs in readers.values() for r in rs)
    for node in graph.node:  # LayerNorm, softmax, the class merge, the head and the pixel encoder read floats
        if node.op_type in ("LayerNormalization", "Softmax", "ArgMax", "Resize") or node.name in head:
            assert not any(name in dequantizers for name in node.input), node.name
    # Weights: FP8 initializers, one scale per tensor = amax / 448 of the FP32 weight the trace holds.
    original = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(traced.path("full"))).graph.initializer}
    checked = 0
    for dq in dequantizers.values():
        if dq.input[0] in initializers and initializers[dq.input[0]].data_type == TensorProto.FLOAT8E4M3FN:
            weight = original[dq.input[0].removesuffix("_fp8")]
            scale = float(numpy_helper.to_array(initializers[dq.input[1]]))
            assert scale == pytest.approx(float(np.abs(weight).max()) / E4M3_MAX, rel=1e-6)
            checked += 1
    assert checked > 0


@NEEDS_RTX
def test_fp8_engine_for_sm89_builds_and_is_recorded_with_its_precision(fp8_package):
    _, package_dir = fp8_package
    package = load_package(package_dir)  # verifies every sha256, the engine's included
    record = package.engines["full"]["sm89"]
    assert record.precision == "fp8" and record.flavour == "tensorrt-rtx"
    assert record.path.is_file() and record.bytes == record.path.stat().st_size > 0
    assert package.manifest["engines"]["full"]["sm89"]["precision"] == "fp8"


@NEEDS_RTX
def test_fp8_engine_for_a_gpu_without_fp8_is_refused_in_one_line(fp8_package):
    _, package_dir = fp8_package
    with pytest.raises(EmsegError) as refused:
        build_engines(package_dir, targets="sm86", components=["full"])
    message = str(refused.value)
    assert "\n" not in message and "sm86" in message and "sm89" in message
    assert "sm86" not in load_package(package_dir).engines["full"]
