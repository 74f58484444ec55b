"""`emseg-rt segment`: stream a volume (zarr / OME-Zarr, N5, HDF5, TIFF, URL) through a backend into an
OME-Zarr label image."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emseg_rt.checks import check_input_exists
from emseg_rt.cli.app import app
from emseg_rt.constants import DEFAULT_LABEL_NAME
from emseg_rt.errors import EmsegError

# One typer option per `SegmentRequest` choice (help texts here, the meaning in runtime/request.py).
INPUT = typer.Argument(..., help="3D (z, y, x) volume or 2D image: zarr v2/v3 array or group (--key), "
    "OME-Zarr image (--level), N5 or HDF5 (--key: dataset), TIFF file or folder of pages, PNG / JPEG, or an "
    "http(s):// or s3:// URL of zarr / N5. A folder of such files or a quoted glob pattern ('raw/*.tif') "
    "segments each into OUT/<name>.zarr (complete ones kept, incomplete ones resumed); a folder of TIFFs "
    "only is one stack of pages.")
OUT = typer.Option(None, "--out", "-o", help="Output: a new directory that becomes an OME-Zarr "
    "label image (napari / neuroglancer open it as it is).")
INTO_INPUT = typer.Option(False, "--into-input", help="Write the label image into the input OME-Zarr "
    "image's own labels/<--label-name> instead of --out.")
LEVELS = typer.Option(None, "--levels", help="Pyramid levels of the labels, each 2x smaller in "
    "y and x (default: down to ~256 px; --into-input: the image's levels).")
WINDOW = typer.Option(None, "--window", help="How intensities become the model's uint8. Default: uint8 "
    "as it is; any other dtype has its 0.5/99.5 percentiles (sampled across the volume) mapped onto the "
    "model's reference window (those percentiles of its training data), so a rescale of the same data "
    "segments the same. LOW,HIGH values (100,3000; --window=-1200,800): LOW -> 0, HIGH -> 255, any dtype. "
    "Percentiles (1%,99% or p1,p99): those -> 0 and 255, a contrast stretch. The output records the mapping; "
    "its normalisation.window values, passed as --window, reproduce it.")
MODEL = typer.Option(None, "--model", "-m", help="Registry name or model package directory "
    "(default: the embedded default model).")
CHECKPOINT = typer.Option(None, "--checkpoint", "-c", help="Weights for a registry "
    "model (SAM, MAE or emseg-rt state dicts), or an official weights name (emseg-rt weights list: fetched and "
    "verified); repeatable, loaded in order.")
BACKEND = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | tensorrt (auto prints "
    "which it chose and why).")
DEVICE = typer.Option("auto", "--device", help="auto (a CUDA GPU when torch sees one, else the CPU; "
    "says which), cpu, cuda or cuda:N.")
PRECISION = typer.Option("auto", "--precision", help="auto | fp32 | fp16 | bf16 | int8 | fp32-fused | fp8 | int8-wo "
    "(auto: a package's own; on a CPU with native bf16 and --backend auto, torch bf16 where it is measured faster than "
    "ONNX Runtime fp32 and keeps >= 99.5 % of its labels (once per model and machine, cached); else fp32. bf16: torch "
    "backend only; fp16 on onnxruntime/tensorrt runs the mixed-fp16 package; int8 (QDQ, calibrated on phantoms) and "
    "fp32-fused (fused attention) run their packages in ONNX Runtime; fp8: an exported package, in ONNX Runtime or "
    "as RTX 40/50 engines; int8-wo: an exported weight-only package, in ONNX Runtime or as RTX 30+ engines).")
BATCH = typer.Option(4, "--batch", help="Tiles per backend call.")
HALO = typer.Option(None, "--halo", help="Context pixels per tile side (default: tile/8).")
BLEND = typer.Option("center", "--blend", help="center (crop) | gaussian (weighted logits)")
AXIS = typer.Option("z", "--axis", help="Slice perpendicular to z | y | x.")
PLANES = typer.Option(None, "--planes", help="Orthoplane fusion: segment along each of these plane orientations "
    "(xy, xz, yz; e.g. xy,xz,yz) and label the mean of their class probabilities (one pass each; isotropic voxels).")
BLOCK = typer.Option(8, "--block", help="Slices per write block (= output shard or chunk depth, resume unit).")
KEY = typer.Option(None, "--key", help="Array inside a zarr group.")
LEVEL = typer.Option(None, "--level", help="OME-Zarr multiscale level (default 0).")
ROI = typer.Option(None, "--roi", help="Segment only this box of the input: z0:z1,y0:y1,x0:x1 in voxels or with "
    "a unit (0.4um:1.2um) (y0:y1,x0:x1 for a 2D image; an empty bound is the edge, e.g. 100:300,:,:). The label "
    "image has the box's shape and starts at its first voxel; intensities are mapped as for the whole volume.")
MASK = typer.Option(None, "--mask", help="Segment only inside this label or binary image (nonzero = inside; "
    "zarr / OME-Zarr, N5, HDF5, TIFF), at any resolution: mapped onto the input by its scale and translation, "
    "or by proportion where either has none. Blocks and tiles without a mask voxel are skipped; labels are 0 "
    "outside it.")
MASK_LEVEL = typer.Option(None, "--mask-level", help="The --mask image's multiscale level (default 0).")
LABEL_NAME = typer.Option(DEFAULT_LABEL_NAME, "--label-name", help="Label image name (its labels/ name with --into-input).")
RESUME = typer.Option(False, "--resume", help="Finish an interrupted run of the same configuration.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output.")
PROBABILITIES = typer.Option(False, "--probabilities", help="Also write per-class uint8 probabilities.")
REPORT = typer.Option(None, "--report", help="Write totals and timings as JSON here.")
DASK = typer.Option(None, "--dask", help="Run blocks as tasks on a Dask cluster: local:N (N "
    "one-thread worker processes here) or a scheduler address (tcp://host:8786).")
ALLOW_MISSING_CHUNKS = typer.Option(False, "--allow-missing-chunks", help="Read input chunks that were "
    "never written as the array's fill value instead of refusing.")
PROMPTS = typer.Option(None, "--prompts", help="Point prompts for prompt-das-* models: a CSV "
    "z,y,x[,label] (label 1 positive, 0 negative; default 1) or a zarr "
    "array (N, 3|4), in voxel coordinates of the input; or 'auto': the "
    "model's own density peaks, per slab (a prompt-free pass, then a "
    "prompted one).")
PEAK_THRESHOLD = typer.Option(None, "--peak-threshold", help="--prompts auto: density "
    "peaks at or above this become prompts; --instances on a density "
    "model: they seed the watershed (default 0.49 = 125/255, the "
    "Prompt-DAS code's; density is 1 at a trained centre).")
TTA = typer.Option(False, "--tta", help="Rotation test-time augmentation: each tile run at 0/90/180/270 "
    "degrees, logits averaged (4x the compute).")
INSTANCES = typer.Option(None, "--instances", help="Also write instances of these classes "
    "(CLASS[,CLASS]) as a uint32 label image <class>_instances beside "
    "the semantic one, IDs unique across blocks: per class, holes filled, "
    "specks removed and touching round objects (granules) split by a "
    "distance-transform watershed; on prompt-das-* models a watershed "
    "seeded by density peaks.")
PART = typer.Option(None, "--part", help="Folder or pattern input: segment only share K of N of the "
    "sorted files (K/N, e.g. 1/4), to split them over N jobs.")
SHARDS = typer.Option(True, "--shards/--no-shards", help="Zarr v3 outputs: one shard file per write block "
    "(labels, levels, probabilities, run state), holding 1 x 256 x 256 chunks for viewers (default); "
    "--no-shards: one file per chunk, as before.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or summary.")


def _weights_files(checkpoint: Optional[list[Path]], quiet: bool) -> list[Path]:
    """--checkpoint values as files: official weights names (emseg-rt weights list) fetched and verified."""
    from emseg_rt.weights.fetch import resolve_checkpoints  # deferred: CLI start-up

    return resolve_checkpoints(checkpoint or (), say=None if quiet else lambda line: typer.echo(line, err=True),
                               progress=not quiet)


@app.command("segment")
def segment_command(
    input: str = INPUT,
    out: Optional[Path] = OUT,
    into_input: bool = INTO_INPUT,
    levels: Optional[int] = LEVELS,
    window: Optional[str] = WINDOW,
    model: Optional[str] = MODEL,
    checkpoint: Optional[list[Path]] = CHECKPOINT,
    backend: str = BACKEND,
    device: str = DEVICE,
    precision: str = PRECISION,
    batch: int = BATCH,
    halo: Optional[int] = HALO,
    blend: str = BLEND,
    axis: str = AXIS,
    planes: Optional[str] = PLANES,
    block: int = BLOCK,
    key: Optional[str] = KEY,
    level: Optional[int] = LEVEL,
    roi: Optional[str] = ROI,
    mask: Optional[str] = MASK,
    mask_level: Optional[int] = MASK_LEVEL,
    label_name: str = LABEL_NAME,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    probabilities: bool = PROBABILITIES,
    report: Optional[Path] = REPORT,
    dask: Optional[str] = DASK,
    allow_missing_chunks: bool = ALLOW_MISSING_CHUNKS,
    prompts: Optional[str] = PROMPTS,
    peak_threshold: Optional[float] = PEAK_THRESHOLD,
    tta: bool = TTA,
    instances: Optional[str] = INSTANCES,
    part: Optional[str] = PART,
    shards: bool = SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Segment organelles in a 3D EM volume into an OME-Zarr label image (OUT itself, or IN/labels/<name>)."""
    check_input_exists(input, patterns=True)  # a missing input is one line before anything loads
    from emseg_rt.runtime import SegmentRequest, run_segment  # deferred: CLI start-up (torch loads on use)
    from emseg_rt.runtime.batch import folder_inputs, parse_part  # deferred

    choices = dict(
        model=model, checkpoints=_weights_files(checkpoint, quiet), backend=backend, device=device, precision=precision,
        batch=batch, halo=halo, blend=blend, axis=axis, block=block, resume=resume, overwrite=overwrite,
        probabilities=probabilities, key=key, level=level, roi=roi, mask=mask, mask_level=mask_level,
        **({} if planes is None else {"planes": planes}),
        label_name=label_name, levels=levels, into_input=into_input, window=window, progress=not quiet, report=report,
        say=None if quiet else (lambda message: typer.echo(message, err=True)), dask=dask,
        allow_missing_chunks=allow_missing_chunks, tta=tta, instances=instances, peak_threshold=peak_threshold,
        prompts=None if prompts is None else (prompts if prompts == "auto" else Path(prompts)), shards=shards)
    files = folder_inputs(input)
    if files is not None:
        _segment_folder(files, out, parse_part(part), choices, quiet)
        return
    if part is not None:
        raise EmsegError(f"--part splits the files of a folder or glob pattern over jobs; {input} is one input")
    result = run_segment(SegmentRequest.from_keywords(input, out, **choices))
    if not quiet:
        typer.echo(_summary(result))


def _summary(result) -> str:
    """The line a finished run prints: where, how many slices, how fast, on which backend."""
    return (f"{result.label_path}: {result.slices_computed} slices in {result.wall_seconds:.1f} s "
            f"({result.slices_per_second:.2f} slices/s, backend {result.backend}, "
            f"idle {result.backend_idle_fraction:.0%})"
            + (f"; {result.blocks_done_before} blocks were already done" if result.blocks_done_before else ""))


def _segment_folder(files: list, out: Optional[Path], part: tuple[int, int], choices: dict, quiet: bool) -> None:
    """A folder run (`runtime.batch`): one line per file as it goes, a summary line, exit 2 if any failed."""
    from emseg_rt.runtime.batch import segment_files, summary_line  # deferred

    if out is None:
        raise EmsegError("a folder or pattern input needs --out OUTDIR, the folder its outputs go into")
    outcomes = segment_files(files, out, part=part, **choices)
    failed = [o for o in outcomes if o.status == "failed"]
    if quiet:
        for outcome in failed:
            typer.echo(f"{outcome.input}: failed: {outcome.message}", err=True)
    if failed:
        raise EmsegError(f"{summary_line(outcomes)} ({len(outcomes)} files, outputs in {out}); rerun to retry "
                         "the failed ones (complete outputs are kept)")
    if not quiet:
        typer.echo(summary_line(outcomes))
