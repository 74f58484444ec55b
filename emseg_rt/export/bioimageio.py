"""bioimage.io model packages: write one from a registry model, and open one to run it.

    export_bioimageio(model, out_zip, precision="fp32", checkpoints=(), batch_max=8) -> Path
    is_bioimageio_zip(path) -> bool
    open_bioimageio(path) -> Path     (the emseg-rt package directory the runtime loads)

A bioimage.io package (model spec 0.5, built and saved by `bioimageio.spec`; `pip install 'emseg-rt[bioimageio]'`)
is a zip holding `rdf.yaml` and the files it names. Ours holds:

- weights: the full graph (`full.onnx`, the one `emseg-rt export` and the package cache write) as the spec's
  one `onnx` entry: uint8 tiles (batch, 1, T, T) → logits (batch, K, T, T) float32 and labels (batch, T, T)
  uint8. Normalisation and the class merge are inside the graph, so the description declares no pre- or
  post-processing. The spec has one entry per weight format, so a package holds one precision: `--precision
  fp16` writes a package whose `onnx` entry is the mixed-fp16 graph (same uint8 / fp32 inputs and outputs);
- test tensors: a phantom tile (`data.phantom`, seed 0) and the outputs our graph computes on it in ONNX
  Runtime (.npy), which `bioimageio.core.test_model` reproduces;
- a cover (the tile beside its labels, in the OME-Zarr label colours), the model card as documentation,
  the seed paper as citation and its authors;
- `config.emseg_rt.manifest`: the emseg-rt manifest of the graph (classes, tile, batch_max, precision,
  normalisation, parity, the graph's sha256), from which `open_bioimageio` rebuilds a model package directory
  under `cache_root()/bioimageio/` that the runtime's ONNX Runtime backend runs like any other package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emseg_rt import __version__
from emseg_rt.data.phantom import generate_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.export.cache import cache_root, cached_package
from emseg_rt.export.parity import parity_summary
from emseg_rt.export.trace import Progress, _quiet, _resolve_model
from emseg_rt.io.ome_zarr import default_colors
from emseg_rt.models import get_config
from emseg_rt.models.default_model import default_model_name
from emseg_rt.onnx_session import OnnxGraph
from emseg_rt.package import FULL, ModelPackage, load_package, sha256_file, write_manifest

BIOIMAGEIO_DIR = "bioimageio"  # under cache_root(): packages rebuilt from bioimage.io zips
CONFIG_KEY = "emseg_rt"  # our record in the description's `config`
LICENSE = "Apache-2.0"  # emseg-rt's licence, and SAM's (the encoders' reference code)
INSTALL_HINT = "pip install 'emseg-rt[bioimageio]'"
TEST_SEED = 0  # the phantom the test tile is cut from


@dataclass(frozen=True)
class SeedPaper:
    """The paper a model family comes from: what the package cites and names as its authors."""

    title: str
    authors: tuple[str, ...]
    url: str | None  # None: no public identifier known (then the description cites nothing)
    note: str = ""


SCSAM = SeedPaper("ScSAM: Debiasing Morphology and Distributional Variability in Subcellular Semantic Segmentation",
                  ("Bo Fang", "Jianan Fan", "Dongnan Liu", "Hang Chang", "Gerald J. Shami", "Filip Braet",
                   "Weidong Cai"), "https://arxiv.org/abs/2507.17149")
SEED_PAPERS = {  # family → paper (../shared/seeds/); the ScSAM baselines are rows of its Table 5
    **{family: SCSAM for family in ("scsam", "sam-star", "mae-star", "surgicalsam", "vanilla-sam", "vanilla-sam2")},
    "prompt-das": SeedPaper("Prompt-DAS: Annotation-Efficient Prompt Learning for Domain Adaptive Semantic "
                            "Segmentation of Electron Microscopy Images", ("Jiabao Chen", "Shan Xiong", "Jialin Peng"),
                            "https://arxiv.org/abs/2509.18973"),
    "samda": SeedPaper("SAMDA: Leveraging SAM on Few-Shot Domain Adaptation for Electronic Microscopy Segmentation",
                       ("Yiran Wang", "Li Xiao"), "https://arxiv.org/abs/2403.07951"),
    **{family: SeedPaper("HiS4MAE: High-efficiency Segmentation of Subcellular Structure via Self-distillated "
                         "Masked Autoencoder", (), None, "anonymous authors, under double-blind review")
       for family in ("his4mae", "maester")},
}


def _spec() -> Any:
    """The bioimage.io spec library, or a one-line EmsegError saying how to install it."""
    try:
        import bioimageio.spec  # optional: the [bioimageio] extra
    except ImportError:
        raise EmsegError(f"bioimage.io packages need bioimageio.spec: {INSTALL_HINT}") from None
    return bioimageio.spec


# ---------------------------------------------------------------------------------------------- export


def export_bioimageio(model: str, out_zip: str | Path, precision: str = "fp32",
                      checkpoints: Sequence[str | Path] = (), batch_max: int = 8, *, overwrite: bool = False,
                      progress: Progress | None = None) -> Path:
    """Write `model` (a registry name, with its checkpoints) as a bioimage.io model package at `out_zip`.

    The graph is the package cache's (`cached_package`: exported once, parity measured). Nothing appears at
    `out_zip` until the zip is complete (written beside it, then renamed). EmsegError for a bad name,
    checkpoint or destination, a family with point-prompt inputs, or a missing bioimageio.spec.
    """
    say = progress or _quiet
    out_zip = _check_destination(Path(out_zip), overwrite)
    spec = _spec()
    pipeline = _resolve_model(model, checkpoints)
    if pipeline.prompt_names:
        raise EmsegError(f"--bioimageio: {pipeline.config.name} takes point prompts "
                         f"({', '.join(pipeline.prompt_names)}); bioimage.io export takes models without them")
    package = load_package(cached_package(pipeline, precision, batch_max=batch_max, say=say))
    records = [{"file": Path(p).name, "sha256": sha256_file(Path(p))} for p in checkpoints]
    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=out_zip.parent) as work:
        say("writing test tensors, cover and model card")
        descr = describe(package, Path(work), records)
        say(f"saving {out_zip}")
        partial = out_zip.with_name(f".{out_zip.name}.partial-{secrets.token_hex(4)}")
        try:
            spec.save_bioimageio_package(descr, output_path=partial)
            os.replace(partial, out_zip)
        finally:
            partial.unlink(missing_ok=True)
    return out_zip


def _check_destination(out_zip: Path, overwrite: bool) -> Path:
    if out_zip.suffix != ".zip":
        raise EmsegError(f"--bioimageio {out_zip}: name the package file with .zip")
    if out_zip.is_dir() or (out_zip.exists() and not overwrite):
        raise EmsegError(f"--bioimageio {out_zip}: exists; choose another name or pass --overwrite")
    if not out_zip.parent.is_dir():
        raise EmsegError(f"--bioimageio {out_zip}: folder {out_zip.parent} does not exist")
    return out_zip


def describe(package: ModelPackage, work: Path, checkpoints: Sequence[dict[str, str]] = ()) -> Any:
    """The bioimage.io `ModelDescr` of `package`'s full graph, its files (test tensors, cover, model card, the
    graph) written into or named from `work`."""
    import tifffile  # optional: the [bioimageio] extra (bioimageio.spec's own dependency)
    from bioimageio.spec.model import v0_5  # optional: the [bioimageio] extra

    tile, tensors = reference_tensors(package)
    files = {}
    for name, array in tensors.items():  # test tensors (.npy) and, for people, sample tensors (.tif, no batch)
        files[name], files[f"{name}.sample"] = work / f"{name}.npy", work / f"{name}.tif"
        np.save(files[name], array)
        tifffile.imwrite(files[f"{name}.sample"], array[0, 0] if array.ndim == 4 and array.shape[1] == 1 else array[0])
    cover = write_cover(tile[0, 0], tensors["labels"][0], len(package.classes), work / "cover.png")
    paper = SEED_PAPERS[package.family]
    card = work / "README.md"
    card.write_text(model_card(package, paper, checkpoints), encoding="utf-8")
    full = package.components[FULL]
    return v0_5.ModelDescr(
        name=package.name, description=_description(package), covers=[v0_5.FileDescr(source=cover)],
        documentation=v0_5.FileDescr(source=card), license=LICENSE, version="1.0.0",
        authors=[v0_5.Author(name=name) for name in paper.authors],
        packaged_by=[v0_5.Author(name=f"emseg-rt {__version__}")],
        cite=[v0_5.CiteEntry(text=f"{', '.join(paper.authors)}. {paper.title}", url=paper.url)] if paper.url else [],
        tags=["electron-microscopy", "fib-sem", "organelles", "semantic-segmentation", "onnx", package.family],
        inputs=[_input_descr(v0_5, package, full.inputs[0].name, files)],
        outputs=[_output_descr(v0_5, package, out.name, out.shape, out.dtype, files) for out in full.outputs],
        weights=v0_5.WeightsDescr(onnx=_onnx_weights(v0_5, package)),
        config={CONFIG_KEY: {"manifest": package.manifest, "checkpoints": list(checkpoints)}},
    )


def _description(package: ModelPackage) -> str:
    try:
        config_text = get_config(package.name).description
    except EmsegError:  # a package of a model outside the registry
        config_text = f"{package.family} organelle segmentation"
    classes = ", ".join(f"{i + 1} {c}" for i, c in enumerate(package.classes))
    return (f"Organelle segmentation of EM slices ({package.family}, exported by emseg-rt): uint8 tiles of "
            f"{package.tile}x{package.tile} to per-class logits and labels (0 background, {classes}). {config_text}")


def reference_tensors(package: ModelPackage) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(tile (1, 1, T, T) uint8, {input name: tile, output name: what the full graph computes on it}).

    The tile is plane 1 of a phantom (`generate_phantom`, seed TEST_SEED) T×T, run through the package's own
    full graph in ONNX Runtime on the CPU: the outputs a bioimage.io consumer must reproduce.
    """
    tile_side = package.tile
    phantom = generate_phantom((3, tile_side, tile_side), seed=TEST_SEED)  # numpy's gradients need 2+ planes
    tile = np.ascontiguousarray(phantom.image[1:2, None])  # (1, 1, T, T) uint8
    full = package.components[FULL]
    name = full.inputs[0].name
    outputs = OnnxGraph(full.path, "cpu").run({name: tile})
    return tile, {name: tile, **{spec.name: np.asarray(outputs[spec.name]) for spec in full.outputs}}


def write_cover(image: np.ndarray, labels: np.ndarray, num_classes: int, path: Path) -> Path:
    """A 2:1 PNG: the tile (T, T) uint8 in grey beside its labels (T, T) in the OME-Zarr label colours
    (`io.ome_zarr.default_colors`) over the dimmed tile; scaled up (nearest) to at least 512 px wide."""
    grey = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    palette = np.array([(0, 0, 0)] + [c[:3] for c in default_colors(num_classes)], np.float32)
    coloured = np.where(labels[..., None] > 0, 0.35 * grey + 0.65 * palette[labels], 0.5 * grey)
    both = np.concatenate([grey, coloured], axis=1).clip(0, 255).astype(np.uint8)
    scale = max(1, -(-512 // both.shape[1]))
    Image.fromarray(both).resize((both.shape[1] * scale, both.shape[0] * scale), Image.NEAREST).save(path)
    return path


def _axes(v0_5: Any, shape: Sequence[Any], channels: Sequence[str] | None, output: bool) -> list[Any]:
    """bioimage.io axes of a graph tensor: (batch, C, T, T) → batch, channel, y, x; (batch, T, T) → batch, y, x."""
    space = v0_5.SpaceOutputAxis if output else v0_5.SpaceInputAxis
    axes = [v0_5.BatchAxis()]
    if len(shape) == 4:
        axes.append(v0_5.ChannelAxis(channel_names=list(channels or [f"c{i}" for i in range(int(shape[1]))])))
    return axes + [space(id=v0_5.AxisId("y"), size=int(shape[-2])), space(id=v0_5.AxisId("x"), size=int(shape[-1]))]


def _input_descr(v0_5: Any, package: ModelPackage, name: str, files: dict[str, Path]) -> Any:
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId(name), axes=_axes(v0_5, package.input.shape, ["em"], output=False),
        description="raw EM intensities, uint8 0-255 (the model normalises inside its graph)",
        data=v0_5.IntervalOrRatioDataDescr(type="uint8", range=(0, 255)), **_tensor_files(v0_5, files, name))


def _output_descr(v0_5: Any, package: ModelPackage, name: str, shape: Sequence[Any], dtype: str,
                  files: dict[str, Path]) -> Any:
    if dtype in ("uint8", "uint16") and len(shape) == 3:
        data = v0_5.NominalOrOrdinalDataDescr(values=list(range(len(package.classes) + 1)), type=dtype)
        what = "labels: 0 background, " + ", ".join(f"{i + 1} {c}" for i, c in enumerate(package.classes))
    else:
        data = v0_5.IntervalOrRatioDataDescr(type=dtype)
        what = f"{name} per class (the labels come from them inside the graph)"
    return v0_5.OutputTensorDescr(id=v0_5.TensorId(name), axes=_axes(v0_5, shape, package.classes, output=True),
                                  description=what[:128], data=data, **_tensor_files(v0_5, files, name))


def _tensor_files(v0_5: Any, files: dict[str, Path], name: str) -> dict[str, Any]:
    return {"test_tensor": v0_5.FileDescr(source=files[name]),
            "sample_tensor": v0_5.FileDescr(source=files[f"{name}.sample"])}


def _onnx_weights(v0_5: Any, package: ModelPackage) -> Any:
    full = package.components[FULL]
    if len(full.external_data) > 1:
        raise EmsegError(f"--bioimageio: {full.file} keeps its weights in {len(full.external_data)} files; the "
                         "bioimage.io spec takes one external data file")
    external = ({"external_data": v0_5.FileDescr(source=package.root / full.external_data[0])}
                if full.external_data else {})
    return v0_5.OnnxWeightsDescr(source=full.path, opset_version=int(package.manifest.get("opset", 18)),
                                 comment=f"emseg-rt {package.precision} graph", **external)


def model_card(package: ModelPackage, paper: SeedPaper, checkpoints: Sequence[dict[str, str]]) -> str:
    """The package's documentation (markdown): what the model is, its tensors, weights, validation and citation,
    followed by the model's own card (models/<name>.md) where this is a source checkout that has one."""
    classes = ", ".join(f"{i + 1} {c}" for i, c in enumerate(package.classes))
    weights = ("; ".join(f"`{c['file']}` (sha256 {c['sha256']})" for c in checkpoints) if checkpoints else
               "the weights shipped with emseg-rt" if package.name == default_model_name() else
               "none loaded: a fixed-seed random initialisation, for testing the pipeline only")
    parity = package.parity
    lines = [
        f"# {package.name}", "",
        f"{_description(package)}", "",
        "## Inputs and outputs", "",
        f"- `{package.input.name}`: (batch, 1, {package.tile}, {package.tile}) uint8, raw EM intensities. The graph "
        "normalises them itself (no preprocessing here). Other data types: map them onto 0-255 first "
        "(`emseg-rt segment` maps the 0.5/99.5 percentiles onto the model's reference window).",
        f"- `logits`: (batch, {len(package.classes)}, {package.tile}, {package.tile}) float32, one channel per class.",
        f"- `labels`: (batch, {package.tile}, {package.tile}) uint8: 0 background, {classes} (the class merge "
        "inside the graph: argmax of the logits, background where none is above the threshold).",
        "", "Whole volumes: `emseg-rt segment volume.zarr --model THIS.zip --out labels.zarr` (tiles with halo, "
        "stitching, OME-Zarr output).", "",
        "## Weights", "", f"Precision {package.precision}; checkpoints: {weights}.", "",
        "## Validation", "",
        f"The test tensors are a {package.tile}x{package.tile} phantom tile (emseg-rt `generate_phantom`, seed "
        f"{TEST_SEED}) and the outputs this ONNX graph computes on it in ONNX Runtime. The graph against the PyTorch "
        f"model: parity {'passed' if parity.get('passed') else 'FAILED'} ({parity_summary(parity)}). To validate "
        "on your data, segment an annotated volume and score it: `emseg-rt eval labels.zarr truth.zarr`.", "",
        "## Citation", "",
        f"{', '.join(paper.authors) or paper.note}. {paper.title}. {paper.url or paper.note}", "",
    ]
    card = Path(__file__).resolve().parents[2] / "models" / f"{package.name}.md"
    if card.is_file():
        lines += ["---", "", card.read_text(encoding="utf-8")]  # "# Model card: ..."
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ open


def is_bioimageio_zip(path: str | Path) -> bool:
    """Whether --model names a file to open as a bioimage.io package: a file named .zip (readable or not), or
    any zip file (a package directory is never one)."""
    path = Path(path)
    return path.is_file() and (path.suffix == ".zip" or zipfile.is_zipfile(path))


def open_bioimageio(path: str | Path) -> Path:
    """The emseg-rt model package directory of the bioimage.io package at `path`, rebuilt on first use under
    `cache_root()/bioimageio/<zip sha256>` from the graph and the manifest in its description (then verified by
    `load_package`). EmsegError (one line) for a file that is not a valid bioimage.io model package or one that
    emseg-rt did not write."""
    path = Path(path)
    if not path.is_file():
        raise EmsegError(f"bioimage.io package {path} does not exist")
    digest = sha256_file(path)
    entry = cache_root() / BIOIMAGEIO_DIR / f"{path.stem}-{digest[:16]}"
    if entry.is_dir():
        try:
            load_package(entry)
            return entry
        except EmsegError:
            shutil.rmtree(entry, ignore_errors=True)
    manifest = _manifest_of(path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=entry.parent))
    try:
        _extract(path, manifest, staging)
        load_package(staging)  # every sha256 and the graph against its manifest
        try:
            os.rename(staging, entry)
        except OSError:
            load_package(entry)  # another process rebuilt it first: use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _manifest_of(path: Path) -> dict[str, Any]:
    """The emseg-rt manifest in a bioimage.io package's `config`, after `bioimageio.spec` validated it."""
    spec = _spec()
    try:
        descr = spec.load_model_description(path, perform_io_checks=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read a user's file is one line, not a traceback
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EmsegError(f"{path}: not a bioimage.io model package ({reason})") from None
    if not isinstance(descr, spec.ModelDescr):
        summary = descr.validation_summary
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors][:1] if summary else []
        raise EmsegError(f"{path}: not a valid bioimage.io model package ({'; '.join(errors) or 'invalid'})")
    record = (descr.config.model_extra or {}).get(CONFIG_KEY)
    manifest = record.get("manifest") if isinstance(record, dict) else None
    if not isinstance(manifest, dict):
        raise EmsegError(f"{path}: a bioimage.io package that emseg-rt did not write (no config.{CONFIG_KEY}); "
                         "run it with bioimageio.core, or export the model with `emseg-rt export --bioimageio`")
    return manifest


def _extract(path: Path, manifest: dict[str, Any], target: Path) -> None:
    """The files the manifest lists (the graph, its external data), from the zip into `target`, and the manifest."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EmsegError(f"{path}: config.{CONFIG_KEY}.manifest lists no files; export the package again")
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        for name in files:
            if not isinstance(name, str) or "/" in name or name.startswith(".") or name not in members:
                raise EmsegError(f"{path}: the manifest names {name!r}, which is not a file of the package")
            with archive.open(name) as source, open(target / name, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 22)
    write_manifest(target, manifest)

