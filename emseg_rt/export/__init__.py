"""torch → ONNX export (fp32 and mixed fp16), parity checks, and the package cache.

Public API (stable; the runtime, the benchmark, training and the CLI use these names):
    export_package(model_name_or_module, out_dir, precision="fp32", checkpoints=(), batch_max=8) -> Path
    trace_graphs(model_name_or_module, work_dir, checkpoints=(), batch_max=8) -> TracedGraphs
    write_package(traced, out_dir, precision="fp32") -> Path   (export_package = trace_graphs + write_package)
    cached_package(model, precision="fp32", batch_max=8) -> Path   (exported once per model + weights)
    load_package(path) -> ModelPackage                         (re-exported from emseg_rt.package)

Modules, one job each:
    graphs.py   the package's graphs as torch modules (encoders, head, full)
    onnx_io.py  torch's dynamo exporter, saving with external data, a graph's I/O spec
    trace.py    a pipeline → FP32 ONNX of every component (the slow step)
    fp16.py     FP32 graph → mixed FP16 graph with FP32 islands
    parity.py   ONNX Runtime against PyTorch, and the targets a package must meet
    writer.py   a trace → a package directory (graphs, parity, manifest, atomic install)
    cache.py    packages exported once per (model, weights, precision, batch_max) under cache_root()
"""

from emseg_rt.export.cache import cache_root, cached_package
from emseg_rt.export.trace import TracedGraphs, trace_graphs
from emseg_rt.export.writer import export_package, write_package
from emseg_rt.package import ComponentSpec, EngineRecord, ModelPackage, TensorSpec, load_package

__all__ = [
    "ComponentSpec", "EngineRecord", "ModelPackage", "TensorSpec", "TracedGraphs", "cache_root", "cached_package",
    "export_package", "load_package", "trace_graphs", "write_package",
]
