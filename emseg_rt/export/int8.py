"""FP32 ONNX graph → int8 QDQ graph for ONNX Runtime's CPU provider (issue 30.2).

ONNX Runtime's static quantisation (`onnxruntime.quantization.quantize_static`, QuantFormat.QDQ) puts
QuantizeLinear/DequantizeLinear pairs on the edges of the matmuls and convolutions (`INT8_OPS`): their weights
(per output channel, int8), their activation inputs and, as the quantiser does by default, their outputs (uint8,
ranges calibrated by MinMax), so ONNX Runtime runs each DQ → MatMul → Q as one integer kernel (VNNI where the
CPU has it). Leaving the outputs float (`OpTypesToExcludeOutputQuantization`) ran the trained default model 2×
slower (ONNX Runtime then dequantises and multiplies in float) at the same label agreement, so we keep them.
Every other op computes in float as exported, on the dequantised values where it reads a matmul's output:
LayerNorm, softmax, GELU, the preprocessing and the class merge (Resize, ArgMax), and the whole head (FAFM, class prompts, decoder: the `head` scope, as fp16 keeps it FP32 by default;
measured on the trained default model, a quantised head doubles the label flips and quadruples the logit
error, while the encoders hold > 90 % of a paper-size model's FLOPs).

Calibration data are tiles of a volume the user gives (`--calibration`, read through `io.open_volume`) or of
synthetic FIB-SEM phantoms (`data.phantom`): what the model sees, not noise. `calibration_tiles` also draws
the held-out tiles the package's parity is measured on (never used for calibration).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import MinMaxCalibrater, TensorsData, save_tensors_data

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.export.calibrate import tensor_ranges
from emseg_rt.io.readers import open_volume
from emseg_rt.io.volume import as_plane_stack

INT8_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Conv")  # what gets Q/DQ; every other op computes in float
CALIBRATION_TILES = 8  # tiles calibrated on by default (MinMax ranges settle within a few tiles)


def calibration_tiles(tile: int, count: int, held_out: int, source: str | Path | None = None,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Tiles to calibrate on and tiles held out for parity, from one source.

    tile:     the model's tile side T; count: calibration tiles; held_out: parity tiles.
    source:   a uint8 volume or 2D image (any format `io.open_volume` reads), or None for phantoms.
    seed:     picks the tile positions (and the phantom).
    returns   calibration (count, 1, T, T) uint8, held-out (held_out, 1, T, T) uint8, and a line naming
              the source. EmsegError when the volume cannot be read, is not uint8 or is smaller than a tile.
    """
    total = count + held_out
    if source is None:
        phantom = generate_phantom((max(total, 3), tile, tile), seed=seed)  # ≥ 3 planes: its z gradients
        tiles = phantom.image[:total, None]
        name = f"{total} planes of a synthetic FIB-SEM phantom (seed {seed})"
    else:
        tiles = _volume_tiles(source, tile, total, seed)
        name = f"{total} tiles of {source} (seed {seed})"
    tiles = np.ascontiguousarray(tiles, dtype=np.uint8)
    return tiles[:count], tiles[count:], name


def _volume_tiles(source: str | Path, tile: int, total: int, seed: int) -> np.ndarray:
    """`total` tiles (total, 1, T, T) from planes spread evenly through the volume, at seeded positions."""
    volume = open_volume(source, spatial=True)
    if volume.ndim == 2:
        volume = as_plane_stack(volume)
    if volume.array.dtype != np.uint8:
        raise EmsegError(f"--calibration {source}: is {volume.array.dtype}; give a uint8 volume (what the model "
                         "reads after segment's intensity mapping), or leave --calibration out to use phantoms")
    depth, height, width = volume.shape
    if height < tile or width < tile:
        raise EmsegError(f"--calibration {source}: planes of {height}x{width} are smaller than the model's "
                         f"{tile}x{tile} tile")
    rng = np.random.default_rng(seed)
    planes = np.linspace(0, depth - 1, total).round().astype(int)
    tiles = np.empty((total, 1, tile, tile), np.uint8)
    for i, z in enumerate(planes):
        y, x = int(rng.integers(0, height - tile + 1)), int(rng.integers(0, width - tile + 1))
        tiles[i, 0] = np.asarray(volume.array[int(z), y:y + tile, x:x + tile])
    return tiles


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """The quantiser logs advice ('consider pre-processing') on the root logger: not for our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_to_int8(source: Path, target: Path, tiles: np.ndarray, extra_inputs: Mapping[str, np.ndarray],
                     keep_float_nodes: Sequence[str] = (), external_data: bool = False) -> None:
    """Write the int8 QDQ graph of the FP32 graph at `source` to `target`.

    tiles:            (N, 1, T, T) uint8 calibration tiles, fed to the graph's 'tiles' input.
    extra_inputs:     the graph's other inputs (prompts), batch first with at least CALIBRATION_BATCH rows.
    keep_float_nodes: names of nodes that stay float even when their op type is in INT8_OPS (the head).
    external_data:    save the weights beside the graph (graphs over protobuf's 2 GB limit).

    The MinMax ranges are `export.calibrate.tensor_ranges`' (bounded memory) of the tensors ONNX Runtime's
    calibrator would pick (its own selection rule), handed to `quantize_static` as its calibration cache.
    """
    calibrator = MinMaxCalibrater(str(source), op_types_to_calibrate=list(INT8_OPS))
    names, _ = calibrator.select_tensors_to_calibrate(calibrator.model)
    ranges = tensor_ranges(calibrator.model, sorted(names), tiles, extra_inputs)
    del calibrator
    data = TensorsData(CalibrationMethod.MinMax, {name: (np.array([low], np.float32), np.array([high], np.float32))
                                                  for name, (low, high) in ranges.items()})
    with tempfile.TemporaryDirectory(prefix="emseg-int8-") as work, _quiet_quantiser():
        cache = Path(work) / "ranges.json"
        save_tensors_data(data, cache)
        quantize_static(str(source), str(target), None, calibration_cache_path=str(cache),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(keep_float_nodes), use_external_data_format=external_data)


def qdq_counts(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Per op type: how many nodes read a DequantizeLinear output ('int8') and how many do not ('float').

    Used by tests and `inspect`-style checks: MatMul/Conv are int8, LayerNormalization and Softmax float.
    """
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind = "int8" if any(name in dequantized for name in node.input) else "float"
        counts.setdefault(node.op_type, {"int8": 0, "float": 0})[kind] += 1
    return counts
