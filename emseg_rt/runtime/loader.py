"""From `--model` / `--backend` / `--device` / `--precision` to one loaded Backend.

--model is a registry name (built in PyTorch; exported to ONNX on the fly, once, into a cache, for ONNX
Runtime) or a model package directory from `emseg-rt export` (ONNX graphs, maybe engines). Without it, the
embedded default model. `auto` picks: a TensorRT engine for this GPU, else ONNX Runtime, else torch.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import Backend

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
FALLBACK_DEFAULT_MODEL = "scsam-tiny"


def _default_model_module() -> Any | None:
    try:
        return importlib.import_module("emseg_rt.models.default_model")
    except ImportError:
        return None


def default_model_name() -> str:
    """The embedded default model's name (`emseg_rt.models.default_model`), else 'scsam-tiny'."""
    module = _default_model_module()
    if module is not None and hasattr(module, "default_model_name"):
        return module.default_model_name()
    return FALLBACK_DEFAULT_MODEL


def cache_dir() -> Path:
    """Where on-the-fly ONNX exports live: $EMSEG_RT_CACHE, else ~/.cache/emseg-rt."""
    return Path(os.environ.get("EMSEG_RT_CACHE") or Path.home() / ".cache" / "emseg-rt")


def build_torch_model(name: str, checkpoints: Sequence[str | Path] = ()):
    """A registry model in eval mode: `checkpoints` loaded in order when given (see
    emseg_rt.models.checkpoint); else shipped weights for the default model, else a fixed-seed init.

    The seed makes every process build the same weights (resume and backend parity depend on it).
    """
    import torch

    from emseg_rt.models import get_config

    module = _default_model_module()
    if not checkpoints and module is not None and name == default_model_name() and hasattr(module, "load_default_model"):
        return module.load_default_model().eval()
    config = get_config(name)  # EmsegError for unknown names
    if config.family == "vanilla-sam":
        raise EmsegError(f"{name} needs point/box prompts per tile; `segment` runs prompt-free models "
                         "(scsam-*, sam-star-*, mae-star-*, surgicalsam-*)")
    from emseg_rt.models import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(name, checkpoint=list(checkpoints) or None)
    return model.eval()


def _is_package_path(model: str) -> bool:
    path = Path(model)
    return path.is_dir() or os.sep in model or model.endswith((".json", "/")) or path.exists()


def export_full_onnx(model, name: str, digest: str) -> Path:
    """Export the whole per-slice graph to ONNX once per (model, weights) and cache it; returns the .onnx path.

    Uses `emseg_rt.export.onnx_export.export_package` when present (a full package with manifest), else a
    direct `torch.onnx.export` of the pipeline (dynamo, opset 18, dynamic batch).
    """
    import torch

    target = cache_dir() / "onnx" / f"{name}-{digest[:16]}"
    onnx_path = target / "full.onnx"
    if onnx_path.is_file():
        return onnx_path
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        example = torch.randint(0, 256, (2, 1, model.config.tile, model.config.tile), dtype=torch.uint8)
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(model, (example,), str(staging / "full.onnx"), dynamo=True, opset_version=18,
                          input_names=["tiles"], output_names=["logits", "labels"],
                          dynamic_shapes=({0: batch},), verbose=False, external_data=False)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; use theirs
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return onnx_path


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _load_from_package(path: Path, backend: str, device: str, precision: str) -> Backend:
    from emseg_rt.export.package import load_package  # verifies every sha256; EmsegError on problems

    package = load_package(path)
    if package.family == "vanilla-sam":
        raise EmsegError(f"{path} is a vanilla-sam package, which needs per-tile prompts; `segment` runs prompt-free models")
    if backend == "torch":
        raise EmsegError(f"{path} is a model package (ONNX graphs); use --backend onnxruntime or tensorrt, "
                         "or pass a registry name to run it in PyTorch")
    if precision != package.precision:
        raise EmsegError(f"{path} was exported with --precision {package.precision}; pass --precision "
                         f"{package.precision} or export again")
    if backend in ("tensorrt", "auto") and (backend == "tensorrt" or (_cuda_available() and package.engines)):
        from emseg_rt.runtime.backends.tensorrt_backend import TensorRTBackend

        try:
            return TensorRTBackend.from_package(package, device=device)
        except EmsegError:
            if backend == "tensorrt":
                raise
    from emseg_rt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    full = package.components.get("full")
    if full is None:
        raise EmsegError(f"{path} has no 'full' component (the whole per-slice graph); export it again")
    outputs = tuple(o.name for o in full.outputs)
    logits_name = "logits" if "logits" in outputs else outputs[0]
    labels_name = "labels" if "labels" in outputs else outputs[-1]
    package_id = package.manifest.get("files", {}).get(full.file, "")
    return OnnxRuntimeBackend(full.path, package.tile, package.classes, device=device, input_name=full.inputs[0].name,
                              output_names=(logits_name, labels_name), model_id=f"{package.name}:{package_id}",
                              precision=package.precision, batch_max=package.batch_max)


def load_backend(model: str | None = None, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                 checkpoints: Sequence[str | Path] = ()) -> Backend:
    """Resolve --model/--checkpoint/--backend/--device/--precision to a loaded Backend (EmsegError for bad
    choices). `checkpoints` apply to registry names; a package already holds its weights."""
    if backend not in BACKENDS:
        raise EmsegError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EmsegError(f"--device {device!r} must be cpu or cuda")
    if precision not in ("fp32", "fp16"):
        raise EmsegError(f"--precision {precision!r} must be fp32 or fp16")
    model = model or default_model_name()
    if _is_package_path(model):
        path = Path(model)
        if not path.exists():
            raise EmsegError(f"model package {path} does not exist")
        if checkpoints:
            raise EmsegError(f"--checkpoint applies to registry models; the package {path} already holds its "
                             "weights (pass --checkpoint to `emseg-rt export` instead)")
        return _load_from_package(path, backend, device, precision)

    if backend == "tensorrt":
        raise EmsegError(f"--backend tensorrt needs a model package with engines: run `emseg-rt export {model}` "
                         "and `emseg-rt build`, then pass the package directory as --model")
    torch_model = build_torch_model(model, checkpoints)
    from emseg_rt.runtime.backends.torch_backend import TorchBackend, state_dict_digest

    digest = state_dict_digest(torch_model)
    use_ort = backend == "onnxruntime" or (backend == "auto" and precision == "fp32" and not device.startswith("cuda"))
    if backend == "auto" and device.startswith("cuda"):
        from emseg_rt.runtime.backends.onnxruntime_backend import providers_for

        try:
            use_ort = len(providers_for(device)) > 1 and precision == "fp32"
        except EmsegError:
            use_ort = False
    if use_ort:
        if precision == "fp16":
            raise EmsegError("--precision fp16 with onnxruntime needs an fp16 package: run `emseg-rt export "
                             f"{model} --precision fp16` and pass the package directory as --model")
        from emseg_rt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        onnx_path = export_full_onnx(torch_model, model, digest)
        config = torch_model.config
        return OnnxRuntimeBackend(onnx_path, config.tile, tuple(config.classes), device=device,
                                  model_id=f"{model}:{digest}", precision=precision)
    return TorchBackend(torch_model, device=device, precision=precision, model_id=f"{model}:{digest}")
