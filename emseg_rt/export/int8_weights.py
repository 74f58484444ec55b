"""FP32 ONNX graph → INT8 weight-only graph, for TensorRT for RTX engines on RTX 30 and newer (issue 30.4).

Weight-only quantisation stores a GEMM's weight matrix as int8 and multiplies in float: the activations are
never quantised, so nothing is calibrated. TensorRT reads the pattern from explicit Q/DQ: a constant int8
weight behind a DequantizeLinear that feeds a MatMul or Gemm (`WOQ_OPS`), and it runs that GEMM with the
weight dequantised on the fly. `quantize_weights_int8` writes exactly that pattern and nothing else:

- which weights: the constant 2-D weight operand (input 1) of every MatMul and Gemm outside the kept-float
  nodes (the head and the float components, as int8 and FP8 keep them); Conv stays float (TensorRT's
  weight-only kernels are GEMMs), and so do activations, LayerNorm, softmax, GELU and the class merge;
- scales: symmetric, one per output channel (the weight's N axis: axis 1 of a MatMul's (K, N) weight, of a
  Gemm's weight as stored: axis 0 when transB), max |w| / 127 (1.0 for an all-zero channel); zero points 0;
- values: round(w / scale) clipped to ±127 (int8's symmetric range, as TensorRT wants).

The graph keeps `OPSET` (per-axis DequantizeLinear needs 13). ONNX Runtime's CPU provider runs it by
dequantising and multiplying in float: numerically the rounding an engine applies, so package parity is
measured on it. A weight 4× smaller is the point on a GPU; on a CPU it is no faster than fp32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from emseg_rt.export.fp8 import insert_before_readers, read_elsewhere
from emseg_rt.export.onnx_io import save_onnx

WOQ_OPS: tuple[str, ...] = ("MatMul", "Gemm")  # the GEMMs whose weight operand (input 1) becomes int8
INT8_MAX = 127  # symmetric: -127..127


def woq_weights(model: onnx.ModelProto, keep_float_nodes: Iterable[str] = ()) -> dict[str, int]:
    """{weight initializer name: its output-channel axis} for every WOQ_OPS node outside `keep_float_nodes`
    whose input 1 is a constant 2-D float32 initializer (one axis per weight: a weight read by two GEMMs with
    different layouts stays float)."""
    keep = set(keep_float_nodes)
    initializers = {init.name: init for init in model.graph.initializer}
    axes: dict[str, int] = {}
    conflicts: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in WOQ_OPS or node.name in keep or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
        axis = 0 if trans_b else 1
        if axes.setdefault(weight.name, axis) != axis:
            conflicts.add(weight.name)
    return {name: axis for name, axis in axes.items() if name not in conflicts}


def quantize_per_channel(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a 2-D float weight, one scale per index of `axis`.

    values: (K, N) float32; axis: the output-channel axis (0 or 1).
    returns (int8 values of the same shape, float32 scales (values.shape[axis],)).
    """
    amax = np.abs(values).max(axis=1 - axis)
    scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    shape = (-1, 1) if axis == 0 else (1, -1)
    quantized = np.clip(np.rint(values / scales.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scales


def quantize_weights_int8(model: onnx.ModelProto, keep_float_nodes: Sequence[str] = ()) -> onnx.ModelProto:
    """Replace each `woq_weights` weight by int8 values + per-channel DequantizeLinear (model changed in place,
    and returned). A weight also read by a kept-float node stays in the graph as float for that node."""
    graph = model.graph
    axes = woq_weights(model, keep_float_nodes)
    keep = set(keep_float_nodes)
    initializers = {init.name: init for init in graph.initializer}
    constants, chains, renamed = [], [], {}
    for name, axis in axes.items():
        quantized, scales = quantize_per_channel(numpy_helper.to_array(initializers[name]).astype(np.float32), axis)
        constants += [numpy_helper.from_array(quantized, f"{name}_int8"),
                      numpy_helper.from_array(scales, f"{name}_int8_scale"),
                      numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), f"{name}_int8_zero")]
        chains.append([helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero"],
                                        [f"{name}_int8_dq"], name=f"{name}_int8_DequantizeLinear", axis=axis)])
        renamed[name] = f"{name}_int8_dq"
    for node in graph.node:
        if node.op_type in WOQ_OPS and node.name not in keep and len(node.input) > 1 and node.input[1] in renamed:
            node.input[1] = renamed[node.input[1]]
    kept = [init for init in graph.initializer if init.name not in axes or read_elsewhere(model, init.name)]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *constants])
    insert_before_readers(graph, chains)
    return model


def quantize_to_int8_weights(source: Path, target: Path, keep_float_nodes: Sequence[str] = ()) -> list[str]:
    """Write the INT8 weight-only graph of the FP32 graph at `source` to `target`; returns its external data
    files (`onnx_io.save_onnx`). keep_float_nodes: nodes that stay float (the head's)."""
    return save_onnx(quantize_weights_int8(onnx.load(str(source)), keep_float_nodes), target)
