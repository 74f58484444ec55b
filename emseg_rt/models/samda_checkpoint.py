"""Checkpoint formats of SAMDA's parts, recognised by `checkpoint.normalise_checkpoint` before the others.

- nnU-Net: `checkpoint_final.pth` / `checkpoint_best.pth`, a dict with `network_weights` (PlainConvUNet keys,
  optionally prefixed `_orig_mod.` by torch.compile or `module.` by DDP) → `head.unet.*`. The first transposed
  convolution of the decoder takes E8 ⊕ projection in SAMDA: nnU-Net's (F_8, F_7, 2, 2) weight fills its first
  F_8 input rows and the projector's rows start at zero, so the loaded SAMDA computes exactly the nnU-Net.
- SAM / MedSAM (`image_encoder.pos_embed`, ...): the ViT image encoder → `encoders.sam_encoder.image_encoder.*`;
  SAMDA has no prompt encoder or mask decoder, so those keys are skipped.
- MobileSAM (`image_encoder.patch_embed.seq.0.c.weight`, ...): TinyViT + neck → the MobileSAM encoder
  (`samda_tiny_vit.mobile_sam_keys`); prompt encoder and mask decoder skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.samda_tiny_vit import mobile_sam_keys

NNUNET_KEY = "network_weights"
BOTTLENECK_TRANSPCONV = "decoder.transpconvs.0.weight"
MOBILE_SAM_MARKER = "image_encoder.patch_embed.seq.0.c.weight"
SAM_VIT_MARKER = "image_encoder.pos_embed"
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
GENERIC_PREFIX = "encoders.sam_encoder.image_encoder."
Mapped = tuple[str, dict[str, torch.Tensor], list[str]]


def is_samda(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "samda", None) is not None


def _model_name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "name", type(model).__name__)


def _tensors(state: Mapping[str, object], path: Path, what: str) -> dict[str, torch.Tensor]:
    bad = sorted(key for key, value in state.items() if not isinstance(value, torch.Tensor))
    if bad:
        raise EmsegError(f"checkpoint {path} ({what}): entries that are not tensors: {', '.join(bad[:4])}")
    return dict(state)  # type: ignore[arg-type]


def nnunet_to_samda(network: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """nnU-Net `network_weights` → SAMDA `head.unet.*`, the bottleneck transposed conv widened with zero rows."""
    state: dict[str, torch.Tensor] = {}
    for key, value in network.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.removeprefix(prefix)
        state[key] = value
    for key in [k for k in state if k.startswith("encoder.")]:  # the decoder holds the encoder too
        state.setdefault("decoder." + key, state[key])
    expected = model.state_dict().get("head.unet." + BOTTLENECK_TRANSPCONV)
    weight = state.get(BOTTLENECK_TRANSPCONV)
    if expected is not None and weight is not None and weight.ndim == 4 and weight.shape[1:] == expected.shape[1:]:
        extra = expected.shape[0] - weight.shape[0]
        if extra < 0:
            raise EmsegError(f"checkpoint {path} (nnU-Net): its bottleneck has {weight.shape[0]} channels, more than "
                             f"{_model_name(model)}'s U-Net ({expected.shape[0]} with the projection)")
        state[BOTTLENECK_TRANSPCONV] = torch.cat([weight, weight.new_zeros((extra, *weight.shape[1:]))])
    return {"head.unet." + key: value for key, value in state.items()}


def samda_to_nnunet(model: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse: a SAMDA pipeline's U-Net as nnU-Net `network_weights` (the projector's rows dropped)."""
    unet = model.head.unet
    deepest = model.config.samda.unet.features[-1]
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    state[BOTTLENECK_TRANSPCONV] = state[BOTTLENECK_TRANSPCONV][:deepest].clone()
    return state


def _sam_family(state: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> Mapped:
    """Official SAM / MedSAM / MobileSAM file → the SAMDA pipeline's generic encoder."""
    mobile_file = MOBILE_SAM_MARKER in state
    mobile_model = model.config.samda.tiny_vit is not None
    name = _model_name(model)
    if mobile_file != mobile_model:
        file_kind = "a MobileSAM (TinyViT)" if mobile_file else "a SAM / MedSAM ViT"
        wanted = "samda-mobilesam" if mobile_file else "samda-vit-b (or a SAM ViT size)"
        raise EmsegError(f"checkpoint {path} is {file_kind} checkpoint, which does not fit {name}'s encoder; "
                         f"use {wanted}")
    encoder = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    if not encoder:
        raise EmsegError(f"checkpoint {path} (SAM) holds no image_encoder.* weights, the only part SAMDA uses")
    if mobile_file:
        return "mobile-sam", mobile_sam_keys(encoder, GENERIC_PREFIX), [GENERIC_PREFIX]
    mapped = {GENERIC_PREFIX + k.removeprefix("image_encoder."): v for k, v in encoder.items()}
    return "sam", mapped, [GENERIC_PREFIX]


def samda_format(raw: Mapping[str, object], model: nn.Module, path: Path) -> Mapped | None:
    """(format, state in pipeline names, groups that must be complete) for nnU-Net files (any model: a clear
    error unless SAMDA) and for SAM / MedSAM / MobileSAM files loaded into SAMDA; None for everything else."""
    if NNUNET_KEY in raw and isinstance(raw[NNUNET_KEY], Mapping):
        if not is_samda(model):
            raise EmsegError(f"checkpoint {path} is an nnU-Net checkpoint; only samda-* models have an nnU-Net "
                             f"U-Net, not {_model_name(model)}")
        network = _tensors(raw[NNUNET_KEY], path, "nnU-Net network_weights")
        return "nnunet", nnunet_to_samda(network, model, path), ["head.unet."]
    keys = [key for key in raw if key not in ("pixel_mean", "pixel_std")]
    official = bool(keys) and all(str(key).startswith(SAM_PARTS) for key in keys)
    if not official:
        return None
    if not is_samda(model):
        if MOBILE_SAM_MARKER in raw:
            raise EmsegError(f"checkpoint {path} is a MobileSAM checkpoint; only samda-mobilesam takes it, not "
                             f"{_model_name(model)}")
        return None
    return _sam_family(_tensors({k: raw[k] for k in keys}, path, "SAM"), model, path)
