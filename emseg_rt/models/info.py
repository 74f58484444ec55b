"""Static facts about registered models: parameters and FLOPs per slice, counted on the meta device."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from emseg_rt.models.registry import REGISTRY, get_config


@dataclass(frozen=True)
class ModelInfo:
    """One row of `emseg-rt models`."""

    name: str
    family: str
    params: int
    gflops_per_slice: float
    tile: int
    classes: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def model_info(name: str) -> ModelInfo:
    """Build `name` on the meta device (no weights allocated) and count its parameters and the FLOPs
    of one forward pass on one tile (torch's FlopCounterMode: 2 per multiply-add of matmuls and convs)."""
    config = get_config(name)
    with torch.device("meta"):
        model = REGISTRY.build_from_config(config).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    inputs = model.example_inputs(batch=1, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return ModelInfo(
        name=name,
        family=config.family,
        params=params,
        gflops_per_slice=round(counter.get_total_flops() / 1e9, 3),
        tile=config.tile,
        classes=list(config.classes),
    )
