"""PyTorch models: encoders, FAFM, class prompt encoder, decoders, pipelines and the registry.

Knows nothing of ONNX, engines, zarr or the CLI. Importing the package loads no torch: the configs (`configs.py`)
and the named models (`catalogue.py`) are plain dataclasses, which `emseg-rt models` lists at once; the names
below that build models load their module, and torch, when first used (a PEP 562 module `__getattr__`).
"""

from importlib import import_module
from typing import Any

from emseg_rt.models.configs import PipelineConfig

# Name → the submodule that defines it, imported on first access (each imports torch).
_HEAVY = {"REGISTRY": "registry", "build": "registry", "get_config": "registry", "list_models": "registry",
          "build_model": "reproducible"}

__all__ = ["PipelineConfig", "REGISTRY", "build", "build_model", "get_config", "list_models"]


def __getattr__(name: str) -> Any:
    if name not in _HEAVY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HEAVY[name]}"), name)
