"""The embedded default model: a small ScSAM trained on synthetic phantoms, shipped as package data.

`scsam-phantom` has ScSAM's architecture (SAM ViT + MAE ViT → FAFM → cosine class prompt encoder →
SAM mask decoder) at a size that trains and runs on a CPU. Patch size 8 (not SAM's 16) keeps small
granules: the decoder's logits come out at 4× the embedding grid, i.e. half the tile resolution.
How it was trained: `scripts/train_default.py`; scores and limits: `models/scsam-phantom.md`.
"""

from __future__ import annotations

from importlib import resources

from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.catalogue import DEFAULT_MODEL  # its config: catalogue.PHANTOM_CONFIG
from emseg_rt.models.registry import build

WEIGHTS_FILE = "scsam-phantom.pt"


def default_model_name() -> str:
    """Name of the model `segment` and `demo` use when no --model is given."""
    return DEFAULT_MODEL


def default_weights_path():
    """Path (importlib.resources Traversable) of the shipped weights file."""
    return resources.files("emseg_rt.weights").joinpath(WEIGHTS_FILE)


def load_default_model() -> nn.Module:
    """Build `scsam-phantom` with its shipped weights, in eval mode."""
    weights = default_weights_path()
    if not weights.is_file():
        raise EmsegError(
            f"the default model's weights ({WEIGHTS_FILE}) are missing from emseg_rt/weights; reinstall emseg-rt"
        )
    with resources.as_file(weights) as path:
        model = build(DEFAULT_MODEL, checkpoint=path)
    return model.eval()
