"""int8 QDQ and fused-attention packages (issue 30.2, 30.3): parity gates, graph structure, segment runs them.

One trace of the trained default model (scsam-phantom: its class logits are decisive, so label agreement
measures the export; with random weights they are near ties, docs/export.md "Parity") serves every package.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.export import load_package, write_package
from emseg_rt.export.fp16 import nodes_in_scope
from emseg_rt.io import open_volume
from emseg_rt.runtime import load_backend, segment_labels
from tests.cli_helpers import assert_one_line, run_cli

MODEL = "scsam-phantom"


@pytest.fixture(scope="module")
def packages(tmp_path_factory, phantom_full_trace):
    """(traced graphs, int8 package dir, fp32-fused package dir, work dir), written once for the module."""
    root = tmp_path_factory.mktemp("int8")
    traced = phantom_full_trace
    int8 = write_package(traced, root / "int8", "int8", parity_seed=3, calibration_tiles=4)
    fused = write_package(traced, root / "fused", "fp32-fused", parity_seed=3)
    return traced, int8, fused, root


def test_int8_package_meets_its_parity_bar_on_held_out_phantom_tiles(packages):
    _, int8, _, _ = packages
    package = load_package(int8)
    parity = package.parity
    assert package.precision == "int8" and parity["passed"] and not parity["allowed_failure"]
    assert parity["targets"] == {"rel_error": 5e-2, "label_agreement": 0.995, "label_metric": "agreement_decided"}
    assert "held-out tiles" in parity["inputs"] and "phantom" in parity["inputs"]
    full = parity["components"]["full"]["outputs"]
    assert full["logits"]["rel_error"] <= 5e-2
    # The trained model's raw agreement (every pixel), not only the gate's decided pixels.
    assert full["labels"]["agreement"] >= 0.995 and full["labels"]["agreement_decided"] >= 0.995
    assert package.manifest["fp32_modules"] == ["head", "pixel_encoder"]


def test_int8_graph_quantises_matmuls_and_keeps_norms_softmax_and_merge_float(packages):
    _, int8, _, _ = packages
    path = load_package(int8).full_onnx_path
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    head = set(nodes_in_scope(model, "head")) | set(nodes_in_scope(model, "pixel_encoder"))  # both stay float
    matmuls = ("MatMul", "Gemm", "Conv")

    def reads_int8(node: onnx.NodeProto) -> bool:
        return any(name in dequantized for name in node.input)

    encoder_matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Conv") and n.name not in head]
    assert encoder_matmuls and all(reads_int8(n) for n in encoder_matmuls)
    # Q/DQ only on the edges of matmuls and convolutions: every activation QuantizeLinear quantises a matmul's
    # output or an input on its way into one (through its DequantizeLinear), nothing else.
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            source = producers.get(node.input[0])
            into = [op for dq in graph.node if dq.op_type == "DequantizeLinear" and dq.input[0] == node.output[0]
                    for op in users.get(dq.output[0], [])]
            assert (source is not None and source.op_type in matmuls) or (into and set(into) <= set(matmuls))
    ops = {node.op_type for node in graph.node}
    assert {"LayerNormalization", "Softmax", "ArgMax", "Resize"} <= ops  # float ops, none replaced by a QLinear one
    assert not any(op.startswith("QLinear") for op in ops)
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "ArgMax", "Resize") or node.name in head:
            assert not reads_int8(node), node.name
    merge = {out for n in graph.node if n.op_type in ("ArgMax", "Resize") for out in n.output}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in merge for n in graph.node)


def test_segment_precision_int8_runs_in_onnxruntime_and_agrees_with_fp32(packages, monkeypatch, capsys):
    _, int8, _, root = packages
    phantom = generate_phantom((2, 160, 160), seed=11)
    volume = write_phantom(root / "phantom.zarr", phantom)
    out = root / "labels-int8.zarr"
    code, stdout, err = run_cli(monkeypatch, capsys, "segment", volume, "--out", out, "--model", int8,
                                "--precision", "int8", "--device", "cpu")
    assert code == 0, err
    assert "backend onnxruntime" in stdout
    int8_labels = np.asarray(open_volume(out).array[:])  # level 0 of the label image segment wrote
    fp32_labels = segment_labels(phantom.image, model=MODEL, backend="torch", precision="fp32")
    assert int8_labels.shape == phantom.image.shape
    assert (int8_labels == fp32_labels).mean() >= 0.995


def test_int8_bar_that_cannot_be_met_is_refused_and_leaves_no_package(packages, monkeypatch, capsys):
    traced, _, _, root = packages
    out = root / "refused"
    with pytest.raises(EmsegError) as refused:
        write_package(traced, out, "int8", parity_seed=3, calibration_tiles=1, rel_error_target=1e-7)
    message = str(refused.value)
    assert "\n" not in message and "parity targets missed" in message and "nothing written" in message
    assert not out.exists() and not [p for p in root.iterdir() if p.name.startswith(".refused")]
    # Options checked before the slow trace: --calibration belongs to int8.
    assert_one_line(run_cli(monkeypatch, capsys, "export", MODEL, "--out", root / "x", "--precision", "fp32",
                            "--calibration", root / "phantom.zarr"), "--calibration applies to --precision int8")


def test_int8_package_is_refused_by_tensorrt_in_one_line(packages):
    _, int8, _, _ = packages
    with pytest.raises(EmsegError, match="runs in ONNX Runtime only"):
        load_backend(str(int8), backend="tensorrt", device="cpu", precision="int8")


@pytest.mark.parametrize("which", [1, 2])
def test_build_refuses_an_onnxruntime_only_package_in_one_line(packages, monkeypatch, capsys, which):
    package = packages[which]  # int8, fp32-fused: TensorRT parses neither (QDQ int8 activations, com.microsoft ops)
    result = run_cli(monkeypatch, capsys, "build", package, "--target", "sm86")
    assert_one_line(result, "runs in ONNX Runtime only", "fp32, fp16 or fp8")
    assert not (package / "engines").exists()


def test_fused_package_has_every_attention_fused_and_fp32_parity(packages):
    traced, _, fused, _ = packages
    original = onnx.load(str(traced.path("full")))
    softmaxes = sum(node.op_type == "Softmax" for node in original.graph.node)
    model = onnx.load(str(load_package(fused).full_onnx_path))
    ops = [node.op_type for node in model.graph.node]
    assert softmaxes > 0 and ops.count("MultiHeadAttention") == softmaxes and ops.count("Softmax") == 0
    parity = load_package(fused).parity
    assert parity["passed"] and parity["targets"]["rel_error"] == 1e-4
    assert parity["components"]["full"]["outputs"]["labels"]["agreement"] >= 0.995


def test_fused_backend_labels_equal_torch_fp32_on_phantom_tiles(packages):
    _, _, fused, _ = packages
    tiles = generate_phantom((2, 128, 128), seed=4).image[:, None]
    backend = load_backend(str(fused), backend="onnxruntime", device="cpu", precision="fp32-fused")
    reference = load_backend(MODEL, backend="torch", device="cpu", precision="fp32", fast=False)
    got = backend.run(tiles, want_logits=True)
    with torch.no_grad():
        want = reference.run(tiles, want_logits=True)
    assert np.linalg.norm(got["logits"] - want["logits"]) <= 1e-4 * np.linalg.norm(want["logits"])
    assert (got["labels"] == want["labels"]).mean() >= 0.999
