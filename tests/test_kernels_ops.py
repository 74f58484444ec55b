"""The Triton kernels as torch custom operators (registered beside each kernel; emseg_rt/kernels/dispatch.py):
a compiled function (torch.compile, fullgraph) holds them as single operators and gets the references' numbers;
exported graphs get the torch references. Run under the Triton interpreter on this CPU (no GPU here: correctness only, no timing)."""

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
from triton_helpers import run_interpreted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None

COMPILED_SCRIPT = """
import torch
torch.set_num_threads(1)
from emseg_rt.kernels import class_merge_labels, class_merge_reference, nearest_centroid
from emseg_rt.kernels import nearest_centroid_reference, rel_pos_attention, rel_pos_attention_reference

seen = []

def recording_backend(graph_module, example_inputs):
    seen.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
    return graph_module.forward

def kernels(low_res, tokens, centres, q, k, v, rel_h, rel_w):
    labels = class_merge_labels(low_res, 24, 0.0, torch.uint8, impl="triton")
    clusters = nearest_centroid(tokens, centres, (20, 20), impl="triton", labels_dtype=torch.int32)
    attention = rel_pos_attention(q, k, v, rel_h, rel_w, 0.25, impl="triton")
    return labels, clusters, attention

g = torch.Generator().manual_seed(0)
low_res = torch.randn(2, 3, 6, 6, generator=g)
tokens, centres = torch.randn(2, 8, 5, 5, generator=g), torch.randn(4, 8, generator=g)
qkv = torch.randn(1, 16, 3, 2, 16, generator=g).permute(2, 0, 3, 1, 4)
q, k, v = qkv.unbind(0)
rel_h, rel_w = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, 4, 4, generator=g)
compiled = torch.compile(kernels, backend=recording_backend, fullgraph=True)
labels, clusters, attention = compiled(low_res, tokens, centres, q, k, v, rel_h, rel_w)
assert any("emseg_rt.class_merge" in s for s in seen), seen
assert any("emseg_rt.nearest_centroid" in s for s in seen), seen
assert any("emseg_rt.rel_pos_attention" in s for s in seen), seen
assert torch.equal(labels, class_merge_reference(low_res, 24, 0.0, torch.uint8))
assert torch.equal(clusters, nearest_centroid_reference(tokens, centres, (20, 20), labels_dtype=torch.int32))
expected = rel_pos_attention_reference(q, k, v, rel_h, rel_w, 0.25)
assert float((attention - expected).abs().max()) < 1e-4
aot = torch.compile(kernels, backend="aot_eager", fullgraph=True)  # the fake implementations' shapes
for got, want in zip(aot(low_res, tokens, centres, q, k, v, rel_h, rel_w), (labels, clusters, attention)):
    assert got.shape == want.shape and got.dtype == want.dtype and got.stride() == want.stride()
print("ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'emseg-rt[kernels]', Linux only)")
def test_compiled_graphs_call_the_kernels_as_operators():
    assert run_interpreted(COMPILED_SCRIPT).stdout.strip().endswith("ok")


def test_export_traces_the_references_and_compile_the_kernels():
    """The rule `resolve_impl` applies: torch.export (AOTInductor packages), jit tracing and ONNX export count as
    tracing (standard ops in the exported graph, even where Triton runs); torch.compile does not (it calls the
    kernels as operators)."""
    module = importlib.import_module("emseg_rt.kernels.dispatch")

    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(module._tracing())
            return x + 1

    torch.export.export(Probe(), (torch.zeros(2),))
    assert seen and all(seen)
    seen.clear()
    torch.compile(Probe(), backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen == [False]


def test_the_auto_choice_traces_cleanly_under_compile():
    """`impl="auto"` decides while Dynamo traces: triton_available is a constant to it (no lru_cache warning,
    no graph break)."""
    import warnings

    module = importlib.import_module("emseg_rt.kernels.dispatch")

    def choose(x: torch.Tensor) -> torch.Tensor:
        return x + float(module.triton_available()) + float(module.resolve_impl("auto", x.device) == "torch")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = torch.compile(choose, backend="eager", fullgraph=True)(torch.zeros(2))
    assert torch.equal(got, torch.full((2,), float(module.triton_available()) + 1.0))
