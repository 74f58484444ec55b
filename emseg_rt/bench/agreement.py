"""Label agreement of a bench backend with fp32 PyTorch, on phantom tiles (issue 30.5).

Every bench record says how far its labels are from the fp32 reference, so one table compares speed and what
it costs: `bench` loads each backend as `segment` does and runs it on the same tiles of a synthetic FIB-SEM
phantom (`data.phantom`: EM-like tiles, what int8 calibrates on, rather than the uniform noise that the timings
run on) as the reference, `torch-eager-fp32` (the research code's attention in fp32).

The numbers are `export.parity.label_agreement`'s: raw agreement (all pixels) and decided agreement (pixels
whose reference margin exceeds the backend's largest logit error). With random weights (every registry model
but the default one) the class logits are nearly tied, so raw agreement measures the weights rather than the
backend (docs/export.md "Parity"); the decided number and its fraction say how much of it is ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.export.parity import label_agreement, label_threshold
from emseg_rt.models import build_model
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.loader import load_backend

AGREEMENT_SEED = 30  # the phantom the tiles are cut from (fixed: every run compares on the same tiles)


@dataclass(frozen=True)
class Reference:
    """fp32 PyTorch's output on the agreement tiles: tiles (N, 1, T, T) uint8, their prompts (prompted models),
    labels (N, T, T) and logits (N, K, T, T) float32, and the class merge's threshold."""

    tiles: np.ndarray
    prompts: dict[str, np.ndarray]
    labels: np.ndarray
    logits: np.ndarray
    threshold: float


def agreement_tiles(tile: int, count: int) -> np.ndarray:
    """`count` phantom planes of `tile` × `tile`: (count, 1, T, T) uint8."""
    planes = generate_phantom((max(count, 3), tile, tile), seed=AGREEMENT_SEED).image[:count]  # ≥ 3: its gradients
    return np.ascontiguousarray(planes[:, None])


def reference_output(model_name: str, device: str) -> Reference:
    """Run `torch-eager-fp32` (`load_backend(..., 'torch', precision='fp32', fast=False)`) on the agreement tiles:
    2 tiles up to 256², else 1."""
    model = build_model(model_name)
    count = 2 if model.config.tile <= 256 else 1
    tiles = agreement_tiles(model.config.tile, count)
    example = model.example_inputs(batch=count, seed=AGREEMENT_SEED)
    prompts = {name: example[name].numpy() for name in model.prompt_names}
    backend = load_backend(model_name, "torch", device, "fp32", fast=False)
    try:
        with torch.no_grad():
            out = backend.run(tiles, want_logits=True, prompts=prompts or None)
    finally:
        backend.close()
    return Reference(tiles, prompts, out["labels"], out["logits"], label_threshold(model))


def agreement_with(backend: Backend, reference: Reference) -> dict[str, float | None]:
    """`backend`'s labels on the reference tiles against the reference's: {'agreement', 'agreement_decided',
    'decided_fraction', 'tie_tolerance' (= the largest logit error), 'logits_rel_error'}."""
    out = backend.run(reference.tiles, want_logits=True, prompts=reference.prompts or None)
    logits = out["logits"].astype(np.float64)
    ref = reference.logits.astype(np.float64)
    error = float(np.abs(logits - ref).max()) if np.isfinite(logits).all() else float("inf")
    numbers = label_agreement(reference.labels, out["labels"], reference.logits, error, reference.threshold)
    norm = float(np.linalg.norm(ref))
    numbers["logits_rel_error"] = float(np.linalg.norm(logits - ref) / norm) if norm > 0 else None
    return numbers
