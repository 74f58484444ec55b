"""Static facts about registered models: parameters and FLOPs per slice, counted on the meta device."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from emseg_rt.models.registry import REGISTRY, get_config
from emseg_rt.tiling import plan_tiles


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


SLICE = 1024  # the papers' slice side


def tiles_per_slice(config) -> int:
    """Tiles a slice costs: 1 where the tile is the model's slice (the SAM families, whose tiny sizes just
    take smaller slices); for MAESTER/HiS4MAE the FOVs of one 1024² slice at the runtime's default halo
    (tile // 8): 324 at FOV 80 (expand stride 60)."""
    if config.fov_encoder is None:
        return 1
    return plan_tiles((SLICE, SLICE), config.tile, config.tile // 8).num_tiles


def model_info(name: str) -> ModelInfo:
    """Build `name` on the meta device (no weights allocated) and count its parameters and the FLOPs
    of one slice (torch's FlopCounterMode on one tile: 2 per multiply-add of matmuls and convs, times the
    tiles of a slice: `tiles_per_slice`)."""
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
        gflops_per_slice=round(counter.get_total_flops() * tiles_per_slice(config) / 1e9, 3),
        tile=config.tile,
        classes=list(config.classes),
    )
