"""Package writing: traced FP32 graphs → a model package (graphs at the asked precision, parity, manifest).

    export_package(model, out_dir, precision)  = trace_model + write the package, in one temporary sibling
    write_package(traced, out_dir, precision)  = write a package from a trace that stays with its owner

Both go through the same steps (`_write_package_into`): write each graph (a move or copy of the FP32
trace, or its mixed-fp16 conversion) and check it, measure parity with ONNX Runtime, assemble and write
the manifest, then rename the finished directory into place (`_install`). Nothing appears at `out_dir`
until every step succeeded; a failed or interrupted write leaves no package behind.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import onnx
import torch
from torch import nn

from emseg_rt import __version__
from emseg_rt.checks import URL_SCHEME
from emseg_rt.errors import EmsegError
from emseg_rt.export.aoti import check_aoti_options, write_aoti
from emseg_rt.export.calibrate import CALIBRATION_BATCH
from emseg_rt.export.fp16 import convert_to_mixed_fp16, nodes_in_scope
from emseg_rt.export.fp8 import FP8_OPSET, quantize_to_fp8
from emseg_rt.export.int8_weights import quantize_to_int8_weights
from emseg_rt.export.fused import fuse_attention
from emseg_rt.export.graphs import ComponentGraph
from emseg_rt.export.int8 import CALIBRATION_TILES, calibration_tiles, quantize_to_int8
from emseg_rt.export.onnx_io import OPSET, graph_io, save_onnx
from emseg_rt.export.parity import ParityTargets, measure_package_parity, parity_summary
from emseg_rt.export.trace import Progress, TracedGraphs, _quiet, _resolve_model, trace_model
from emseg_rt.io.outputs import NO_SPACE, write_failure
from emseg_rt.package import (
    BATCH_DIM,
    FORMAT_VERSION,
    FULL,
    HEAD,
    MANIFEST_HASH_NAME,
    MANIFEST_NAME,
    PACKAGE_FORMAT,
    PRECISIONS,
    sha256_file,
    write_manifest,
)

if TYPE_CHECKING:
    from typing import Unpack  # type checkers only (Python 3.11+); nothing imports it at run time

CALIBRATED = ("int8", "fp8")  # precisions calibrated on tiles (export/int8.py, export/fp8.py), their head float
QUANTISED = (*CALIBRATED, "int8-wo")  # precisions whose head and FLOAT_COMPONENTS stay float (int8-wo: weights only)
# Components (and their nodes in the full graph) that stay float at every calibrated precision, as the head does:
# the pixel encoder (the default model's pixel refinement) convolves raw pixels, whose differences between
# neighbours FP8's 3-bit mantissa erases (its FP8 embedding: relative error 1.06); it is 0.03 % of the model's
# parameters and a third of a 128² tile's FLOPs, all in small convolutions.
FLOAT_COMPONENTS = ("pixel_encoder",)
TRACE_DIR = ".trace"  # inside the staging directory: export_package's own FP32 trace, moved out and removed


class PackageOptions(TypedDict, total=False):
    """The keyword options `export_package` and `write_package` share (each optional).

    parity_batch:         batch of the parity inputs (default 2 for tiles ≤ 256, else 1).
    parity_seed:          seed of the parity inputs; drawn fresh (and recorded) when None.
    allow_parity_failure: write the package even when parity misses its targets (marked as failed).
    overwrite:            replace a model package already at `out_dir` (only once the new one is complete); any
                          other non-empty directory is refused, never deleted.
    fp16_head:            with fp16, also run the head (FAFM, prompt encoder, decoder) in FP16. Off by default:
                          the encoders hold > 90 % of the FLOPs, and an FP16 head flips labels where class logits
                          are close (measured on the tiny models: 94.6 % label agreement vs 100 % with an FP32 head).
    progress:             receives one line per step.
    calibration:          with int8, a uint8 volume (any format `io.open_volume` reads) whose tiles calibrate the
                          quantisation and measure parity (held out); None: synthetic phantoms (export/int8.py).
    calibration_tiles:    with int8, how many tiles to calibrate on (default `int8.CALIBRATION_TILES`).
    rel_error_target, label_agreement_target: parity bars instead of the precision's (export/parity.py).
    """

    parity_batch: int | None
    parity_seed: int | None
    allow_parity_failure: bool
    overwrite: bool
    fp16_head: bool
    progress: Progress | None
    calibration: str | Path | None
    calibration_tiles: int | None
    rel_error_target: float | None
    label_agreement_target: float | None


@dataclass(frozen=True)
class _WriteOptions:
    precision: str
    parity_batch: int | None
    parity_seed: int | None
    allow_parity_failure: bool
    fp32_modules: tuple[str, ...]  # with fp16: submodules that stay FP32 (the head unless fp16_head)
    aoti_device: str | None = None  # --aoti: also compile the full graph with AOTInductor for this device
    overwrite: bool = False
    say: Progress = _quiet
    calibration: str | Path | None = None  # int8: the calibration volume (None: phantoms)
    calibration_tiles: int = CALIBRATION_TILES
    targets: dict[str, float] | None = None  # parity bars instead of the precision's: rel_error, label_agreement


def export_package(
    model_name_or_module: str | nn.Module,
    out_dir: str | Path,
    precision: str = "fp32",
    checkpoints: Sequence[str | Path] = (),
    batch_max: int = 8,
    *,
    components: Sequence[str] | None = None,
    aoti_device: str | None = None,
    **options: Unpack[PackageOptions],
) -> Path:
    """Export a pipeline to a model package at `out_dir` and return its path.

    model_name_or_module: a registry name ('scsam-vit-b'; built by `models.build_model`) or a built
                   `SegmentationPipeline`.
    precision:     'fp32'; 'fp16' for a mixed graph (FP16 compute, FP32 islands, FP32/uint8 I/O); 'int8' for a
                   QDQ graph calibrated on phantoms or `calibration` (export/int8.py); 'fp32-fused' for fp32 with
                   fused attention (export/fused.py). The last two run in ONNX Runtime only.
    checkpoints:   loaded in order before export (see emseg_rt.models.checkpoint).
    batch_max:     largest batch the graphs (and later the engines' optimisation profile) accept.
    components:    the graphs to include (e.g. ('full',), all the runtime runs); None: every component.
    aoti_device:   'cpu' or 'cuda': also write full.pt2, the full graph compiled by AOTInductor for C/C++
                   hosts (cpp/), with its parity in the manifest's "aoti" record (export/aoti.py); fp32 only.
    options:       `PackageOptions` (parity_batch, parity_seed, allow_parity_failure, overwrite, fp16_head,
                   progress), as `write_package` takes them.
    Raises EmsegError for a bad name, checkpoint, precision, destination, or a parity miss.

    Equivalent to `trace_graphs` followed by `write_package`, without copying the graphs; use those two
    to write fp32 and fp16 packages of one model from a single trace.
    """
    write = _options("export_package", precision, batch_max, options, aoti_device)
    out_dir = Path(out_dir)
    model = _resolve_model(model_name_or_module, checkpoints)
    if aoti_device is not None:
        check_aoti_options(model, precision, aoti_device)

    def trace_and_write(staging: Path) -> None:
        traced = trace_model(model, staging / TRACE_DIR, batch_max, tuple(Path(p) for p in checkpoints), write.say,
                             components)
        _write_package_into(staging, traced, write, write.say, move_graphs=True)

    _build_package(out_dir, write.overwrite, trace_and_write)  # checks the destination before the slow trace
    write.say(f"wrote {out_dir} ({model.config.name}, {precision})")
    return out_dir


def write_package(traced: TracedGraphs, out_dir: str | Path, precision: str = "fp32",
                  **options: Unpack[PackageOptions]) -> Path:
    """Write a package at `out_dir` from graphs traced by `trace_graphs` (copied; the trace is left in place).

    Same options (`PackageOptions`), parity check and atomic install as `export_package`.
    """
    write = _options("write_package", precision, traced.batch_max, options)
    out_dir = Path(out_dir)
    _build_package(out_dir, write.overwrite, lambda staging: _write_package_into(staging, traced, write, write.say,
                                                                                 move_graphs=False))
    write.say(f"wrote {out_dir} ({traced.model.config.name}, {precision})")
    return out_dir


def _options(caller: str, precision: str, batch_max: int, options: PackageOptions,
             aoti_device: str | None = None) -> _WriteOptions:
    """Check the user's options (EmsegError naming the option) before anything slow happens; TypeError for a
    keyword the function does not take, as Python raises it."""
    unknown = [name for name in options if name not in PackageOptions.__annotations__]
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    if precision not in PRECISIONS:
        raise EmsegError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1")
    fp32_modules = (HEAD,) if precision in QUANTISED or (precision == "fp16" and not options.get("fp16_head")) else ()
    calibration, count = options.get("calibration"), options.get("calibration_tiles") or CALIBRATION_TILES
    if precision not in CALIBRATED and (calibration is not None or options.get("calibration_tiles") is not None):
        raise EmsegError(f"--calibration applies to --precision int8 or fp8, not {precision}")
    if count < 1:
        raise EmsegError(f"--calibration-tiles {count}: must be at least 1")
    if calibration is not None and isinstance(calibration, (str, os.PathLike)) \
            and not URL_SCHEME.match(str(calibration)) and not Path(calibration).exists():
        raise EmsegError(f"--calibration {calibration}: does not exist")  # before the slow trace
    targets = {key: float(options[name]) for key, name in (("rel_error", "rel_error_target"),  # type: ignore[literal-required]
               ("label_agreement", "label_agreement_target")) if options.get(name) is not None}
    return _WriteOptions(precision, options.get("parity_batch"), options.get("parity_seed"),
                         options.get("allow_parity_failure", False), fp32_modules, aoti_device,
                         options.get("overwrite", False), options.get("progress") or _quiet, calibration, count,
                         targets or None)


# ------------------------------------------------------------------------------------ destination


def _is_package_dir(path: Path) -> bool:
    """Whether `path` is a model package (a directory whose manifest.json says `"format": "emseg-rt-package"`),
    however old or damaged otherwise: the only kind of non-empty directory `--overwrite` may replace."""
    manifest = path / MANIFEST_NAME
    if path.is_symlink() or not path.is_dir() or manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        content = json.loads(manifest.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("format") == PACKAGE_FORMAT


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """EmsegError unless `out_dir` is absent, an empty directory, or (with `overwrite`) a model package."""
    if out_dir.is_symlink():
        raise EmsegError(f"--out {out_dir}: is a symlink; give the directory it points to, or another path")
    if out_dir.exists() and not out_dir.is_dir():
        raise EmsegError(f"--out {out_dir}: exists and is not a directory")
    if not out_dir.is_dir():
        return
    try:
        empty = not any(out_dir.iterdir())
    except OSError as exc:
        raise EmsegError(f"--out {out_dir}: cannot read it ({exc.strerror or exc})") from None
    if empty:
        return
    if not overwrite:
        raise EmsegError(f"--out {out_dir}: directory is not empty; choose another or pass --overwrite to replace it")
    if not _is_package_dir(out_dir):
        raise EmsegError(f"--out {out_dir}: not an emseg-rt model package (no manifest.json of format "
                         f"{PACKAGE_FORMAT!r}); --overwrite replaces only a package or an empty directory, "
                         "so choose another --out")


def _build_package(out_dir: Path, overwrite: bool, fill: Callable[[Path], None]) -> None:
    """Check `out_dir`, let `fill` write a package into a fresh staging sibling, and install it atomically;
    on any failure the staging directory is removed and `out_dir` is left as it was; a full disk is one line."""
    staging = _staging_dir(out_dir, overwrite)
    try:
        fill(staging)
        _install(staging, out_dir, overwrite)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:  # a graph, its weights, the manifest, ...
            raise write_failure(exc, out_dir, "location") from None
        raise


def _staging_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check the destination, and make the temporary sibling the package is written into."""
    _check_destination(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = out_dir.with_name(f".{out_dir.name}.partial-{secrets.token_hex(6)}")
        staging.mkdir()  # the umask's mode, unlike mkdtemp's 0700: the package is for others to read too
        return staging
    except OSError as exc:
        raise EmsegError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None


def _install(staging: Path, out_dir: Path, overwrite: bool = True) -> None:
    """Move the finished package into place (rename; an old package is removed only after success).

    The destination is checked again (the export took a while): only an absent or empty directory, or
    with `overwrite` a model package, is replaced; anything else is left alone and EmsegError raised.
    """
    _check_destination(out_dir, overwrite)
    old = None
    try:
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(4)}")
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
    except OSError as exc:
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)  # put the previous package back
        raise EmsegError(f"--out {out_dir}: cannot install the package there ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- contents


def _write_package_into(staging: Path, traced: TracedGraphs, options: _WriteOptions, say: Progress,
                        move_graphs: bool) -> None:
    """Fill `staging` with a complete package: graphs, measured parity, manifest.

    move_graphs: move the trace's files (export_package's own trace inside `staging`, then removed)
                 instead of copying them (a trace shared between packages).
    """
    started = time.perf_counter()
    seed = secrets.randbits(31) if options.parity_seed is None else options.parity_seed
    calibration = _calibration(traced, options, seed, say) if options.precision in CALIBRATED else None
    components, seconds = _write_graphs(staging, traced, options, say, move_graphs, calibration)
    if move_graphs:
        traced.cleanup()
    say("measuring parity with ONNX Runtime")
    targets = ParityTargets.for_precision(options.precision)
    targets = replace(targets, **options.targets) if options.targets else targets
    parity = measure_package_parity(traced.model, staging, components, options.precision, options.parity_batch,
                                    seed, None if calibration is None else calibration.held_out, targets)
    if calibration is not None:
        parity["inputs"] = f"held-out tiles of the calibration source: {calibration.source}"
    if not parity["passed"]:
        summary = parity_summary(parity)
        if not options.allow_parity_failure:
            raise EmsegError(f"{traced.model.config.name} {options.precision}: parity targets missed ({summary}); "
                             "nothing written; pass --allow-parity-failure to write the package anyway, marked as failed")
        say(f"parity targets missed ({summary}); writing anyway as --allow-parity-failure asks")
    parity["allowed_failure"] = not parity["passed"]  # reaching here with a miss means it was allowed
    aoti = _write_aoti(staging, traced, options, components, parity, say) if options.aoti_device else None
    manifest = _manifest(staging, traced, options, components, parity, seconds)
    if aoti is not None:
        manifest["aoti"] = {FULL: aoti}
    manifest["export_seconds"] = round(sum(traced.seconds.values()) + time.perf_counter() - started, 3)
    write_manifest(staging, manifest)


def _write_aoti(staging: Path, traced: TracedGraphs, options: _WriteOptions, components: dict[str, Any],
                parity: dict[str, Any], say: Progress) -> dict[str, Any]:
    """Compile the full graph into staging/full.pt2 (export/aoti.py) with its parity on the ONNX parity's
    inputs; EmsegError on a parity miss unless --allow-parity-failure."""
    graph = next(g for g in traced.graphs if g.name == FULL)
    say(f"compiling {FULL} with AOTInductor ({options.aoti_device})")
    record = write_aoti(staging, traced.model, graph, components[FULL]["inputs"], components[FULL]["outputs"],
                        traced.batch_max, parity["seed"], parity["batch"], options.aoti_device)
    if not record["parity"]["passed"] and not options.allow_parity_failure:
        raise EmsegError(f"{traced.model.config.name} AOTInductor: parity targets missed "
                         f"({parity_summary(record['parity'])}); nothing written; pass --allow-parity-failure to "
                         "write the package anyway, marked as failed")
    record["parity"]["allowed_failure"] = not record["parity"]["passed"]
    return record


@dataclass(frozen=True)
class _Calibration:
    """int8: tiles (N, 1, T, T) uint8 to calibrate on, held-out tiles for parity, and where they came from."""

    tiles: Any
    held_out: Any
    source: str
    prompts: dict[str, Any]  # the graphs' other inputs (prompted families): fixed example prompts


def _calibration(traced: TracedGraphs, options: _WriteOptions, seed: int, say: Progress) -> _Calibration:
    model = traced.model
    held_out = options.parity_batch or (2 if model.config.tile <= 256 else 1)
    say(f"reading {options.calibration_tiles} calibration tiles")
    tiles, parity_tiles, source = calibration_tiles(model.config.tile, options.calibration_tiles, held_out,
                                                    options.calibration, seed)
    example = model.example_inputs(batch=CALIBRATION_BATCH, seed=seed)
    prompts = {name: example[name].numpy() for name in model.prompt_names}
    return _Calibration(tiles, parity_tiles, source, prompts)


def _quantised(graph: ComponentGraph) -> bool:
    """Whether a quantised precision quantises this component (not the head, not FLOAT_COMPONENTS)."""
    return graph.role != HEAD and graph.name not in FLOAT_COMPONENTS


def float_nodes(traced_path: Path) -> list[str]:
    """Names of a traced graph's nodes that stay float when it is quantised: the head's and FLOAT_COMPONENTS'."""
    model = onnx.load(str(traced_path), load_external_data=False)
    return [name for scope in (HEAD, *FLOAT_COMPONENTS) for name in nodes_in_scope(model, scope)]


def _write_int8(traced_path: Path, path: Path, traced: TracedGraphs, calibration: _Calibration) -> list[str]:
    """Quantise one traced graph into `path` (export/int8.py), its head nodes kept float; returns the names
    of its external data files."""
    head_nodes = float_nodes(traced_path)
    large = bool(traced.external_data.get(path.stem))
    before = set(path.parent.iterdir())
    quantize_to_int8(traced_path, path, calibration.tiles, calibration.prompts, head_nodes, external_data=large)
    return sorted(p.name for p in set(path.parent.iterdir()) - before if p != path)


def _write_graphs(staging: Path, traced: TracedGraphs, options: _WriteOptions, say: Progress,
                  move_graphs: bool, calibration: _Calibration | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Write every traced graph into `staging` at the options' precision and check it with onnx.checker.

    returns the manifest's component records {name: {role, file, external_data, inputs, outputs}} and the
    seconds per component (its trace plus this step).
    """
    transfer = os.replace if move_graphs else shutil.copyfile
    components: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for graph in traced.graphs:
        tick = time.perf_counter()
        traced_path = traced.path(graph.name)
        path = staging / traced_path.name
        if options.precision == "fp16":
            say(f"converting {graph.name} to mixed fp16")
            converted = convert_to_mixed_fp16(onnx.load(str(traced_path)), fp32_modules=options.fp32_modules)
            external = save_onnx(converted, path)
            del converted
        elif options.precision == "int8" and calibration is not None and _quantised(graph):
            say(f"quantising {graph.name} to int8 (calibrated on {calibration.source})")
            external = _write_int8(traced_path, path, traced, calibration)
        elif options.precision == "fp8" and calibration is not None and _quantised(graph):
            say(f"quantising {graph.name} to fp8 (E4M3 Q/DQ, calibrated on {calibration.source})")
            external = quantize_to_fp8(traced_path, path, calibration.tiles, calibration.prompts,
                                       float_nodes(traced_path))
        elif options.precision == "int8-wo" and _quantised(graph):
            say(f"storing {graph.name}'s matmul weights as int8 (weight-only, per output channel)")
            external = quantize_to_int8_weights(traced_path, path, float_nodes(traced_path))
        elif options.precision == "fp32-fused":
            say(f"fusing {graph.name}'s attention for ONNX Runtime")
            fused = fuse_attention(onnx.load(str(traced_path)))
            external = save_onnx(fused, path)
            del fused
        else:
            external = list(traced.external_data.get(graph.name, ()))
            for name in (traced_path.name, *external):
                transfer(traced.directory / name, staging / name)
        onnx.checker.check_model(str(path), full_check=False)
        inputs, outputs = graph_io(path)
        components[graph.name] = {
            "role": graph.role, "file": path.name, "external_data": external, "inputs": inputs, "outputs": outputs,
        }
        seconds[graph.name] = round(traced.seconds.get(graph.name, 0.0) + time.perf_counter() - tick, 3)
    return components, seconds


def _manifest(staging: Path, traced: TracedGraphs, options: _WriteOptions, components: dict[str, Any],
              parity: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The manifest of the package in `staging` (schema: emseg_rt.package), every file hashed."""
    model = traced.model
    config = model.config
    files = {
        path.relative_to(staging).as_posix(): sha256_file(path)
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.relative_to(staging).as_posix() not in (MANIFEST_NAME, MANIFEST_HASH_NAME)
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
        "precision": options.precision,
        "fp32_modules": [*options.fp32_modules, *(name for name in FLOAT_COMPONENTS if options.precision in QUANTISED
                                                   and name in getattr(traced.model, "encoders", {}))],
        "batch_max": traced.batch_max,
        "opset": FP8_OPSET if options.precision == "fp8" else OPSET,  # float8 Q/DQ need opset 19
        "input": {
            "name": "tiles", "dtype": "uint8", "shape": [BATCH_DIM, 1, tile, tile], "layout": "NCHW",
            "normalisation": normalisation_record(config),
        },
        "prompts": list(model.prompt_names),
        **({"clusters": clusters_record(model)} if clusters_record(model) else {}),
        "components": components,
        "files": files,
        "parity": parity,
        "engines": {},
        "toolchain": toolchain_versions(),
        "checkpoints": [{"file": p.name, "sha256": sha256_file(p)} for p in traced.checkpoints],
        "export_seconds_per_component": seconds,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def toolchain_versions() -> dict[str, str | None]:
    """Versions of everything that shaped the package (recorded in the manifest); None when not installed."""
    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "emseg_rt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
        "onnxscript": version("onnxscript"),
        "onnxconverter_common": version("onnxconverter-common"),
        "tensorrt_rtx": version("tensorrt-rtx") or version("tensorrt_rtx"),
        "tensorrt": version("tensorrt"),
    }


def normalisation_record(config: Any) -> dict[str, Any]:
    """How each encoder turns uint8 intensities into its input (all inside the graph), and the model's
    reference window (uint8 p0.5, p99.5 of its training data) when its config has one."""
    record: dict[str, Any] = {"inside_graph": True}
    if getattr(config, "reference_window", None) is not None:
        record["reference_window"] = [float(v) for v in config.reference_window]
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
    if getattr(config, "dino_encoder", None) is not None:
        record["dino_encoder"] = {
            "scale": 1.0 / 255.0, "mean": list(config.dino_encoder.pixel_mean),
            "std": list(config.dino_encoder.pixel_std), "channels": "grey repeated to RGB",
            "formula": "(x / 255 - mean) / std",
        }
    if config.fov_encoder is not None:
        record["fov_encoder"] = {
            "scale": 1.0 / 255.0, "mean": config.fov_encoder.pixel_mean, "std": config.fov_encoder.pixel_std,
            "channels": "grey", "formula": "(x / 255 - mean) / std",
        }
    return record


def clusters_record(model: Any) -> dict[str, Any] | None:
    """A clustering head's K and the class of each centre (the centres themselves are graph weights)."""
    head = getattr(model, "head", None)
    if not hasattr(head, "cluster_classes"):
        return None
    return {"clusters": int(head.num_clusters), "cluster_classes": [int(c) for c in head.cluster_classes.tolist()],
            "rule": "label = class of the nearest centre of the bilinearly interpolated patch tokens"}
