"""The registry of named models and the one `build(name)` call (segment-anything's build_sam, timm's way).

Each family registers a builder (config → nn.Module); each named model is a config of some family, defined once
in `catalogue.py` (torch-free, so `emseg-rt models` lists them without loading torch). Later families (HiS4MAE,
Prompt-DAS, SAMDA) add a builder and their configs without touching the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.catalogue import CONFIGS, FAMILY_DESCRIPTIONS
from emseg_rt.models.checkpoint import load_checkpoints
from emseg_rt.models.configs import PipelineConfig
from emseg_rt.models.pipeline import build_pipeline

FamilyBuilder = Callable[[PipelineConfig], nn.Module]


class ModelRegistry:
    """Family builders and named configs. The module-level `REGISTRY` is the one the tool uses."""

    def __init__(self) -> None:
        self._builders: dict[str, FamilyBuilder] = {}
        self._configs: dict[str, PipelineConfig] = {}

    def register_family(self, family: str, builder: FamilyBuilder) -> None:
        self._builders[family] = builder

    def register(self, config: PipelineConfig) -> None:
        if config.family not in self._builders:
            raise ValueError(f"no builder for family {config.family!r}")
        self._configs[config.name] = config

    def names(self) -> list[str]:
        return list(self._configs)

    def config(self, name: str, **overrides: Any) -> PipelineConfig:
        if name not in self._configs:
            raise EmsegError(f"unknown model {name!r}; `emseg-rt models` lists the available ones")
        config = self._configs[name]
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(PipelineConfig)})
            if unknown:
                raise EmsegError(f"unknown override(s) for {name}: {', '.join(unknown)}")
            config = dataclasses.replace(config, **overrides)
        return config

    def build_from_config(self, config: PipelineConfig) -> nn.Module:
        return self._builders[config.family](config)


def _default_registry() -> ModelRegistry:
    """Every model of the catalogue, each family built by `build_pipeline`."""
    registry = ModelRegistry()
    for family in FAMILY_DESCRIPTIONS:
        registry.register_family(family, build_pipeline)
    for config in CONFIGS.values():
        registry.register(config)
    return registry


REGISTRY = _default_registry()


def list_models() -> list[str]:
    """Names of every registered model, e.g. 'scsam-vit-h', 'sam-star-tiny'."""
    return REGISTRY.names()


def get_config(name: str, **overrides: Any) -> PipelineConfig:
    """The named config with top-level fields replaced by `overrides` (e.g. classes=(...))."""
    return REGISTRY.config(name, **overrides)


def build(name: str, checkpoint: str | Path | Sequence[str | Path] | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, optionally loading one or more checkpoints (see `checkpoint.py`).

    The same call builds the tiny test size and the paper size; wrap it in `torch.device("meta")` to
    build a paper-size model without allocating its weights.
    """
    model = REGISTRY.build_from_config(get_config(name, **overrides))
    if checkpoint is not None:
        paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
        load_checkpoints(model, paths)
    return model
