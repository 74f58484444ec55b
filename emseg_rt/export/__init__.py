"""torch → ONNX export (fp32 and mixed fp16), parity checks and the model package (manifest.json).

Public API (stable; the runtime and the CLI use these names):
    export_package(model_name_or_module, out_dir, precision="fp32", checkpoints=(), batch_max=8) -> Path
    trace_graphs(model_name_or_module, work_dir, checkpoints=(), batch_max=8) -> TracedGraphs
    write_package(traced, out_dir, precision="fp32") -> Path   (export_package = trace_graphs + write_package)
    load_package(path) -> ModelPackage
"""

from emseg_rt.export.package import ComponentSpec, EngineRecord, ModelPackage, TensorSpec, load_package

__all__ = [
    "ComponentSpec", "EngineRecord", "ModelPackage", "TensorSpec", "export_package", "load_package", "trace_graphs",
    "write_package",
]

_LAZY = ("export_package", "trace_graphs", "write_package", "TracedGraphs")


def __getattr__(name: str):
    if name in _LAZY:  # imported lazily: they pull in torch's exporter
        from emseg_rt.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(name)
