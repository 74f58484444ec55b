"""Label agreement of a bench backend with fp32 PyTorch, on phantom tiles (issue 30.5).

Every bench record says how far its labels are from the fp32 reference, so one table compares speed and what
it costs: `bench` loads each backend as `segment` does and runs it on the same phantom tiles as the reference,
`torch-eager-fp32` (the research code's attention in fp32). The tiles and the numbers are
`runtime.agreement`'s, which `--precision auto` uses too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emseg_rt.export.parity import label_threshold
from emseg_rt.models import build_model
from emseg_rt.runtime.agreement import AGREEMENT_SEED, Reference, agreement_tiles, agreement_with, reference_from
from emseg_rt.runtime.loader import load_backend

__all__ = ["Reference", "agreement_with", "reference_output"]


def reference_output(model_name: str, device: str, checkpoints: Sequence[str] = ()) -> Reference:
    """Run `torch-eager-fp32` (`load_backend(..., 'torch', precision='fp32', fast=False)`) with the same
    `checkpoints` as the backends compared on the agreement tiles: 2 tiles up to 256², else 1."""
    model = build_model(model_name, checkpoints)
    count = 2 if model.config.tile <= 256 else 1
    tiles = agreement_tiles(model.config.tile, count)
    example = model.example_inputs(batch=count, seed=AGREEMENT_SEED)
    prompts = {name: example[name].numpy() for name in model.prompt_names}
    backend = load_backend(model_name, "torch", device, "fp32", checkpoints, fast=False)
    try:
        with torch.no_grad():
            return reference_from(backend, tiles, prompts, label_threshold(model))
    finally:
        backend.close()
