"""torch → ONNX export (fp32 and mixed fp16), parity checks and the model package (manifest.json).

Public API (stable; the runtime and the CLI use these names):
    export_package(model_name_or_module, out_dir, precision="fp32", checkpoints=(), batch_max=8) -> Path
    load_package(path) -> ModelPackage
"""

from emseg_rt.export.package import ComponentSpec, EngineRecord, ModelPackage, TensorSpec, load_package

__all__ = ["ComponentSpec", "EngineRecord", "ModelPackage", "TensorSpec", "export_package", "load_package"]


def __getattr__(name: str):
    if name == "export_package":  # imported lazily: it pulls in torch's exporter
        from emseg_rt.export.onnx_export import export_package

        return export_package
    raise AttributeError(name)
