"""From `--model` / `--backend` / `--device` / `--precision` to one loaded Backend: the one loader that
`segment`, `segment_labels`, the Dask workers and `emseg-rt bench` share.

--model is a registry name (built in PyTorch; for ONNX Runtime exported once, through the export layer,
into a cached model package keyed by model + weights + precision), a model package directory from
`emseg-rt export` (ONNX graphs, maybe engines), or a bioimage.io package (.zip) from `emseg-rt export
--bioimageio`, run as the package directory `export.bioimageio.open_bioimageio` rebuilds from it. Without it,
the embedded default model.

`auto` picks, and says in one line what it picked and why it skipped anything:
a package → its TensorRT engine for this GPU, else ONNX Runtime; a registry name on the CPU in fp32, or in
int8 or fp32-fused anywhere (packages only ONNX Runtime runs: export/int8.py, export/fused.py) → ONNX Runtime
(the cached package's full graph), otherwise → the torch fast path.

`--precision auto` (the default) is a package's own precision; with a registry name, `--backend auto` and the
CPU, on a CPU with native bf16, the faster of ONNX Runtime fp32 and torch bf16 where bf16 keeps ≥ 99.5 % of
fp32's labels, measured once and cached (runtime/cpu_choice.py); fp32 everywhere else. A precision asked for
by name is never changed: `auto` never trades fp32 for an emulated, slower bf16.

`--precision bf16` on a CPU without native bf16 (AVX-512 BF16 or AMX: torch emulates it, slower than fp32)
runs, with one line through `say` (a RuntimeWarning without one) saying so and what to use instead.

TensorRT runs a package's engine. With `build_engine=True` (what `emseg-rt bench` asks) a registry name is
exported into the package cache and its engine for this GPU built there on first use, as `emseg-rt export` +
`emseg-rt build --target current` would, and then loaded as that package: the backend `segment --model
<package> --backend tensorrt` gets.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from emseg_rt.engines import QUANTISED_MIN_TARGET, build_engines, current_target, engine_flavour_for
from emseg_rt.errors import EmsegError
from emseg_rt.export.bioimageio import is_bioimageio_zip, open_bioimageio
from emseg_rt.export.cache import cached_package
from emseg_rt.models import build_model
from emseg_rt.models.checkpoint import state_dict_digest
from emseg_rt.models.default_model import default_model_name
from emseg_rt.package import FULL, ModelPackage, load_package
from emseg_rt.runtime.backends.base import BACKENDS, ORT_PRECISIONS, PACKAGE_PRECISIONS, PRECISIONS, Backend
from emseg_rt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from emseg_rt.runtime.backends.tensorrt_backend import TensorRTBackend
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.cpu_choice import BF16, FP32, fastest_cpu_path
from emseg_rt.runtime.devices import cpu_has_bf16, resolve_device
from emseg_rt.weights.fetch import resolve_checkpoints

Say = Callable[[str], None]

def is_package_path(model: str) -> bool:
    """True when --model names a directory (a model package) rather than a registry name."""
    path = Path(model)
    return path.is_dir() or os.sep in model or model.endswith((".json", "/")) or path.exists()


def _check_choices(backend: str, device: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise EmsegError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EmsegError(f"--device {device!r} must be cpu or cuda")
    if precision not in PRECISIONS:
        raise EmsegError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")


EMULATED_BF16 = ("--precision bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo), so "
                 "torch emulates it, slower than fp32 (1.8x the default backend's time per tile on such a CPU: "
                 "benchmarks/results/bench_vs_segment.md); --precision fp32 (the default) is faster here")


def emulated_bf16(device: str, precision: str) -> bool:
    """Whether this asks for bf16 on a CPU that only emulates it (`cpu_has_bf16`: AVX-512 BF16 or AMX)."""
    return precision == "bf16" and device == "cpu" and not cpu_has_bf16()


def warn_emulated_bf16(device: str, precision: str, say: Say | None) -> None:
    """`EMULATED_BF16` through `say` (one line on the CLI's stderr), or as a RuntimeWarning without one, when
    `emulated_bf16`; the run goes on (bf16 results may be what the user wants, only slower)."""
    if not emulated_bf16(device, precision):
        return
    if say is not None:
        say(f"warning: {EMULATED_BF16}")
    else:
        warnings.warn(EMULATED_BF16, RuntimeWarning, stacklevel=3)


def load_backend(model: str | None = None, backend: str = "auto", device: str = "cpu", precision: str = "auto",
                 checkpoints: Sequence[str | Path] = (), *, fast: bool = True, batch_max: int = 8, batch: int = 4,
                 build_engine: bool = False, say: Say | None = None) -> Backend:
    """Resolve --model/--checkpoint/--backend/--device/--precision to a loaded Backend.

    fast:         the torch backend's fast path (SDPA attention, compile on CUDA); False runs the reference
                  (research-code) attention. Ignored by the other backends.
    batch_max:    the largest batch of the package a registry model is exported to (onnxruntime, tensorrt).
    batch:        tiles per call of the run: what `--precision auto` times its CPU candidates at.
    build_engine: with a registry name and backend 'tensorrt': export the cached package and build its engine
                  for this GPU when it has none, then load that package (without it a registry name is
                  refused for tensorrt: `segment` runs engines that `emseg-rt build` made).
    say:          receives one line saying which backend `auto` chose, and why it skipped others.
    EmsegError for bad choices; `checkpoints` apply to registry names (a package holds its weights).
    """
    device = resolve_device(device, say or (lambda message: None))
    _check_choices(backend, device, precision)
    warn_emulated_bf16(device, precision, say)
    say = say or (lambda message: None)
    model = model or default_model_name()
    if is_package_path(model):
        path = Path(model)
        if not path.exists():
            raise EmsegError(f"model package {path} does not exist")
        if checkpoints:
            raise EmsegError(f"--checkpoint applies to registry models; the package {path} already holds its "
                             "weights (pass --checkpoint to `emseg-rt export` instead)")
        if is_bioimageio_zip(path):
            return _from_bioimageio(path, backend, device, precision, say)
        return _from_package(path, backend, device, precision, say)
    if precision == "auto" and backend == "auto" and device == "cpu" and cpu_has_bf16():
        return _fastest_on_cpu(model, checkpoints, fast, batch_max, batch, say)
    precision = "fp32" if precision == "auto" else precision
    if precision in QUANTISED_MIN_TARGET:  # engines for RTX GPUs, built from an exported Q/DQ package
        target = f"sm{QUANTISED_MIN_TARGET[precision]}"
        raise EmsegError(f"--precision {precision} runs an {precision} model package: `emseg-rt export {model} "
                         f"--precision {precision} --out PKG` (then `emseg-rt build PKG --target {target}`), and pass "
                         "--model PKG")
    if backend == "tensorrt" and precision in ORT_PRECISIONS:
        raise EmsegError(f"--precision {precision}: {_ORT_ONLY.format(precision=precision)}")
    if backend == "tensorrt":
        if not build_engine:
            raise EmsegError(f"--backend tensorrt needs a model package with engines: run `emseg-rt export "
                             f"{model}` and `emseg-rt build`, then pass the package directory as --model")
        _check_package_precision(backend, precision)
        _tensorrt_device(device)
        package_dir = _package_with_engine(build_model(model, checkpoints), precision, batch_max)
        return _from_package(package_dir, backend, device, precision, say)
    return _from_registry(model, backend, device, precision, checkpoints, fast, batch_max, say)


def _from_package(path: Path, backend: str, device: str, precision: str, say: Say) -> Backend:
    package = load_package(path)  # verifies every sha256; EmsegError on problems
    if backend == "torch":
        raise EmsegError(f"{path} is a model package (ONNX graphs); use --backend onnxruntime or tensorrt, "
                         "or pass a registry name to run it in PyTorch")
    if precision not in ("auto", package.precision):
        raise EmsegError(f"{path} was exported with --precision {package.precision}; pass --precision "
                         f"{package.precision} or export again")
    if backend == "tensorrt":
        return _tensorrt(package, device)
    skipped = ""
    if backend == "auto" and package.precision in ORT_PRECISIONS:
        skipped = f"; tensorrt skipped: {_ORT_ONLY.format(precision=package.precision)}"
    elif backend == "auto":
        try:
            chosen = _tensorrt(package, device)
            say(f"backend: tensorrt (auto: engine {chosen.spec.details['target']} for this GPU)")
            return chosen
        except EmsegError as exc:
            skipped = f"; tensorrt skipped: {exc}"
    chosen = _onnxruntime(package, device)
    if backend == "auto":
        say(f"backend: onnxruntime (auto: {chosen.providers[0]}{skipped})")
    return chosen


def _from_bioimageio(path: Path, backend: str, device: str, precision: str, say: Say) -> Backend:
    """A bioimage.io zip, run as the model package directory rebuilt from it (export/bioimageio.py); its
    refusals name the zip the user gave."""
    package_dir = open_bioimageio(path)
    try:
        return _from_package(package_dir, backend, device, precision, say)
    except EmsegError as exc:
        raise EmsegError(str(exc).replace(str(package_dir), str(path))) from None


def _tensorrt_device(device: str) -> None:
    if not device.startswith("cuda"):
        raise EmsegError("--backend tensorrt runs on a GPU; pass --device cuda")


_ORT_ONLY = "a {precision} package runs in ONNX Runtime only (--backend onnxruntime)"


def _tensorrt(package: ModelPackage, device: str) -> Backend:
    if package.precision in ORT_PRECISIONS:
        raise EmsegError(f"{package.root}: {_ORT_ONLY.format(precision=package.precision)}")
    _tensorrt_device(device)
    return TensorRTBackend.from_package(package)


def _package_with_engine(model: nn.Module, precision: str, batch_max: int) -> Path:
    """The cached package of `model` (`cached_package`), with the full graph's engine for this GPU built into it
    when it has none (the flavour `engines.engine_flavour_for` picks; EmsegError when none fits this GPU)."""
    package_dir = cached_package(model, precision, batch_max=batch_max)
    target = current_target()
    if target not in load_package(package_dir).engines.get(FULL, {}):
        flavour, reason = engine_flavour_for(target)
        if flavour is None:
            raise EmsegError(reason)
        build_engines(package_dir, targets=[target], flavour=flavour, components=[FULL])
    return package_dir


def _onnxruntime(package: ModelPackage, device: str) -> Backend:
    full = package.components.get(FULL)
    if full is None:
        raise EmsegError(f"{package.root} has no 'full' component (the whole per-slice graph); export it again")
    outputs = tuple(o.name for o in full.outputs)
    logits_name = "logits" if "logits" in outputs else outputs[0]
    labels_name = "labels" if "labels" in outputs else outputs[-1]
    package_id = package.manifest.get("files", {}).get(full.file, "")
    threshold = float(package.manifest.get("parity", {}).get("label_threshold", 0.0) or 0.0)
    return OnnxRuntimeBackend(full.path, package.tile, package.classes, device=device, input_name=full.inputs[0].name,
                              output_names=(logits_name, labels_name), model_id=f"{package.name}:{package_id}",
                              precision=package.precision, batch_max=package.batch_max, threshold=threshold)


def _check_package_precision(backend: str, precision: str) -> None:
    if precision not in PACKAGE_PRECISIONS:
        raise EmsegError(f"--precision {precision} runs only on the torch backend; {backend} runs "
                         f"{' or '.join(PACKAGE_PRECISIONS)} packages")


def _from_registry(name: str, backend: str, device: str, precision: str, checkpoints: Sequence[str | Path],
                   fast: bool, batch_max: int, say: Say) -> Backend:
    # official weights names (`emseg-rt weights list`) → verified files, for library calls as for the CLI
    torch_model = build_model(name, resolve_checkpoints(checkpoints, say=say, progress=False))
    if backend == "auto":
        backend, why = _auto_for_registry(device, precision)
        say(f"backend: {backend} (auto: {why})")
    if backend == "onnxruntime":
        _check_package_precision(backend, precision)
        return _onnxruntime(load_package(cached_package(torch_model, precision, batch_max=batch_max)), device)
    return TorchBackend(torch_model, device=device, precision=precision, fast=fast,
                        model_id=f"{name}:{state_dict_digest(torch_model)}")


def _fastest_on_cpu(name: str, checkpoints: Sequence[str | Path], fast: bool, batch_max: int, batch: int,
                    say: Say) -> Backend:
    """`--precision auto --backend auto` on a CPU with native bf16: ONNX Runtime fp32 or torch bf16, whichever
    `cpu_choice.fastest_cpu_path` measures faster with the labels kept."""
    torch_model = build_model(name, resolve_checkpoints(checkpoints, say=say, progress=False))
    model_id = f"{name}:{state_dict_digest(torch_model)}"
    loaders = {  # fp32 first: its export traces the fp32 model before the bf16 backend casts it in place
        FP32: lambda: _onnxruntime(load_package(cached_package(torch_model, "fp32", batch_max=batch_max)), "cpu"),
        BF16: lambda: TorchBackend(torch_model, device="cpu", precision="bf16", fast=fast, model_id=model_id),
    }
    engine, why = fastest_cpu_path(torch_model, model_id, min(batch, batch_max), loaders)
    say(f"backend: {engine.name} {engine.spec.precision} (auto: {why})")
    return engine


def _auto_for_registry(device: str, precision: str) -> tuple[str, str]:
    """(backend, reason) for `auto` with a registry model."""
    if precision in ORT_PRECISIONS:
        return "onnxruntime", f"{precision}: the exported package's graph, which only ONNX Runtime runs"
    if device.startswith("cuda"):
        return "torch", "CUDA GPU; TensorRT needs an exported package with engines (emseg-rt export + build)"
    if precision == "fp32":
        return "onnxruntime", "CPU, fp32: the exported package's graph runs fastest here"
    return "torch", f"CPU, {precision}: autocast in PyTorch"
