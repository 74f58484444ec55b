"""FP32 ONNX graph → the same graph with each attention fused into one ONNX Runtime kernel (issue 30.3).

ONNX Runtime's transformer optimiser (`onnxruntime.transformers.optimizer`, model types vit, bert, clip, swin,
sam2) fuses no attention in our graphs: measured on scsam-tiny, 0 Attention / MultiHeadAttention nodes out of
its 11 softmaxes with every model type, because torch's dynamo exporter writes SAM's attention (scaled Q times
Kᵀ, plus the decomposed relative-position bias, reshaped) and timm's decomposed `scaled_dot_product_attention`
(√scale on Q and on Kᵀ) in shapes its pattern matchers do not know. So we rewrite them ourselves:

    MatMul(Q, Kᵀ) [→ Reshape → Add(bias) ... → Reshape] → Softmax → MatMul(·, V)
      ⇒ com.microsoft.MultiHeadAttention(Q, Kᵀᵀ, V, attention_bias = Σ bias; num_heads 1, scale 1)

with every (batch, head) pair as one batch row (`num_heads` 1), so no head layout needs to be known: the
3D (B·heads, S, d) layout of SAM's attention is used as it is, and timm's 4D (B, heads, S, d) is reshaped to it
and back. `scale` 1 because Q (and Kᵀ) already carry the exporter's scaling; the Transpose of Kᵀ cancels
against SAM's own Transpose in ONNX Runtime's graph optimiser. A pattern whose shapes cannot be proved to
fit from the graph's recorded shapes is left as it was. The result runs in ONNX Runtime only (TensorRT has
no com.microsoft ops): the 'fp32-fused' package precision.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
FUSED_ATTENTION_OPS = ("MultiHeadAttention", "Attention")  # what ONNX Runtime's attention kernels are called

Dims = list  # a tensor's recorded shape: ints and symbolic names ('8*batch'), '' where unknown


@dataclass
class _Pattern:
    """One matched attention: Q, Kᵀ and V tensors, the bias tensors added to the scores, the nodes it replaces."""

    query: str
    key_t: str
    value: str
    output: str
    rank: int  # 3: (B', S, L) scores; 4: (B, heads, S, L)
    score_dims: Dims
    scale: float  # a scalar the scores are multiplied by before the bias (1 / the exporter's Div)
    biases: list[str] = field(default_factory=list)
    bias_shape: str | None = None  # the Reshape shape that brings the biased scores back to `score_dims`
    nodes: list[onnx.NodeProto] = field(default_factory=list)


def attention_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many softmaxes and fused attention nodes a graph has: {'Softmax', 'MultiHeadAttention', 'Attention'}."""
    ops = Counter(node.op_type for node in model.graph.node)
    return {name: ops.get(name, 0) for name in ("Softmax", *FUSED_ATTENTION_OPS)}


def fuse_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every attention of `model` (in place, and returned) into com.microsoft.MultiHeadAttention.

    Shapes: scores (B', S, L) or (B, H, S, L) with static S, L and head size d; the fused node computes
    softmax(Q Kᵀ + bias) V on (B·H, S, d) rows, bias (B·H, 1, S, L).
    """
    graph = model.graph
    dims = _recorded_dims(graph)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    scalars = {init.name: float(numpy_helper.to_array(init)) for init in graph.initializer
               if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and not init.dims}
    patterns = [p for node in graph.node if node.op_type == "Softmax"
                for p in [_match(node, producers, consumers, dims, scalars)] if p is not None]
    if not patterns:
        return model
    replaced = {id(node) for p in patterns for node in p.nodes}
    replacement = {id(p.nodes[-1]): _fused_nodes(p, i, graph, dims) for i, p in enumerate(patterns)}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        kept.extend(replacement.get(id(node), []))  # the fused nodes take the place of the final MatMul
        if id(node) not in replaced:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    gone = {out for p in patterns for node in p.nodes[:-1] for out in node.output}
    values = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(values)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _recorded_dims(graph: onnx.GraphProto) -> dict[str, Dims]:
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    recorded = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    recorded.update({init.name: list(init.dims) for init in graph.initializer})
    return recorded


def _only_user(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 else None


def _match(softmax: onnx.NodeProto, producers: dict, consumers: dict, dims: dict[str, Dims],
           scalars: dict[str, float]) -> _Pattern | None:
    """The attention around `softmax`, or None when it is not one this rewrite can prove equal."""
    after = _only_user(softmax.output[0], consumers)
    if after is None or after.op_type != "MatMul" or after.input[0] != softmax.output[0]:
        return None
    chain, biases, reshapes = [softmax], [], []
    node = _take(producers.get(softmax.input[0]), "Reshape", chain, reshapes, producers)
    while node is not None and node.op_type == "Add":
        score_side = [i for i, name in enumerate(node.input) if producers.get(name) is not None
                      and producers[name].op_type in ("Add", "Reshape", "MatMul", "Div", "Mul")]
        if len(score_side) != 1:
            return None
        biases.append(node.input[1 - score_side[0]])
        chain.append(node)
        node = producers.get(node.input[score_side[0]])
    node = _take(node, "Reshape", chain, reshapes, producers)
    scale = 1.0
    if node is not None and node.op_type in ("Div", "Mul") and node.input[1] in scalars:
        factor = scalars[node.input[1]]
        scale = 1.0 / factor if node.op_type == "Div" else factor
        chain.append(node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "MatMul" or len(reshapes) not in (0, 2):
        return None
    chain.append(node)
    if any(_only_user(n.output[0], consumers) is None for n in chain[1:]):
        return None  # an intermediate tensor is read elsewhere too: it must stay
    query, key_t, value = node.input[0], node.input[1], after.input[1]
    q_dims, v_dims = dims.get(query, []), dims.get(value, [])
    if len(q_dims) not in (3, 4) or len(v_dims) != len(q_dims) or not _static([*q_dims[-2:], *v_dims[-2:]]) \
            or q_dims[-1] != v_dims[-1] or next((a.i for a in softmax.attribute if a.name == "axis"), -1) not in (-1, len(q_dims) - 1):
        return None
    scores = [*q_dims[:-1], v_dims[-2]]
    if reshapes and not (dims.get(node.output[0]) == scores == dims.get(reshapes[0].output[0])):
        return None
    biased = dims.get(reshapes[-1].output[0] if reshapes else node.output[0], scores)
    if biases and _broadcast([dims.get(b) for b in biases]) != biased:
        return None
    return _Pattern(query, key_t, value, after.output[0], len(scores), scores, scale, biases,
                    reshapes[0].input[1] if reshapes else None, [*reversed(chain), after])


def _take(node: onnx.NodeProto | None, op_type: str, chain: list, taken: list, producers: dict) -> onnx.NodeProto | None:
    """When `node` is an `op_type`, append it to `chain` and `taken` and return its first input's producer."""
    if node is None or node.op_type != op_type:
        return node
    chain.append(node)
    taken.append(node)
    return producers.get(node.input[0])


def _static(values: Dims) -> bool:
    return bool(values) and all(isinstance(v, int) and v > 0 for v in values)


def _broadcast(shapes: list[Dims | None]) -> Dims | None:
    """numpy broadcasting of recorded shapes (symbolic dims equal only to themselves or 1); None if unknown."""
    if any(not s for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    result: Dims = []
    for axis in range(rank):
        column = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(column) > 1 or "" in column:
            return None
        result.append(column.pop() if column else 1)
    return result


def _fused_nodes(pattern: _Pattern, index: int, graph: onnx.GraphProto, dims: dict[str, Dims]) -> list[onnx.NodeProto]:
    """The nodes that compute `pattern.output` with one MultiHeadAttention (constants added to `graph`)."""
    name = f"fused_attention_{index}"
    nodes: list[onnx.NodeProto] = []

    def constant(suffix: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{name}_{suffix}"))
        return f"{name}_{suffix}"

    def add(op: str, inputs: list[str], suffix: str, **attributes: object) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{name}_{suffix}"], name=f"{name}_{suffix}", **attributes))
        return f"{name}_{suffix}"

    query, key_t, value = pattern.query, pattern.key_t, pattern.value
    seq, total = pattern.score_dims[-2], pattern.score_dims[-1]
    if pattern.rank == 4:  # (B, H, S, d) → (B·H, S, d)
        head = dims[query][-1]
        query = add("Reshape", [query, constant("q_shape", [-1, seq, head])], "q")
        key_t = add("Reshape", [key_t, constant("kt_shape", [-1, head, total])], "kt")
        value = add("Reshape", [value, constant("v_shape", [-1, total, head])], "v")
    key = add("Transpose", [key_t], "k", perm=[0, 2, 1])
    bias = ""
    if pattern.biases:
        bias = pattern.biases[0]
        for i, term in enumerate(pattern.biases[1:]):
            bias = add("Add", [bias, term], f"bias_sum{i}")
        if pattern.bias_shape is not None:
            bias = add("Reshape", [bias, pattern.bias_shape], "bias_scores")
        bias = add("Reshape", [bias, constant("bias_shape", [-1, 1, seq, total])], "bias")
    attended = f"{name}_out" if pattern.rank == 4 else pattern.output
    nodes.append(helper.make_node("MultiHeadAttention", [query, key, value, "", "", bias], [attended], name=name,
                                  domain=MS_DOMAIN, num_heads=1, scale=float(pattern.scale)))
    if pattern.rank == 4:  # back to (B, H, S, d): the shape of the original Q
        shape = add("Shape", [pattern.query], "q4_shape")
        nodes.append(helper.make_node("Reshape", [attended, shape], [pattern.output], name=f"{name}_o"))
    return nodes
