"""FP32 ONNX graph → FP8 (E4M3) Q/DQ graph, for TensorRT for RTX engines on RTX 40/50 GPUs (issue 30.4).

TensorRT builds explicitly quantised graphs: a QuantizeLinear/DequantizeLinear pair in FLOAT8E4M3FN on an
input of a matmul tells it to run that matmul in FP8. `quantize_to_fp8` puts such pairs on both inputs of every
MatMul, Gemm and Conv (`FP8_OPS`) outside the kept-float nodes (the head, as int8 keeps it), and nowhere else:
LayerNorm, softmax, GELU, the preprocessing and the class merge compute in float on the dequantised values.

- Weights (initializers): stored as FLOAT8E4M3FN and read through a DequantizeLinear (4× smaller than FP32).
- Activations: QuantizeLinear → DequantizeLinear on the float tensor, so the graph's inputs stay float.
- Scales: one per tensor, amax / 448 (448 = E4M3's largest finite value), zero point 0 of type float8e4m3fn.
  Activation amax is the largest |value| over the calibration tiles (int8.calibration_tiles: phantoms or the
  user's volume), weight amax over the tensor.
- The graph's opset becomes `FP8_OPSET` (19, where Q/DQ take float8), which changes nothing else we export.

The Q/DQ graph runs in ONNX Runtime's CPU provider (it dequantises and multiplies in float: numerically the
FP8 rounding TensorRT applies, so package parity is measured on it, not on an engine).

Why not onnxruntime.quantization with QuantType.QFLOAT8E4M3FN: its float8 path calibrates with
CalibrationMethod.Distribution (a scale from a fitted normal's spread, not amax / 448) and also quantises every
matmul's output, Q/DQ pairs TensorRT then has to fold; writing the pairs with `onnx` is short and exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emseg_rt.export.calibrate import tensor_ranges
from emseg_rt.export.onnx_io import save_onnx

FP8_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Conv")  # what gets Q/DQ; every other op computes in float
FP8_INPUTS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1)}  # the operands (never a bias)
E4M3_MAX = 448.0  # the largest finite FLOAT8E4M3FN value
FP8_OPSET = 19  # QuantizeLinear / DequantizeLinear with float8 zero points


def fp8_operands(model: onnx.ModelProto, keep_float_nodes: Iterable[str] = ()) -> dict[str, list[str]]:
    """{tensor name: [names of the FP8_OPS nodes that read it as an operand]} outside `keep_float_nodes`."""
    keep = set(keep_float_nodes)
    operands: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in FP8_OPS and node.name not in keep:
            for index in FP8_INPUTS[node.op_type]:
                if index < len(node.input) and node.input[index]:
                    operands.setdefault(node.input[index], []).append(node.name)
    return operands


def activation_amax(model: onnx.ModelProto, names: Sequence[str], tiles: np.ndarray,
                    extra_inputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest |value| of each named float tensor over the calibration tiles (`calibrate.tensor_ranges`)."""
    return {name: max(-low, high) for name, (low, high) in tensor_ranges(model, names, tiles, extra_inputs).items()}


def fp8_scale(amax: float) -> float:
    """Per-tensor scale amax / 448 (1.0 for an all-zero tensor, so that the scale stays positive)."""
    return amax / E4M3_MAX if amax > 0 else 1.0


def to_e4m3(values: np.ndarray, scale: float) -> np.ndarray:
    """values / scale, saturated to ±448 and rounded to the nearest FLOAT8E4M3FN (onnx's float8 numpy dtype)."""
    fp8 = helper.tensor_dtype_to_np_dtype(TensorProto.FLOAT8E4M3FN)
    return np.clip(values.astype(np.float32) / np.float32(scale), -E4M3_MAX, E4M3_MAX).astype(fp8)


def _qdq_constants(name: str, scale: float) -> list[onnx.TensorProto]:
    """The scale (float32 scalar) and zero point (float8e4m3fn scalar 0) initializers of tensor `name`."""
    zero = helper.make_tensor(f"{name}_fp8_zero", TensorProto.FLOAT8E4M3FN, [], [0.0])
    return [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_fp8_scale"), zero]


def quantize_model_fp8(model: onnx.ModelProto, operands: Mapping[str, Sequence[str]],
                       amax: Mapping[str, float]) -> onnx.ModelProto:
    """Insert the FP8 Q/DQ of every operand into `model` (changed in place, and returned).

    operands: `fp8_operands`' map; amax: each activation operand's calibrated amax (weights: their own).
    """
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes: list[list[onnx.NodeProto]] = []  # per operand: its Q/DQ (or DQ), in order
    constants, renamed = [], {}
    for name in operands:
        dequantized = f"{name}_fp8_dq"
        if name in weights:
            values = numpy_helper.to_array(weights[name])
            scale = fp8_scale(float(np.abs(values).max(initial=0.0)))
            constants.append(numpy_helper.from_array(to_e4m3(values, scale), f"{name}_fp8"))
            nodes.append([helper.make_node("DequantizeLinear", [f"{name}_fp8", f"{name}_fp8_scale", f"{name}_fp8_zero"],
                                           [dequantized], name=f"{name}_fp8_DequantizeLinear")])
        else:
            scale = fp8_scale(amax[name])
            nodes.append([helper.make_node("QuantizeLinear", [name, f"{name}_fp8_scale", f"{name}_fp8_zero"],
                                           [f"{name}_fp8_q"], name=f"{name}_fp8_QuantizeLinear"),
                          helper.make_node("DequantizeLinear", [f"{name}_fp8_q", f"{name}_fp8_scale",
                                           f"{name}_fp8_zero"], [dequantized], name=f"{name}_fp8_DequantizeLinear")])
        constants.extend(_qdq_constants(name, scale))
        renamed[name] = dequantized
    readers = {reader for names in operands.values() for reader in names}
    for node in graph.node:
        if node.name in readers:
            for index in FP8_INPUTS[node.op_type]:
                if index < len(node.input) and node.input[index] in renamed:
                    node.input[index] = renamed[node.input[index]]
    quantized_weights = {name for name in operands if name in weights}
    kept = [init for init in graph.initializer if init.name not in quantized_weights or read_elsewhere(model, init.name)]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *constants])
    insert_before_readers(graph, nodes)
    set_opset(model, FP8_OPSET)
    return model


def read_elsewhere(model: onnx.ModelProto, name: str) -> bool:
    """Whether any node still reads the float tensor `name` (a weight shared with a kept-float node)."""
    return any(name in node.input for node in model.graph.node)


def insert_before_readers(graph: onnx.GraphProto, chains: list[list[onnx.NodeProto]]) -> None:
    """Place each chain of new nodes (Q → DQ) just before the first node that reads its last output, so the
    graph stays topologically sorted."""
    first_reader: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            first_reader.setdefault(name, index)
    by_position: dict[int, list[onnx.NodeProto]] = {}
    for chain in chains:
        by_position.setdefault(first_reader.get(chain[-1].output[0], len(graph.node)), []).extend(chain)
    ordered = []
    for index, node in enumerate(graph.node):
        ordered.extend(by_position.get(index, []))
        ordered.append(node)
    ordered.extend(by_position.get(len(graph.node), []))
    del graph.node[:]
    graph.node.extend(ordered)


def set_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def quantize_to_fp8(source: Path, target: Path, tiles: np.ndarray, extra_inputs: Mapping[str, np.ndarray],
                    keep_float_nodes: Sequence[str] = ()) -> list[str]:
    """Write the FP8 Q/DQ graph of the FP32 graph at `source` to `target`; returns its external data files.

    tiles:            (N, 1, T, T) uint8 calibration tiles, fed to the graph's 'tiles' input.
    extra_inputs:     the graph's other inputs (prompts), batch first with at least CALIBRATION_BATCH rows.
    keep_float_nodes: names of nodes that stay float even when their op type is in FP8_OPS (the head).
    """
    model = onnx.load(str(source))
    operands = fp8_operands(model, keep_float_nodes)
    weights = {init.name for init in model.graph.initializer}
    activations = [name for name in operands if name not in weights]
    amax = activation_amax(model, activations, tiles, extra_inputs)
    return save_onnx(quantize_model_fp8(model, operands, amax), target)
