"""ONNX files in and out: torch's dynamo exporter, saving with external data, reading a graph's I/O spec.

Every graph of a package comes from `export_onnx`: torch.onnx.export(dynamo=True) at `OPSET` (18, where
LayerNormalization stays one node), dim 0 of every input dynamic and named `BATCH_DIM`, every other
dimension static. Weights go to `<file>.onnx.data` beside the graph when they pass
`EXTERNAL_DATA_THRESHOLD`, below protobuf's 2 GB limit on one message (SAM ViT-H needs this).

`EXTERNAL_DATA_THRESHOLD` is read when a graph is saved, not when this module is imported, so a test can
lower it (`monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 0)`) to send a tiny model down the
external-data path end to end.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from emseg_rt.package import BATCH_DIM, graph_signature

OPSET = 18
PROTOBUF_LIMIT = 2_000_000_000  # bytes; a ModelProto above this cannot be serialised in one piece
EXTERNAL_DATA_THRESHOLD = 1_500_000_000  # bytes of weights; below PROTOBUF_LIMIT with room for the graph


def external_data_name(path: Path) -> str:
    """Name of the external-data file of the graph at `path`: `<file>.onnx.data`, beside it."""
    return Path(path).name + ".data"


def export_onnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
    batch_max: int,
) -> list[str]:
    """Trace `module` to an FP32 ONNX graph at `path`.

    example_inputs: one tensor per positional input of `module.forward`, batch first (batch ≥ 2, so that
                    the exporter cannot specialise the batch to 1).
    batch_max:      upper bound of the dynamic batch dimension.
    returns the names of the external-data files written beside `path` ([] when the weights are inline).
    """
    batch = torch.export.Dim(BATCH_DIM, min=1, max=max(batch_max, 2))
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    program = torch.onnx.export(
        module.eval(),
        tuple(example_inputs),
        dynamo=True,
        opset_version=OPSET,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=_batch_dynamic_shapes(module, len(example_inputs), batch),
        verbose=False,
        report=False,
    )
    weight_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    path = Path(path)
    data = path.parent / external_data_name(path)
    data.unlink(missing_ok=True)
    # torch also goes external on its own past 1.5 GiB of initialisers: report what was written.
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_THRESHOLD)
    return [data.name] if data.is_file() else []


def _batch_dynamic_shapes(module: nn.Module, count: int, batch: Any) -> dict[str, Any]:
    """torch.export's `dynamic_shapes` for `count` positional inputs, keyed by forward's parameter names,
    dim 0 of each bound to `batch`; a `*inputs` parameter gets a tuple (one entry per input it takes)."""
    shapes: dict[str, Any] = {}
    remaining = count
    for parameter in inspect.signature(module.forward).parameters.values():
        if not remaining:
            break
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[parameter.name] = tuple({0: batch} for _ in range(remaining))
            remaining = 0
        else:
            shapes[parameter.name] = {0: batch}
            remaining -= 1
    return shapes


def save_onnx(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save `model` at `path`, its weights in `<file>.onnx.data` beside it when the model passes
    EXTERNAL_DATA_THRESHOLD. Returns the external-data files written ([] when inline)."""
    path = Path(path)
    data_name = external_data_name(path)
    external = proto_bytes(model) > EXTERNAL_DATA_THRESHOLD
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [data_name] if external else []


def proto_bytes(model: onnx.ModelProto) -> int:
    """Serialised size of `model`; PROTOBUF_LIMIT + 1 when protobuf refuses to size it (> 2 GB)."""
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001  some protobuf builds raise on messages over 2 GB
        return PROTOBUF_LIMIT + 1


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of the ONNX file at `path` as manifest dicts {name, dtype, shape}; a symbolic
    dimension appears by name ('batch'). Initialisers listed as inputs are left out; weights are not read.
    Read by `package.graph_signature`, the reader `load_package` checks every manifest against."""
    inputs, outputs = graph_signature(path)
    return [spec.to_dict() for spec in inputs], [spec.to_dict() for spec in outputs]
