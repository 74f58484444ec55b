"""Tracing: a pipeline (registry name or built module) → the FP32 ONNX graph of every package component.

Tracing (torch.export, the ONNX translation and onnxscript's optimiser) is nearly all of an export's
time, so it is a step of its own: `trace_graphs` writes `<component>.onnx` files into a work directory,
and `write_package` (writer.py) turns one trace into fp32 and fp16 packages without tracing again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.export.graphs import ComponentGraph, component_graphs
from emseg_rt.export.onnx_io import export_onnx
from emseg_rt.models.checkpoint import load_checkpoints
from emseg_rt.models.reproducible import build_model

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress callback: says nothing."""


@dataclass
class TracedGraphs:
    """The FP32 ONNX graph of every component of `model`, traced once by `trace_graphs`.

    `write_package` turns it into a package at either precision (an fp16 package is converted from these
    FP32 graphs, so fp32 and fp16 packages of one model need one trace). The files under `directory`
    belong to this object: delete them with `cleanup()` (or the directory) when done.
    """

    model: nn.Module
    directory: Path
    batch_max: int
    graphs: list[ComponentGraph]
    seconds: dict[str, float]  # tracing time per component
    checkpoints: tuple[Path, ...] = ()
    external_data: dict[str, list[str]] = field(default_factory=dict)  # per component, files beside its .onnx

    def path(self, component: str) -> Path:
        return self.directory / f"{component}.onnx"

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _resolve_model(model_name_or_module: str | nn.Module, checkpoints: Sequence[str | Path]) -> nn.Module:
    """The pipeline to export, frozen in eval mode: `build_model(name)` or the given module (checkpoints
    loaded into it in order). EmsegError when it is not a segmentation pipeline."""
    if isinstance(model_name_or_module, str):
        model = build_model(model_name_or_module, checkpoints)
    else:
        model = model_name_or_module
        if checkpoints:
            load_checkpoints(model, checkpoints)
    if not hasattr(model, "encoders") or not hasattr(model, "head") or not hasattr(model, "config"):
        raise EmsegError(f"{type(model).__name__} is not a segmentation pipeline (emseg_rt.models.build(...))")
    return model.eval().requires_grad_(False)


def select_graphs(graphs: list[ComponentGraph], components: Sequence[str] | None) -> list[ComponentGraph]:
    """The graphs named in `components` (all when None); EmsegError naming the known ones otherwise."""
    if components is None:
        return graphs
    known = [g.name for g in graphs]
    unknown = [c for c in components if c not in known]
    if unknown or not components:
        raise EmsegError(f"components {', '.join(unknown) or '(none)'}: choose from {', '.join(known)}")
    return [g for g in graphs if g.name in components]


def trace_graphs(
    model_name_or_module: str | nn.Module,
    work_dir: str | Path,
    checkpoints: Sequence[str | Path] = (),
    batch_max: int = 8,
    progress: Progress | None = None,
    components: Sequence[str] | None = None,
) -> TracedGraphs:
    """Trace every component graph of a pipeline to FP32 ONNX files `<component>.onnx` in `work_dir`
    (created if needed; files of the same names there are replaced).

    model_name_or_module: a registry name (built by `build_model`) or a built `SegmentationPipeline`.
    batch_max: largest batch the graphs accept (the dynamic dimension's upper bound).
    components: the component graphs to trace (e.g. ('full',)); None: every one.
    """
    if batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1")
    model = _resolve_model(model_name_or_module, checkpoints)
    return trace_model(model, Path(work_dir), batch_max, tuple(Path(p) for p in checkpoints), progress or _quiet,
                       components)


def trace_model(
    model: nn.Module, work_dir: Path, batch_max: int, checkpoints: tuple[Path, ...] = (), say: Progress = _quiet,
    components: Sequence[str] | None = None,
) -> TracedGraphs:
    """`trace_graphs` for a resolved pipeline (`_resolve_model`); `checkpoints` are only recorded."""
    work_dir.mkdir(parents=True, exist_ok=True)
    graphs = select_graphs(component_graphs(model), components)
    # Example inputs for tracing: batch 2, so that the exporter cannot specialise the batch to 1.
    example = model.example_inputs(batch=2, seed=0)
    with torch.no_grad():
        example_embeddings = model.embed(example["tiles"])
    example_values = {**example, **example_embeddings}
    seconds: dict[str, float] = {}
    external: dict[str, list[str]] = {}
    for graph in graphs:
        say(f"exporting {graph.name} (fp32 trace)")
        tick = time.perf_counter()
        with torch.no_grad():
            external[graph.name] = export_onnx(
                graph.module, [example_values[n] for n in graph.input_names], graph.input_names,
                graph.output_names, work_dir / f"{graph.name}.onnx", batch_max,
            )
        seconds[graph.name] = round(time.perf_counter() - tick, 3)
    return TracedGraphs(model, work_dir, batch_max, graphs, seconds, checkpoints, external)
