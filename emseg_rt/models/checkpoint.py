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
- MAE: {"model": {...timm names...}}; the pretraining decoder (`decoder_*`, `mask_token`) and a
  fine-tuning classifier (`head.*`, `fc_norm.*`) are not part of the encoder and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from emseg_rt.errors import EmsegError

MAE_SKIPPED_PREFIXES = ("decoder_", "mask_token", "head.", "fc_norm.")
SAM_TOP_LEVEL = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


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


def read_state_dict(path: str | Path) -> Mapping[str, object]:
    """torch.load(path, weights_only=True) with one-line errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if path.is_dir():
        raise EmsegError(f"checkpoint {path}: is a directory, not a checkpoint file (a model package goes to "
                         "--model)")
    if not path.is_file():
        raise EmsegError(f"checkpoint {path}: no such file")
    try:
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


def _map_mae(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    if not _has_module(model, "encoders.mae_encoder."):
        raise EmsegError(f"checkpoint {path} is an MAE checkpoint, but this model has no MAE encoder")
    mapped = {
        "encoders.mae_encoder.vit." + key: value
        for key, value in state.items()
        if not key.startswith(MAE_SKIPPED_PREFIXES)
    }
    return mapped, ["encoders.mae_encoder.vit."]


def _own_groups(state: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    parts = ["head."] + [f"encoders.{name}." for name in getattr(model, "encoders", {})]
    return [part for part in parts if any(key.startswith(part) for key in state)]


def normalise_checkpoint(
    raw: Mapping[str, object], model: nn.Module, path: Path
) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Recognise a checkpoint's format → (format name, state dict in pipeline names, complete groups)."""
    if "model" in raw and isinstance(raw["model"], Mapping):
        return ("mae", *_map_mae(_tensor_items(raw["model"], path), model, path))
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    state = _tensor_items(raw, path)
    if state and all(key.startswith(SAM_TOP_LEVEL) or key in ("pixel_mean", "pixel_std") for key in state):
        return ("sam", *_map_sam(state, model))
    if "patch_embed.proj.weight" in state:  # a bare timm/MAE encoder state dict
        return ("mae", *_map_mae(state, model, path))
    return "emseg-rt", state, _own_groups(state, model)


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load one checkpoint file into `model` in place; returns the format ('sam', 'mae', 'emseg-rt')."""
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
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
