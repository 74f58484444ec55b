"""Checkpoint loading: official SAM files, MAE checkpoints, and our own pipeline or part state dicts.

Every file is read with `torch.load(weights_only=True)`. Keys are mapped to the pipeline's names, and
each module a checkpoint provides must be provided whole: a missing, unexpected or mis-shaped key is
an `EmsegError` naming the file and the keys.

Formats, recognised by their keys:
- ours: `torch.save(model.state_dict())` of a whole pipeline, or any whole part of it (`head.*`,
  `encoders.sam_encoder.*`, ...); optionally wrapped as {"state_dict": ...}. Round-trips exactly.
- SAM: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*` (sam_vit_h_4b8939.pth and friends).
  A pipeline without SAM's prompt encoder takes only its `pe_layer`; one without a SAM encoder skips
  `image_encoder.*`.
- SAM2 / SAM2.1: {"model": {...}} with `image_encoder.trunk.*`, `image_encoder.neck.*`, `sam_mask_decoder.*`,
  `sam_prompt_encoder.*` (sam2.1_hiera_large.pt and friends); the video-only modules (memory attention and
  encoder, object pointers) are skipped; the decoder's `conv_s0/conv_s1` and `no_mem_embed` go to our encoder.
- MAE: {"model": {...timm names...}}; the pretraining decoder (`decoder_*`, `mask_token`) and a
  fine-tuning classifier (`head.*`, `fc_norm.*`) are not part of the encoder and are skipped.
- DINO (into a model with a DINO encoder, prompt-das-*): the released backbone file
  (dino_deitsmall8_pretrain.pth: `cls_token`, `pos_embed`, `patch_embed.*`, `blocks.*`, `norm.*`) or a DINO
  training checkpoint's {"teacher": {...backbone.*...}}. The class token is dropped (the encoder has none)
  and the position table is resampled to the window's grid (28² at 224² → 48² at 384²: timm's
  `resample_abs_pos_embed`, bicubic).
- SAMDA (`samda_checkpoint.py`, checked first): nnU-Net's checkpoint_final.pth (`network_weights`) → the U-Net;
  SAM / MedSAM / MobileSAM files into samda-* → its frozen encoder (prompt encoder and mask decoder skipped).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.models.samda_checkpoint import samda_format
from emseg_rt.models.timm_parts import resample_abs_pos_embed

MAE_SKIPPED_PREFIXES = ("decoder_", "mask_token", "head.", "fc_norm.")
SAM_TOP_LEVEL = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
SAM2_MARKERS = ("image_encoder.trunk.", "sam_mask_decoder.", "sam_prompt_encoder.")
SAM2_VIDEO_ONLY = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                   "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial")
SAM2_RULES = (  # official SAM2 key prefix → our pipeline's (first match wins)
    ("sam_mask_decoder.conv_s0.", "encoders.sam2_encoder.conv_s0."),
    ("sam_mask_decoder.conv_s1.", "encoders.sam2_encoder.conv_s1."),
    ("no_mem_embed", "encoders.sam2_encoder.no_mem_embed"),
    ("image_encoder.", "encoders.sam2_encoder.image_encoder."),
    ("sam_mask_decoder.", "head.mask_decoder."),
    ("sam_prompt_encoder.", "head.prompt_encoder."),
)


def load_error_detail(exc: BaseException) -> str:
    """One short line saying why torch.load(weights_only=True) refused a file. torch's own message opens
    with advice to retry with weights_only=False (which would run whatever the file holds); the line that
    names the refused object is the useful one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Weights only load failed"):
        named = next((line for line in lines[1:] if "global" in line.lower() or "unsupported" in line.lower()), None)
        return (named or "not a weights-only file")[:200]
    return lines[0][:200]


def numpy_data_globals() -> list[object]:
    """numpy scalars, dtypes and arrays, allowed as plain data under weights_only: nnU-Net's checkpoint_final.pth
    logs its metrics as numpy values next to `network_weights`. Nothing here can run code."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdg"]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def read_state_dict(path: str | Path) -> Mapping[str, object]:
    """torch.load(path, weights_only=True) with one-line errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if path.is_dir():
        raise EmsegError(f"checkpoint {path}: is a directory, not a checkpoint file (a model package goes to "
                         "--model)")
    if not path.is_file():
        raise EmsegError(f"checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals(numpy_data_globals()):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file, reported in one line
        raise EmsegError(f"checkpoint {path}: not a readable weights-only torch checkpoint "
                         f"({load_error_detail(exc)})") from None
    if not isinstance(loaded, Mapping):
        raise EmsegError(f"checkpoint {path}: expected a state dict, found {type(loaded).__name__}")
    return loaded


def _tensor_items(state: Mapping[str, object], path: Path) -> dict[str, torch.Tensor]:
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise EmsegError(f"checkpoint {path}: entries that are not tensors: {_preview(bad)}")
    return dict(state)  # type: ignore[arg-type]


def _preview(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _has_module(model: nn.Module, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in model.state_dict())


def _map_sam(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official SAM keys → pipeline keys, and the target prefixes that must come out complete."""
    mapped: dict[str, torch.Tensor] = {}
    has_sam_encoder = _has_module(model, "encoders.sam_encoder.")
    has_prompt_encoder = _has_module(model, "head.prompt_encoder.")
    rules = [("mask_decoder.", "head.mask_decoder.decoder.")]
    if has_sam_encoder:
        rules.append(("image_encoder.", "encoders.sam_encoder.image_encoder."))
    if has_prompt_encoder:
        rules.append(("prompt_encoder.", "head.prompt_encoder."))
    else:
        rules.append(("prompt_encoder.pe_layer.", "head.pe_layer."))
    unexpected: list[str] = []
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        for source, target in rules:
            if key.startswith(source):
                mapped[target + key[len(source) :]] = value
                break
        else:
            skippable = (key.startswith("image_encoder.") and not has_sam_encoder) or key.startswith("prompt_encoder.")
            if not skippable:
                unexpected.append(key)
    if unexpected:
        raise EmsegError(f"unexpected keys for a SAM checkpoint: {_preview(unexpected)}")
    groups = [target for source, target in rules if any(k.startswith(source) for k in state)]
    return mapped, groups


def _sam2_key(key: str) -> str | None:
    """An official SAM2 key → ours (None when no rule applies). SAM2's two-way transformer names its MLP
    `mlp.layers.0/1`; segment_anything's (which we build) `mlp.lin1/lin2`."""
    for source, target in SAM2_RULES:
        if key.startswith(source):
            key = target + key[len(source):]
            return re.sub(r"(\.transformer\.layers\.\d+\.mlp\.)layers\.([01])\.",
                          lambda m: f"{m.group(1)}lin{int(m.group(2)) + 1}.", key)
    return None


def _map_sam2(state: dict[str, torch.Tensor], model: nn.Module, path: Path
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official SAM2 keys → pipeline keys, and the target prefixes that must come out complete."""
    if not _has_module(model, "encoders.sam2_encoder."):
        raise EmsegError(f"checkpoint {path} is a SAM2 checkpoint, but {_model_name(model)} has no SAM2 encoder "
                         "(use a vanilla-sam2-* model)")
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        target = _sam2_key(key)
        if target is not None:
            mapped[target] = value
        elif not key.startswith(SAM2_VIDEO_ONLY):
            unexpected.append(key)
    if unexpected:
        raise EmsegError(f"checkpoint {path}: unexpected keys for a SAM2 checkpoint: {_preview(unexpected)}")
    groups = {"image_encoder.": "encoders.sam2_encoder.", "sam_mask_decoder.": "head.mask_decoder.",
              "sam_prompt_encoder.": "head.prompt_encoder."}
    return mapped, [target for source, target in groups.items() if any(k.startswith(source) for k in state)]


def _map_mae(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    if not _has_module(model, "encoders.mae_encoder."):
        raise EmsegError(f"checkpoint {path} is an MAE checkpoint, but this model has no MAE encoder")
    mapped = {
        "encoders.mae_encoder.vit." + key: value
        for key, value in state.items()
        if not key.startswith(MAE_SKIPPED_PREFIXES)
    }
    return mapped, ["encoders.mae_encoder.vit."]


DINO_ENCODER = "encoders.dino_encoder.vit."


def _dino_backbone(raw: Mapping[str, object], path: Path) -> dict[str, torch.Tensor] | None:
    """The backbone state dict of a DINO file (bare, or a training checkpoint's teacher), or None."""
    if "teacher" in raw and isinstance(raw["teacher"], Mapping):
        state = _tensor_items(raw["teacher"], path)
        backbone = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.startswith("backbone."):
                backbone[key.removeprefix("backbone.")] = value
        return backbone or None
    state = raw if all(isinstance(v, torch.Tensor) for v in raw.values()) else None
    if state is not None and "cls_token" in state and "patch_embed.proj.weight" in state:
        return _tensor_items(state, path)
    return None


def _map_dino(state: dict[str, torch.Tensor], model: nn.Module, path: Path
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """DINO backbone keys → the DINO encoder's timm ViT, class token dropped, position table resampled."""
    expected = model.state_dict()
    target = expected[DINO_ENCODER + "pos_embed"]  # (1, g², C): no class token
    mapped = {DINO_ENCODER + k: v for k, v in state.items() if k not in ("cls_token", "pos_embed")
              and not k.startswith("head.")}
    if "pos_embed" not in state:
        raise EmsegError(f"checkpoint {path}: a DINO backbone without pos_embed")
    table = state["pos_embed"]
    prefix = 1 if "cls_token" in state else 0
    old = int(round((table.shape[1] - prefix) ** 0.5))
    if old * old + prefix != table.shape[1] or table.shape[2] != target.shape[2]:
        raise EmsegError(f"checkpoint {path}: DINO pos_embed {tuple(table.shape)} does not fit the encoder's "
                         f"{tuple(target.shape)}")
    new = int(round(target.shape[1] ** 0.5))
    mapped[DINO_ENCODER + "pos_embed"] = resample_abs_pos_embed(
        table.float(), [new, new], [old, old], num_prefix_tokens=prefix)[:, prefix:].to(table.dtype)
    return mapped, [DINO_ENCODER]


def _own_groups(state: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    parts = ["head."] + [f"encoders.{name}." for name in getattr(model, "encoders", {})]
    return [part for part in parts if any(key.startswith(part) for key in state)]


def normalise_checkpoint(
    raw: Mapping[str, object], model: nn.Module, path: Path
) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Recognise a checkpoint's format → (format name, state dict in pipeline names, complete groups)."""
    samda = samda_format(raw, model, path)  # nnU-Net files; SAM / MedSAM / MobileSAM files into samda-*
    if samda is not None:
        return samda
    if _has_module(model, DINO_ENCODER):
        dino = _dino_backbone(raw, path)
        if dino is not None:
            return ("dino", *_map_dino(dino, model, path))
    if "model" in raw and isinstance(raw["model"], Mapping):
        if any(str(key).startswith(SAM2_MARKERS) for key in raw["model"]):
            return ("sam2", *_map_sam2(_tensor_items(raw["model"], path), model, path))
        return ("mae", *_map_mae(_tensor_items(raw["model"], path), model, path))
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    state = _tensor_items(raw, path)
    if any(key.startswith(SAM2_MARKERS) for key in state):  # a bare SAM2 state dict
        return ("sam2", *_map_sam2(state, model, path))
    if state and all(key.startswith(SAM_TOP_LEVEL) or key in ("pixel_mean", "pixel_std") for key in state):
        return ("sam", *_map_sam(state, model))
    if "patch_embed.proj.weight" in state:  # a bare timm/MAE encoder state dict
        return ("mae", *_map_mae(state, model, path))
    return "emseg-rt", state, _own_groups(state, model)


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load one checkpoint file into `model` in place; returns the format ('sam', 'sam2', 'mae', 'emseg-rt')."""
    return apply_checkpoint(model, read_state_dict(path), Path(path))


def apply_checkpoint(model: nn.Module, raw: Mapping[str, object], source: Path) -> str:
    """Load an already-read checkpoint mapping into `model`; `source` names it in error messages."""
    fmt, state, groups = normalise_checkpoint(raw, model, source)
    name = _model_name(model)
    for prefix, module in model.named_modules():
        if hasattr(module, "resize_for"):  # e.g. a clustering head takes K from its fitted checkpoint
            module.resize_for(state, f"{prefix}." if prefix else "")
    expected = model.state_dict()
    unexpected = [key for key in state if key not in expected]
    if unexpected or not state:
        detail = f"unexpected keys {_preview(unexpected)}" if unexpected else "it holds no weights"
        raise EmsegError(f"checkpoint {source} ({fmt}) does not fit {name}: {detail}")
    missing = [key for key in expected if any(key.startswith(g) for g in groups) and key not in state]
    if missing:
        raise EmsegError(f"checkpoint {source} ({fmt}) is partial for {name}: missing keys {_preview(missing)}")
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if value.shape != expected[key].shape
    ]
    if mismatched:
        raise EmsegError(f"checkpoint {source} ({fmt}) has wrong shapes for {name}: {_preview(mismatched, 3)}")
    model.load_state_dict(state, strict=False)
    return fmt


def load_checkpoints(model: nn.Module, paths: Iterable[str | Path]) -> list[str]:
    """Load several checkpoints in order (e.g. SAM's file, then an MAE file, then trained heads)."""
    return [load_checkpoint(model, path) for path in paths]


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "name", type(model).__name__)


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): the weights' identity.

    Keys resume markers (`runtime`) and the export cache (`export.cache`): equal digests mean equal numbers.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
