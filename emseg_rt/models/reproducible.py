"""Registry models with the same weights in every process (runtime, export cache, bench, training).

Resume markers, the package cache and backend parity all rely on two processes that build the same name
getting the same numbers: the embedded default model loads its shipped weights, any other model without
checkpoints draws its random init from one fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from emseg_rt.models.default_model import default_model_name, load_default_model
from emseg_rt.models.registry import build

REGISTRY_SEED = 0  # every process builds a registry model without weights from this seed: same numbers


def build_model(name: str, checkpoints: Sequence[str | Path] = ()) -> nn.Module:
    """A registry model in eval mode, the same numbers in every process.

    With `checkpoints`, they are loaded in order (emseg_rt.models.checkpoint). Without, the embedded
    default model gets its shipped weights and any other model a random init from torch seed
    `REGISTRY_SEED`, drawn in a forked RNG (the caller's random state is left alone).
    EmsegError for an unknown name or an unreadable checkpoint.
    """
    if not checkpoints and name == default_model_name():
        return load_default_model().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REGISTRY_SEED)
        model = build(name, checkpoint=list(checkpoints) or None)
    return model.eval()
