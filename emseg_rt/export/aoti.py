"""AOTInductor: the package's full graph compiled ahead of time into a `.pt2` that C++ hosts run through
libtorch (cpp/, `torch::inductor::AOTIModelPackageLoader`), with its parity against PyTorch.

`emseg-rt export ... --aoti` calls `write_aoti` from the package writer: the same `FullGraph` module the
ONNX export traces (export/graphs.py), through `torch.export` with the same dynamic batch (1..batch_max),
then `torch._inductor.aoti_compile_and_package`. Parity is measured like the ONNX parity (export/parity.py):
the same random inputs (seed, batch), the same comparison, the same fp32 targets, recorded in the manifest:

    "aoti": {"full": {"file": "full.pt2", "device": "cpu", "torch": "2.15.0+cu132", "batch_max": 8,
                      "precision": "fp32", "inputs": [...], "outputs": [...], "compile_seconds": 41.2,
                      "parity": {"passed", "reference", "runtime", "targets", "label_threshold", "batch",
                                 "seed", "seconds", "components": {"full": {"outputs": {...}, "passed"}}}}}

The compatibility rule (`select_aoti`, ported word for word to cpp/src/aoti_rule.cpp): a `.pt2` runs only
on the device kind it was compiled for, and only with exactly the torch version that compiled it (its
kernels call libtorch's AOTI shim of that version).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.export.graphs import ComponentGraph
from emseg_rt.export.parity import ParityTargets, compare_outputs, label_threshold
from emseg_rt.package import BATCH_DIM, FULL, ModelPackage

AOTI_DEVICES = ("cpu", "cuda")


def aoti_file(component: str = FULL) -> str:
    """The package-relative file of a component's AOTInductor package: `<component>.pt2`."""
    return f"{component}.pt2"


def check_aoti_options(model: nn.Module, precision: str, device: str) -> None:
    """EmsegError, before anything slow, when `--aoti` cannot apply: fp16 packages, prompted models, an
    unknown device or a CUDA device torch cannot see."""
    if precision != "fp32":
        raise EmsegError("--aoti compiles the FP32 model; export it with --precision fp32")
    if tuple(getattr(model, "prompt_names", ())):
        raise EmsegError(f"--aoti: {model.config.name} takes prompts; the C/C++ runtime runs prompt-free models")
    if device not in AOTI_DEVICES:
        raise EmsegError(f"--aoti-device {device!r}: choose one of {', '.join(AOTI_DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise EmsegError("--aoti-device cuda: torch sees no CUDA GPU here; compile for cpu or export on a GPU machine")


def compile_aoti(graph: ComponentGraph, example_tiles: torch.Tensor, path: Path, batch_max: int,
                 device: str = "cpu") -> Path:
    """torch.export `graph` (tiles (B, 1, T, T) uint8 → its outputs, B dynamic in 1..batch_max) and compile
    it with AOTInductor into the `.pt2` at `path`."""
    module = graph.module.eval().to(device)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=max(batch_max, 2))
    with torch.no_grad():
        program = torch.export.export(module, (example_tiles.to(device),), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    module.to("cpu")
    return path


def aoti_parity(model: nn.Module, path: Path, output_names: tuple[str, ...], seed: int, batch: int,
                device: str = "cpu") -> dict[str, Any]:
    """Run the `.pt2` at `path` on `model.example_inputs(batch, seed)` and compare it with the PyTorch FP32
    model, as export/parity.py does for ONNX (same inputs, `compare_outputs`, fp32 targets).

    returns the record {"passed", "reference", "runtime", "targets", "label_threshold", "batch", "seed",
    "seconds", "components": {"full": {"outputs": ..., "passed"}}}.
    """
    targets = ParityTargets.for_precision("fp32")
    inputs = model.example_inputs(batch=batch, seed=seed)
    with torch.no_grad():
        reference = model(inputs["tiles"])
    tick = time.perf_counter()
    runner = torch._inductor.aoti_load_package(str(path))
    with torch.no_grad():
        got = runner(inputs["tiles"].to(device))
    seconds = time.perf_counter() - tick
    expected = {name: reference[name].cpu().numpy() for name in output_names}
    candidate = {name: np.asarray(tensor.cpu().numpy()) for name, tensor in zip(output_names, got)}
    threshold = label_threshold(model)
    result = compare_outputs(expected, candidate, targets, threshold=threshold)
    return {
        "passed": result["passed"],
        "reference": "PyTorch fp32 eager (CPU)",
        "runtime": f"AOTInductor ({device})",
        "targets": targets.to_dict(),
        "label_threshold": threshold,
        "batch": batch,
        "seed": seed,
        "seconds": round(seconds, 3),
        "components": {FULL: result},
    }


def write_aoti(staging: Path, model: nn.Module, graph: ComponentGraph, inputs: list[dict[str, Any]],
               outputs: list[dict[str, Any]], batch_max: int, seed: int, batch: int, device: str = "cpu"
               ) -> dict[str, Any]:
    """Compile `graph` (the package's full graph) into `staging/full.pt2` and measure its parity.

    inputs / outputs: the component's manifest I/O records (the .pt2 has the same ones).
    returns the manifest's "aoti" record for the component (see the module docstring).
    """
    tick = time.perf_counter()
    example = model.example_inputs(batch=2, seed=0)["tiles"]  # batch 2, as the ONNX trace: not specialised to 1
    path = compile_aoti(graph, example, staging / aoti_file(graph.name), batch_max, device)
    compile_seconds = time.perf_counter() - tick
    parity = aoti_parity(model, path, graph.output_names, seed, batch, device)
    return {
        "file": path.name, "device": device, "torch": torch.__version__, "batch_max": batch_max,
        "precision": "fp32", "inputs": inputs, "outputs": outputs, "compile_seconds": round(compile_seconds, 3),
        "parity": parity,
    }


def select_aoti(package: ModelPackage, device: str, torch_version: str | None = None,
                component: str = FULL) -> dict[str, Any]:
    """The manifest's AOTInductor record of `component` that may run on `device` ('cpu', 'cuda', 'cuda:N')
    with torch `torch_version` (default: this torch), or an EmsegError saying what to re-export.

    The rule C++ hosts apply too (cpp/src/aoti_rule.cpp, same messages): the device kind it was compiled
    for, and exactly the torch version that compiled it."""
    installed = torch.__version__ if torch_version is None else torch_version
    record = package.manifest.get("aoti", {}).get(component)
    if record is None:
        raise EmsegError(f"package {package.root}: no AOTInductor package for {component}; re-export it with "
                         f"`emseg-rt export {package.name} --out <dir> --aoti`")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if record["device"] != kind:
        raise EmsegError(f"{record['file']} was compiled by AOTInductor for {record['device']}, not {kind}; re-export "
                         f"it with `emseg-rt export {package.name} --out <dir> --aoti --aoti-device {kind}`")
    if str(record["torch"]) != installed:
        raise EmsegError(f"{record['file']} was compiled with torch {record['torch']}, this runtime has torch "
                         f"{installed}; AOTInductor packages do not load across torch versions; re-export it with "
                         f"`emseg-rt export {package.name} --out <dir> --aoti`")
    return record
