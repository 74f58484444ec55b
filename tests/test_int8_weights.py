"""INT8 weight-only packages and their TensorRT for RTX engines (issue 30.4).

One trace of the trained default model (scsam-phantom: its class logits are decisive, so label agreement
measures the quantisation) serves every test. The package's parity is measured in ONNX Runtime on the Q/DQ
graph (engines cannot run here); its sm86 engine is built once, without a GPU, by TensorRT for RTX.
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
from emseg_rt.runtime import load_backend

MODEL = "scsam-phantom"
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
NEEDS_RTX = pytest.mark.skipif(not HAVE_RTX, reason="tensorrt_rtx (TensorRT for RTX) is not installed")


@pytest.fixture(scope="module")
def woq_package(tmp_path_factory, phantom_full_trace):
    """(FP32 trace, int8-wo package dir with its sm86 engine when TensorRT for RTX is installed), built once."""
    root = tmp_path_factory.mktemp("woq")
    traced = phantom_full_trace
    package = write_package(traced, root / "int8-wo", "int8-wo", parity_seed=3)
    if HAVE_RTX:
        build_engines(package, targets="sm86", components=["full"])
    return traced, package


def test_woq_package_meets_its_parity_bar_in_onnxruntime(woq_package):
    _, package_dir = woq_package
    package = load_package(package_dir)
    parity = package.parity
    assert package.precision == "int8-wo" and parity["passed"] and not parity["allowed_failure"]
    assert parity["targets"] == {"rel_error": 2e-2, "label_agreement": 0.995, "label_metric": "agreement_decided"}
    full = parity["components"]["full"]["outputs"]
    assert 0 < full["logits"]["rel_error"] <= 2e-2  # the int8 rounding of the weights is there, within the bar
    assert full["labels"]["agreement"] >= 0.995 and full["labels"]["agreement_decided"] >= 0.995
    assert package.manifest["fp32_modules"] == ["head", "pixel_encoder"]
    backend = load_backend(str(package_dir), "onnxruntime", "cpu")  # `segment --model PKG` runs it on a CPU
    try:
        assert backend.spec.precision == "int8-wo"
    finally:
        backend.close()


def test_woq_graph_stores_matmul_weights_as_int8_per_output_channel(woq_package):
    traced, package_dir = woq_package
    path = load_package(package_dir).full_onnx_path
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    graph = model.graph
    assert not any(node.op_type == "QuantizeLinear" for node in graph.node)  # activations stay float
    initializers = {init.name: init for init in graph.initializer}
    dequantizers = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    float_scopes = set(nodes_in_scope(model, "head")) | set(nodes_in_scope(model, "pixel_encoder"))
    readers = [n for n in graph.node if any(name in dequantizers for name in n.input)]
    assert readers and all(n.op_type in ("MatMul", "Gemm") and n.name not in float_scopes for n in readers)
    assert all(node.input[0] not in dequantizers for node in readers)  # only the weight operand
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(traced.path("full"))).graph.initializer}
    for dq in dequantizers.values():  # brute force: per output column of the (K, N) weight, max |w| / 127
        values, scale = initializers[dq.input[0]], numpy_helper.to_array(initializers[dq.input[1]])
        assert values.data_type == TensorProto.INT8 and not numpy_helper.to_array(initializers[dq.input[2]]).any()
        weight = original[dq.input[0].removesuffix("_int8")]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        columns = weight if axis == 1 else weight.T
        expected_scale = np.abs(columns).max(axis=0) / 127
        np.testing.assert_allclose(scale, expected_scale, rtol=1e-6)
        expected = np.clip(np.rint(columns / expected_scale), -127, 127)
        stored = numpy_helper.to_array(values) if axis == 1 else numpy_helper.to_array(values).T
        assert np.abs(stored.astype(np.int32) - expected).max() <= 1  # rounding at exact .5 may differ by one
    encoder_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.name not in float_scopes
                       and n.input[1] in dequantizers]
    assert len(encoder_matmuls) >= 8


def test_woq_precision_with_a_registry_name_says_how_to_get_a_package():
    with pytest.raises(EmsegError) as refused:
        load_backend(MODEL, "onnxruntime", "cpu", "int8-wo")
    message = str(refused.value)
    assert "\n" not in message and "--precision int8-wo --out PKG" in message and "sm86" in message


@NEEDS_RTX
def test_woq_engine_for_sm86_builds_and_is_recorded_with_its_precision(woq_package):
    _, package_dir = woq_package
    package = load_package(package_dir)  # verifies every sha256, the engine's included
    record = package.engines["full"]["sm86"]
    assert record.precision == "int8-wo" and record.flavour == "tensorrt-rtx"
    assert record.path.is_file() and record.bytes == record.path.stat().st_size > 0


@NEEDS_RTX
def test_woq_engine_for_a_gpu_older_than_rtx_30_is_refused_in_one_line(woq_package):
    _, package_dir = woq_package
    with pytest.raises(EmsegError) as refused:
        build_engines(package_dir, targets="sm75", components=["full"])
    message = str(refused.value)
    assert "\n" not in message and "sm75" in message and "sm86" in message
