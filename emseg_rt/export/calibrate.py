"""Activation ranges of an FP32 graph over calibration tiles, in bounded memory: what int8 (export/int8.py) and
FP8 (export/fp8.py) calibrate on.

The graph runs in ONNX Runtime (`onnx_session.OnnxGraph`) with the wanted tensors as extra outputs, and each
output's min and max are folded in over every tile. The tensors go in groups whose estimated size (shape
inference, at the calibration batch) stays under `GROUP_BYTES`, one pass over the tiles per group, so a graph
whose calibrated tensors outgrow memory still calibrates (scsam-vit-b at 1024²: 496 tensors, every input and
output of its matmuls and convolutions, 2.6 GB for one tile: one group).

Why not ONNX Runtime's own calibrator (`quantize_static` with a data reader): on scsam-vit-b at 1024² the graph
it augments with ReduceMin/ReduceMax nodes held 14.7 GB after one tile and grew with each (the plain graph:
4.1 GB), and int8 calibration ran out of a 23 GB machine. int8 hands it these ranges through its calibration
cache instead (export/int8.py); FP8 takes the largest magnitude of each (export/fp8.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from emseg_rt.export.onnx_io import save_onnx
from emseg_rt.onnx_session import OnnxGraph

GROUP_BYTES = 3 * 2**30  # estimated bytes of the extra outputs of one calibration pass
CALIBRATION_BATCH = 2  # tiles per calibration run (1 above 256²)
_DTYPE_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2}
_KEPT_VALUES = 4096  # initializers up to this many values keep them for shape inference


def tensor_ranges(model: onnx.ModelProto, names: Sequence[str], tiles: np.ndarray,
                  extra_inputs: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(min, max) of each named float tensor of `model` over the calibration tiles.

    tiles: (N, 1, T, T) uint8, fed to the graph's 'tiles' input (or its first) in batches of CALIBRATION_BATCH
    (1 above 256²); extra_inputs: the other graph inputs, batch first with at least CALIBRATION_BATCH rows.
    """
    batch = CALIBRATION_BATCH if tiles.shape[-1] <= 256 else 1
    ranges = {name: (np.inf, -np.inf) for name in names}
    for group in tensor_groups(model, names, batch):
        with tempfile.TemporaryDirectory(prefix="emseg-calibrate-") as work:
            graph = OnnxGraph(_with_outputs(model, group, Path(work) / "probe.onnx"), device="cpu")
            for feeds in _feeds(model, tiles, extra_inputs, batch):
                for name, value in graph.run(feeds, group).items():
                    low, high = ranges[name]
                    if value.size:
                        ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
            del graph
    return {name: (low, high) if low <= high else (0.0, 0.0) for name, (low, high) in ranges.items()}


def tensor_groups(model: onnx.ModelProto, names: Sequence[str], batch: int) -> list[list[str]]:
    """`names` in graph order, cut into groups of at most GROUP_BYTES estimated bytes each (a tensor of unknown
    shape counts as an eighth of it; one larger than the bound is a group of its own)."""
    sizes = _estimated_bytes(model, batch)
    order = {name: i for i, name in enumerate(_graph_order(model))}
    groups: list[list[str]] = [[]]
    total = 0
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        size = sizes.get(name, GROUP_BYTES // 8)
        if groups[-1] and total + size > GROUP_BYTES:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return [group for group in groups if group]


def _estimated_bytes(model: onnx.ModelProto, batch: int) -> dict[str, int]:
    """Bytes of every tensor whose type shape inference knows (symbolic dims count as `batch`)."""
    inferred = onnx.shape_inference.infer_shapes(_structure_only(model))
    sizes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        kind = info.type.tensor_type
        if not kind.HasField("shape") or kind.elem_type not in _DTYPE_BYTES:
            continue
        count = 1
        for dim in kind.shape.dim:
            count *= dim.dim_value if dim.HasField("dim_value") else batch
        sizes[info.name] = count * _DTYPE_BYTES[kind.elem_type]
    return sizes


def _structure_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with the data of its large initializers (weights) dropped, their shapes kept: a copy small
    enough for protobuf's 2 GB limit whatever the weights. Small ones (the shapes Reshape reads) keep their
    values, which shape inference needs."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        if int(np.prod(tensor.dims)) > _KEPT_VALUES:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(field)
    return light


def _graph_order(model: onnx.ModelProto) -> list[str]:
    seen: dict[str, None] = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            seen.setdefault(name, None)
    return list(seen)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str], path: Path) -> Path:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known)
    save_onnx(probe, path)
    return path


def _feeds(model: onnx.ModelProto, tiles: np.ndarray, extra_inputs: Mapping[str, np.ndarray], batch: int):
    input_names = [value.name for value in model.graph.input]
    input_name = "tiles" if "tiles" in input_names else input_names[0]
    for start in range(0, len(tiles), batch):
        chunk = tiles[start:start + batch]
        yield {input_name: chunk, **{n: np.asarray(extra_inputs[n])[:len(chunk)] for n in input_names if n != input_name}}
