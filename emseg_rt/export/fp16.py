"""FP32 ONNX graph → mixed FP16 graph for strongly typed TensorRT (DESIGN.md §3 "Precision").

TensorRT for RTX has no FP16 builder flag: the precision of every layer comes from the graph. We convert
the exported FP32 graph with onnxconverter-common's float16 converter rather than exporting a `half()`
model, because the converter lets us name the op types that stay FP32 in one place, and the graph's
inputs and outputs keep their dtypes (`keep_io_types`): uint8 tiles in, FP32 logits and uint8 labels out.

FP32 islands (`FP32_OPS`): normalisations and reductions whose intermediate sums overflow or lose too much
in FP16 (SAM's LayerNorm2d is ReduceMean/Pow/Sqrt; SAM ViT-H in pure FP16 gives garbage), softmax, the
class merge (Resize, ArgMax) and the converter's own default block list. Matmuls, convolutions, GELU and
the elementwise ops between them run in FP16. The parity check in `parity.py` measures the result.

After the converter, three passes close its gaps so that FP32 nodes really compute in FP32: their weights
are kept in FP32 (`_restore_fp32_initializers`), FP16 round trips between consecutive FP32 nodes are
removed (`_remove_fp16_round_trips`), and FP32 graph outputs stay FP32 (`_restore_float_outputs`).
"""

from __future__ import annotations

import warnings

import onnx
from onnxconverter_common import float16

from emseg_rt.export.onnx_io import PROTOBUF_LIMIT, proto_bytes

FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Resize",
    "ArgMax",
    "ArgMin",
    "TopK",
    "Range",
    "CumSum",
)


def nodes_in_scope(model: onnx.ModelProto, module_name: str) -> list[str]:
    """Names of the nodes the dynamo exporter traced inside a submodule called `module_name` (e.g. 'head'),
    read from its `pkg.torch.onnx.name_scopes` metadata."""
    names = []
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes" and any(
                module_name in scope.split(".") for scope in _parse_scopes(prop.value)
            ):
                names.append(node.name)
                break
    return names


def _parse_scopes(value: str) -> list[str]:
    return [item.strip().strip("'\"") for item in value.strip("[]").split(",")]


def convert_to_mixed_fp16(
    model: onnx.ModelProto, extra_fp32_ops: tuple[str, ...] = (), fp32_modules: tuple[str, ...] = ()
) -> onnx.ModelProto:
    """Return a mixed-precision copy of `model`: FP16 compute, FP32 islands for `FP32_OPS`, I/O dtypes kept.

    fp32_modules: submodule names (e.g. 'head') whose every node stays FP32.

    Initialisers are clamped to ±65504 by the converter (the default 1e4 clamp would alter large weights).
    Shape inference is skipped for graphs over protobuf's 2 GB limit (it serialises the model); the
    dynamo exporter already records intermediate value types.
    """
    large = proto_bytes(model) > PROTOBUF_LIMIT
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS) | set(extra_fp32_ops))
    block_nodes = {name for module in fp32_modules for name in nodes_in_scope(model, module)}
    io_types = {value.name: value.type.tensor_type.elem_type for value in model.graph.output}
    fp32_weights = _fp32_initializers(model, set(block), block_nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one warning per tiny constant flushed to fp16 range
        converted = float16.convert_float_to_float16(
            model,
            min_positive_val=6e-8,  # smallest FP16 subnormal
            max_finite_val=65504.0,  # largest FP16 value
            keep_io_types=True,
            disable_shape_infer=large,
            op_block_list=block,
            node_block_list=sorted(block_nodes) or None,
            check_fp16_ready=False,
        )
    _restore_fp32_initializers(converted, fp32_weights)
    _align_cast_targets(converted)
    _restore_float_outputs(converted, io_types, set(block))
    _remove_fp16_round_trips(converted)
    return converted


def _fp32_initializers(
    model: onnx.ModelProto, block_ops: set[str], block_nodes: set[str]
) -> dict[str, onnx.TensorProto]:
    """Copies of the FP32 initialisers that feed at least one FP32-computing node (a blocked op type or a
    node of an `fp32_modules` submodule): the weights of the FP32 islands and of an FP32 head."""
    fp32_inputs = {name for node in model.graph.node if node.op_type in block_ops or node.name in block_nodes
                   for name in node.input}
    kept = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and init.name in fp32_inputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            kept[init.name] = copy
    return kept


def _restore_fp32_initializers(model: onnx.ModelProto, originals: dict[str, onnx.TensorProto]) -> None:
    """Close the converter's gap for weights of FP32 nodes: it stores them in FP16 (the exporter lists
    initialisers in value_info, so they are retyped) and casts them back to FP32 in front of the node, which
    then computes in FP32 on FP16-rounded weights. Feed those nodes the original FP32 tensor instead and
    drop the casts. A weight that also feeds FP16 nodes (the exporter shares equal constants, e.g. GELU's
    √2 between encoder and head) keeps its FP16 copy for them and gets an FP32 twin `<name>__fp32`."""
    graph = model.graph
    casts: dict[str, list[onnx.NodeProto]] = {}
    other_use: set[str] = set()
    for node in graph.node:
        for name in node.input:
            if name not in originals:
                continue
            to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
            if to == onnx.TensorProto.FLOAT:
                casts.setdefault(name, []).append(node)
            else:
                other_use.add(name)
    if not casts:
        return
    fp16_names = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    replacement: dict[str, str] = {}  # weight name → name of its FP32 tensor
    for name in casts:
        if name not in fp16_names:
            continue
        if name in other_use:
            twin = onnx.TensorProto()
            twin.CopyFrom(originals[name])
            twin.name = f"{name}__fp32"
            graph.initializer.append(twin)
            replacement[name] = twin.name
        else:
            replacement[name] = name
    for init in graph.initializer:
        if replacement.get(init.name) == init.name:
            init.CopyFrom(originals[init.name])
    renamed = {cast.output[0]: replacement[name] for name in replacement for cast in casts[name]}
    kept_nodes = [node for node in graph.node if not (node.op_type == "Cast" and node.output[0] in renamed)]
    for node in kept_nodes:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    if any(output.name in renamed for output in graph.output):  # a weight cast straight to an output: never ours
        raise RuntimeError("fp16 conversion: a graph output is a cast of a weight")
    values = [v for v in graph.value_info if v.name not in renamed]
    for value in values:
        if replacement.get(value.name) == value.name:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    del graph.value_info[:]
    graph.value_info.extend(values)


def _align_cast_targets(model: onnx.ModelProto) -> None:
    """The converter retypes a Cast's output value_info to FP16 but leaves its `to` attribute FLOAT (e.g.
    the uint8 → float cast of the tiles): make the attribute agree with the recorded type."""
    value_types = {value.name: value.type.tensor_type.elem_type for value in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or value_types.get(node.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                attribute.i = onnx.TensorProto.FLOAT16


def _restore_float_outputs(model: onnx.ModelProto, io_types: dict[str, int], fp32_ops: set[str]) -> None:
    """Undo the converter's `keep_io_types` gap: an output produced by an FP32 island is cast to FP16
    (onnxconverter-common 1.x). Feed the graph output straight from the FP32 tensor instead, and give the
    FP16 cast a new name for the graph's internal consumers."""
    graph = model.graph
    for output in graph.output:
        want = io_types.get(output.name)
        if want != onnx.TensorProto.FLOAT or output.type.tensor_type.elem_type == want:
            continue
        producer = next(node for node in graph.node if output.name in node.output)
        internal = output.name + "__fp16"
        source = producer.input[0] if producer.op_type == "Cast" else internal
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == output.name:
                    node.input[i] = source if node.op_type in fp32_ops else internal
        producer.output[list(producer.output).index(output.name)] = internal
        graph.node.append(onnx.helper.make_node("Identity", [source], [output.name], name=output.name + "__fp32_out"))
        output.type.tensor_type.elem_type = want
    _topological_sort(graph)


def _remove_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Drop the FP16 detours between FP32 nodes: the converter puts a Cast to FP16 after every FP32 node
    and a Cast back to FP32 in front of the next one, so consecutive FP32 nodes (an FP32 head, a graph
    input feeding an FP32 island, the logits feeding ArgMax) still pass through FP16 rounding. Its own
    clean-up (`remove_unnecessary_cast_node`) misses most of these pairs. Each Cast(to FLOAT) of a
    Cast(to FLOAT16) of x becomes x when x is FLOAT, else Cast(x, to FLOAT); casts left without a
    consumer are removed."""
    graph = model.graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in list(graph.value_info) + list(graph.input) + list(graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    outputs = {output.name for output in graph.output}
    to_fp16 = {node.output[0]: node.input[0] for node in graph.node if cast_to(node) == onnx.TensorProto.FLOAT16}
    replaced: dict[str, str] = {}  # output of a redundant Cast(to FLOAT) → the FP32 tensor it equals
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT or node.input[0] not in to_fp16:
            continue
        source = to_fp16[node.input[0]]
        source = replaced.get(source, source)  # nodes are in topological order: earlier detours are resolved
        if types.get(source) == onnx.TensorProto.FLOAT and node.output[0] not in outputs:
            replaced[node.output[0]] = source
        else:  # uint8 tiles, or a graph output: cast the original tensor directly
            node.input[0] = source
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replaced:
                node.input[i] = replaced[name]
    # A Shape node reads only the shape: let it read the tensor before any Cast (the converter casts a
    # graph input to FP16 just for the Shape that computes the dynamic batch).
    cast_inputs = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}
    for node in graph.node:
        while node.op_type == "Shape" and node.input[0] in cast_inputs:
            node.input[0] = cast_inputs[node.input[0]]
    # Remove casts (and only casts) whose outputs nobody reads, until none is left.
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if node.op_type == "Cast" and not any(o in used for o in node.output)]
        if not dead:
            break
        dead_outputs = {o for node in dead for o in node.output}
        kept = [node for node in graph.node if not (node.op_type == "Cast" and node.output[0] in dead_outputs)]
        del graph.node[:]
        graph.node.extend(kept)
    defined = {o for node in graph.node for o in node.output} | {init.name for init in graph.initializer}
    values = [v for v in graph.value_info if v.name in defined]
    del graph.value_info[:]
    graph.value_info.extend(values)
    _topological_sort(graph)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is produced before use (ONNX requires it; we appended Identities)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise RuntimeError("fp16 conversion left a graph with a cycle or a dangling input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def op_precisions(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Count, per op type, how many nodes compute in FP16 vs FP32 (by their first float input's type).

    Used by tests and `inspect` to show that matmuls/convs are FP16 and the FP32 islands are FP32.
    """
    types: dict[str, int] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Cast":
            for out in node.output:
                types.setdefault(out, next(a.i for a in node.attribute if a.name == "to"))
    counts: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        float_inputs = [types.get(name) for name in node.input if types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
        if not float_inputs:
            continue
        kind = "fp16" if float_inputs[0] == onnx.TensorProto.FLOAT16 else "fp32"
        counts.setdefault(node.op_type, {"fp16": 0, "fp32": 0})[kind] += 1
    return counts
