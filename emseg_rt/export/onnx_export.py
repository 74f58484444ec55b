"""PyTorch pipeline → model package: ONNX graphs (fp32 or mixed fp16), measured parity, manifest.json.

`export_package("scsam-vit-b", "out/scsam-vit-b", precision="fp16")` writes, into a temporary sibling
directory that is renamed into place only when everything succeeded:

- one graph per encoder (`sam_encoder.onnx`, `mae_encoder.onnx`): tiles (batch, 1, T, T) uint8 →
  `<x>_embedding` (batch, C, G, G) float32;
- `head.onnx`: the embeddings (+ vanilla-sam's point prompts) → logits (batch, K, T, T) float32 and
  labels (batch, T, T) uint8;
- `full.onnx`: tiles (+ prompts) → logits and labels, preprocessing and class merge inside;
- `manifest.json` (schema in `package.py`).

Graphs come from torch's dynamo exporter (opset 18, LayerNormalization stays one node) with a dynamic
batch dimension named "batch" and every other dimension static. Weights go to `<file>.onnx.data` when a
graph would pass protobuf's 2 GB limit (SAM ViT-H). Parity is measured on freshly drawn inputs with ONNX
Runtime (CPU) against the PyTorch FP32 model; a package that misses the targets is not written unless
`allow_parity_failure`, and then its manifest says `"passed": false`.

Tracing is nearly all of the time, so it is a step of its own: `export_package` = `trace_graphs` (FP32
ONNX of every component) + `write_package` (fp32 copy or mixed-fp16 conversion, checker, parity, manifest,
atomic install). Fp32 and fp16 packages of one model can be written from one trace.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.export.fp16 import PROTOBUF_LIMIT, convert_to_mixed_fp16
from emseg_rt.export.package import (
    BATCH_DIM,
    FORMAT_VERSION,
    FULL,
    HEAD,
    MANIFEST_NAME,
    PACKAGE_FORMAT,
    sha256_file,
    write_manifest,
)
from emseg_rt.export.parity import ParityTargets, compare_outputs, run_onnx

OPSET = 18
PRECISIONS = ("fp32", "fp16")
EXTERNAL_DATA_THRESHOLD = 1_500_000_000  # bytes of weights; below protobuf's 2 GB with room for the graph
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ComponentGraph:
    """One graph to export: a module whose forward takes positional inputs named `input_names`."""

    name: str
    role: str  # "encoder", "head" or "full"
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class EncoderGraph(nn.Module):
    """tiles (B, 1, T, T) uint8 → embedding (B, C, G, G) float32."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.encoder(tiles)


class HeadGraph(nn.Module):
    """Positional embeddings (+ prompts) → logits (B, K, T, T) float32, labels (B, T, T) uint8."""

    def __init__(self, head: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.head = head
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(**dict(zip(self.input_names, inputs)))
        return out["logits"], out["labels"]


class FullGraph(nn.Module):
    """tiles (B, 1, T, T) uint8 (+ prompts) → logits (B, K, T, T) float32, labels (B, T, T) uint8."""

    def __init__(self, pipeline: nn.Module, prompt_names: Sequence[str]) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.prompt_names = tuple(prompt_names)

    def forward(self, tiles: torch.Tensor, *prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(tiles, **dict(zip(self.prompt_names, prompts)))
        return out["logits"], out["labels"]


def component_graphs(pipeline: nn.Module) -> list[ComponentGraph]:
    """The package's graphs for a `SegmentationPipeline`: each encoder, the head, then the full graph."""
    from emseg_rt.models.pipeline import embedding_name

    prompts = tuple(pipeline.prompt_names)
    graphs = [
        ComponentGraph(name, "encoder", EncoderGraph(encoder), ("tiles",), (embedding_name(name),))
        for name, encoder in pipeline.encoders.items()
    ]
    head_inputs = tuple(embedding_name(name) for name in pipeline.encoders) + prompts
    graphs.append(ComponentGraph(HEAD, "head", HeadGraph(pipeline.head, head_inputs), head_inputs, ("logits", "labels")))
    graphs.append(ComponentGraph(FULL, "full", FullGraph(pipeline, prompts), ("tiles", *prompts), ("logits", "labels")))
    return graphs


# ------------------------------------------------------------------------------------------------ export


def export_onnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
    batch_max: int,
) -> Path:
    """torch.onnx.export(dynamo=True, opset 18) with dim 0 of every input dynamic as "batch"; weights go to
    external data (`<path>.data`) when they pass EXTERNAL_DATA_THRESHOLD. Returns `path`."""
    batch = torch.export.Dim(BATCH_DIM, min=1, max=max(batch_max, 2))
    dynamic_shapes = _batch_dynamic_shapes(module, len(example_inputs), batch)
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    program = torch.onnx.export(
        module.eval(),
        tuple(example_inputs),
        dynamo=True,
        opset_version=OPSET,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=dynamic_shapes,
        verbose=False,
        report=False,
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_THRESHOLD)
    return path


def _batch_dynamic_shapes(module: nn.Module, count: int, batch: Any) -> dict[str, Any]:
    """dynamic_shapes keyed by forward's parameter names; a `*inputs` parameter gets a tuple."""
    import inspect

    shapes: dict[str, Any] = {}
    remaining = count
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if remaining:
                    shapes[parameter.name] = tuple({0: batch} for _ in range(remaining))
            remaining = 0
        elif remaining:
            shapes[parameter.name] = {0: batch}
            remaining -= 1
    return shapes


def save_onnx(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save `model`, with weights in `<name>.data` beside it when it would pass 2 GB. Returns the data files."""
    data_name = path.name + ".data"
    large = _proto_size(model) > EXTERNAL_DATA_THRESHOLD
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [data_name] if large else []


def _proto_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:
        return PROTOBUF_LIMIT + 1


def _np_dtype_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX file as manifest dicts {name, dtype, shape}; symbolic dims by name."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [dim.dim_param if dim.dim_param else int(dim.dim_value) for dim in tensor.shape.dim]
        return {"name": value.name, "dtype": _np_dtype_name(tensor.elem_type), "shape": shape}

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def toolchain_versions() -> dict[str, str | None]:
    """Versions of everything that shaped the package (recorded in the manifest)."""
    import importlib.metadata as md

    import emseg_rt

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "emseg_rt": emseg_rt.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": version("onnxruntime"),
        "onnxscript": version("onnxscript"),
        "onnxconverter_common": version("onnxconverter-common"),
        "tensorrt_rtx": version("tensorrt-rtx") or version("tensorrt_rtx"),
        "tensorrt": version("tensorrt"),
    }


def normalisation_record(config: Any) -> dict[str, Any]:
    """How each encoder turns uint8 intensities into its input (all inside the graph)."""
    record: dict[str, Any] = {"inside_graph": True}
    if config.sam_encoder is not None:
        record["sam_encoder"] = {
            "scale": 1.0, "mean": list(config.sam_encoder.pixel_mean), "std": list(config.sam_encoder.pixel_std),
            "channels": "grey repeated to RGB", "formula": "(x - mean) / std on the 0-255 scale",
        }
    if config.mae_encoder is not None:
        record["mae_encoder"] = {
            "scale": 1.0 / 255.0, "mean": config.mae_encoder.pixel_mean, "std": config.mae_encoder.pixel_std,
            "channels": "grey", "formula": "(x / 255 - mean) / std",
        }
    return record


# --------------------------------------------------------------------------------------------- package


def _resolve_model(model_name_or_module: str | nn.Module, checkpoints: Sequence[str | Path]) -> nn.Module:
    from emseg_rt.models import build
    from emseg_rt.models.checkpoint import load_checkpoints

    if isinstance(model_name_or_module, str):
        model = build(model_name_or_module, checkpoint=list(checkpoints) or None)
    else:
        model = model_name_or_module
        if checkpoints:
            load_checkpoints(model, checkpoints)
    if not hasattr(model, "encoders") or not hasattr(model, "head") or not hasattr(model, "config"):
        raise EmsegError(f"{type(model).__name__} is not a segmentation pipeline (emseg_rt.models.build(...))")
    return model.eval().requires_grad_(False)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check the destination early, and make the temporary sibling the package is written into."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EmsegError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise EmsegError(f"--out {out_dir}: directory is not empty; choose another or pass --overwrite to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        raise EmsegError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None


def _install(staging: Path, out_dir: Path) -> None:
    """Move the finished package into place (rename; an old package is removed only after success)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(4)}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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

    def path(self, component: str) -> Path:
        return self.directory / f"{component}.onnx"

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def trace_graphs(
    model_name_or_module: str | nn.Module,
    work_dir: str | Path,
    checkpoints: Sequence[str | Path] = (),
    batch_max: int = 8,
    progress: Progress | None = None,
) -> TracedGraphs:
    """Trace every component graph of a pipeline to FP32 ONNX files `<component>.onnx` in `work_dir`
    (created if needed; files of the same names there are replaced).

    This is the slow part of an export (torch.export + the ONNX translation and optimiser, per graph);
    `write_package` then converts, checks and measures without tracing again.
    """
    if batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1")
    model = _resolve_model(model_name_or_module, checkpoints)
    return _trace(model, Path(work_dir), batch_max, tuple(Path(p) for p in checkpoints), progress or (lambda m: None))


def _trace(
    model: nn.Module, work_dir: Path, batch_max: int, checkpoints: tuple[Path, ...], say: Progress
) -> TracedGraphs:
    work_dir.mkdir(parents=True, exist_ok=True)
    graphs = component_graphs(model)
    # Example inputs for tracing: batch 2, so that the exporter cannot specialise the batch to 1.
    example = model.example_inputs(batch=2, seed=0)
    with torch.no_grad():
        example_embeddings = model.embed(example["tiles"])
    example_values = {**example, **example_embeddings}
    seconds: dict[str, float] = {}
    for graph in graphs:
        say(f"exporting {graph.name} (fp32 trace)")
        tick = time.perf_counter()
        with torch.no_grad():
            export_onnx(graph.module, [example_values[n] for n in graph.input_names], graph.input_names,
                        graph.output_names, work_dir / f"{graph.name}.onnx", batch_max)
        seconds[graph.name] = round(time.perf_counter() - tick, 3)
    return TracedGraphs(model, work_dir, batch_max, graphs, seconds, checkpoints)


def export_package(
    model_name_or_module: str | nn.Module,
    out_dir: str | Path,
    precision: str = "fp32",
    checkpoints: Sequence[str | Path] = (),
    batch_max: int = 8,
    *,
    parity_batch: int | None = None,
    parity_seed: int | None = None,
    allow_parity_failure: bool = False,
    overwrite: bool = False,
    fp16_head: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Export a pipeline to a model package at `out_dir` and return its path.

    model_name_or_module: a registry name ('scsam-vit-b') or a built `SegmentationPipeline`.
    precision:     'fp32', or 'fp16' for a mixed graph (FP16 compute, FP32 islands, FP32/uint8 I/O).
    checkpoints:   loaded in order before export (see emseg_rt.models.checkpoint).
    batch_max:     largest batch the graphs (and later the engines' optimisation profile) accept.
    parity_batch:  batch of the parity inputs (default 2 for tiles ≤ 256, else 1).
    parity_seed:   seed of the parity inputs; drawn fresh (and recorded) when None.
    fp16_head:     with fp16, also run the head (FAFM, prompt encoder, decoder) in FP16. Off by default:
                   the encoders hold > 90 % of the FLOPs, and an FP16 head flips labels where class logits
                   are close (measured on the tiny models: 94.6 % label agreement vs 100 % with an FP32 head).
    Raises EmsegError for a bad name, checkpoint, precision, destination, or a parity miss.

    Equivalent to `trace_graphs` followed by `write_package`; use those two to write fp32 and fp16
    packages of one model from a single trace.
    """
    _check_options(precision, batch_max)
    out_dir = Path(out_dir)
    model = _resolve_model(model_name_or_module, checkpoints)
    scratch = _prepare_out_dir(out_dir, overwrite)  # checks the destination before the slow trace
    try:
        traced = _trace(model, scratch, batch_max, tuple(Path(p) for p in checkpoints),
                        progress or (lambda message: None))
        return write_package(traced, out_dir, precision, parity_batch=parity_batch, parity_seed=parity_seed,
                             allow_parity_failure=allow_parity_failure, overwrite=overwrite, fp16_head=fp16_head,
                             progress=progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_package(
    traced: TracedGraphs,
    out_dir: str | Path,
    precision: str = "fp32",
    *,
    parity_batch: int | None = None,
    parity_seed: int | None = None,
    allow_parity_failure: bool = False,
    overwrite: bool = False,
    fp16_head: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a package at `out_dir` from graphs traced by `trace_graphs` (which are left in place).

    Same options, parity check and atomic install as `export_package`.
    """
    say = progress or (lambda message: None)
    _check_options(precision, traced.batch_max)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    staging = _prepare_out_dir(out_dir, overwrite)
    try:
        _fill_package(traced, staging, precision, parity_batch, parity_seed, allow_parity_failure,
                      () if fp16_head else ("head",), say, started - sum(traced.seconds.values()))
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out_dir} ({traced.model.config.name}, {precision})")
    return out_dir


def _check_options(precision: str, batch_max: int) -> None:
    if precision not in PRECISIONS:
        raise EmsegError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1")


def _fill_package(
    traced: TracedGraphs,
    staging: Path,
    precision: str,
    parity_batch: int | None,
    parity_seed: int | None,
    allow_parity_failure: bool,
    fp32_modules: tuple[str, ...],
    say: Progress,
    started: float,
) -> None:
    """Write the graphs at `precision`, measure parity and write the manifest into `staging`."""
    manifest = _write_package(traced, staging, precision, parity_batch, parity_seed, allow_parity_failure, say,
                              fp32_modules)
    manifest["export_seconds"] = round(time.perf_counter() - started, 3)
    write_manifest(staging, manifest)


def _write_package(
    traced: TracedGraphs,
    staging: Path,
    precision: str,
    parity_batch: int | None,
    parity_seed: int | None,
    allow_parity_failure: bool,
    say: Progress,
    fp32_modules: tuple[str, ...] = ("head",),
) -> dict[str, Any]:
    model = traced.model
    config = model.config
    # export_package traces into `staging/.fp32`: move those graphs and remove the scratch directory.
    # Graphs traced elsewhere (trace_graphs) are copied and left for their owner.
    owned = traced.directory.resolve().parent == staging.resolve()  # export_package's own scratch trace
    components: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for graph in traced.graphs:
        tick = time.perf_counter()
        fp32_path = traced.path(graph.name)
        final_path = staging / f"{graph.name}.onnx"
        if precision == "fp16":
            say(f"converting {graph.name} to mixed fp16")
            converted = convert_to_mixed_fp16(onnx.load(str(fp32_path)), fp32_modules=fp32_modules)
            external = save_onnx(converted, final_path)
            del converted
        else:
            external = [p.name for p in traced.directory.glob(f"{graph.name}.onnx.data")]
            move = os.replace if owned else shutil.copyfile
            move(fp32_path, final_path)
            for name in external:
                move(traced.directory / name, staging / name)
        onnx.checker.check_model(str(final_path), full_check=False)
        inputs, outputs = graph_io(final_path)
        components[graph.name] = {
            "role": graph.role, "file": final_path.name, "external_data": external, "inputs": inputs, "outputs": outputs,
        }
        timings[graph.name] = round(traced.seconds.get(graph.name, 0.0) + time.perf_counter() - tick, 3)
    if owned:
        traced.cleanup()

    say("measuring parity with ONNX Runtime")
    parity = measure_package_parity(model, staging, components, precision, parity_batch, parity_seed)
    if not parity["passed"]:
        summary = parity_summary(parity)
        if not allow_parity_failure:
            raise EmsegError(f"{config.name} {precision}: parity targets missed ({summary}); nothing written; "
                             "pass --allow-parity-failure to write the package anyway, marked as failed")
        say(f"parity targets missed ({summary}); writing anyway as --allow-parity-failure asks")
    parity["allowed_failure"] = bool(allow_parity_failure and not parity["passed"])

    files = {
        path.relative_to(staging).as_posix(): sha256_file(path)
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    tile = config.tile
    return {
        "format": PACKAGE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "family": config.family,
        "size": config.size,
        "classes": list(config.classes),
        "labels": {"0": "background", **{str(i + 1): c for i, c in enumerate(config.classes)}},
        "tile": tile,
        "grid": config.grid,
        "precision": precision,
        "fp32_modules": list(fp32_modules) if precision == "fp16" else [],
        "batch_max": traced.batch_max,
        "opset": OPSET,
        "input": {
            "name": "tiles", "dtype": "uint8", "shape": [BATCH_DIM, 1, tile, tile], "layout": "NCHW",
            "normalisation": normalisation_record(config),
        },
        "prompts": list(model.prompt_names),
        "components": components,
        "files": files,
        "parity": parity,
        "engines": {},
        "toolchain": toolchain_versions(),
        "checkpoints": [{"file": p.name, "sha256": sha256_file(p)} for p in traced.checkpoints],
        "export_seconds_per_component": timings,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def measure_package_parity(
    model: nn.Module,
    root: Path,
    components: dict[str, Any],
    precision: str,
    parity_batch: int | None = None,
    parity_seed: int | None = None,
) -> dict[str, Any]:
    """Run every component in ONNX Runtime on fresh random inputs and compare with the torch model."""
    seed = secrets.randbits(31) if parity_seed is None else parity_seed
    batch = parity_batch or (2 if model.config.tile <= 256 else 1)
    targets = ParityTargets.for_precision(precision)
    inputs = model.example_inputs(batch=batch, seed=seed)
    with torch.no_grad():
        embeddings = model.embed(inputs["tiles"])
        prompts = {name: inputs[name] for name in model.prompt_names}
        head_out = model.head(**embeddings, **prompts)
    values = {name: tensor.numpy() for name, tensor in {**inputs, **embeddings, **head_out}.items()}
    threshold = label_threshold(model)
    results: dict[str, Any] = {}
    tick = time.perf_counter()
    for name, spec in components.items():
        output_names = [o["name"] for o in spec["outputs"]]
        got = run_onnx(root / spec["file"], values, output_names)
        results[name] = compare_outputs({n: values[n] for n in output_names}, got, targets, threshold=threshold)
    return {
        "passed": all(r["passed"] for r in results.values()),
        "precision": precision,
        "reference": "PyTorch fp32 eager (CPU)",
        "runtime": "ONNX Runtime CPUExecutionProvider",
        "targets": targets.to_dict(),
        "label_threshold": threshold,
        "batch": batch,
        "seed": seed,
        "seconds": round(time.perf_counter() - tick, 3),
        "components": results,
    }


def label_threshold(model: nn.Module) -> float:
    """The background threshold of the pipeline's class merge (labels are 0 where no logit exceeds it)."""
    from emseg_rt.models.class_merge import ClassMerge

    merges = [module for module in model.modules() if isinstance(module, ClassMerge)]
    return float(merges[0].threshold) if merges else 0.0


def parity_summary(parity: dict[str, Any]) -> str:
    """One line: the failing component outputs and their numbers."""
    parts = []
    for component, result in parity["components"].items():
        for output, numbers in result["outputs"].items():
            if not numbers.get("passed", True):
                shown = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in numbers.items() if k != "passed"}
                parts.append(f"{component}.{output} " + " ".join(f"{k}={v}" for k, v in shown.items()))
    return "; ".join(parts) or "all passed"
