"""PyTorch models: encoders, FAFM, class prompt encoder, decoders, pipelines and the registry.

Knows nothing of ONNX, engines, zarr or the CLI.
"""

from emseg_rt.models.configs import PipelineConfig
from emseg_rt.models.registry import REGISTRY, build, get_config, list_models
from emseg_rt.models.reproducible import build_model

__all__ = ["PipelineConfig", "REGISTRY", "build", "build_model", "get_config", "list_models"]
from emseg_rt.models import default_model  # noqa: E402,F401  (registers scsam-phantom, the embedded default)
