"""`SegmentRequest`: everything a user asked of one segment run, built once and checked once.

The CLI builds it from its options, `segment_volume` and `segment_labels` from their keywords; the block driver,
its three schedulers (threads, Dask, in memory) and the output read their choices from it and from nowhere else.
Checks that need only the request run in `validate`; checks against the loaded model in `check_against`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit
from typing import Any

import numpy as np

from emseg_rt.checks import split_items
from emseg_rt.errors import EmsegError
from emseg_rt.io import is_array, is_url
from emseg_rt.io.outputs import check_output_file
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.devices import resolve_device
from emseg_rt.runtime.distributed import check_address
from emseg_rt.runtime.instances import WatershedSeeds, parse_instance_classes
from emseg_rt.runtime.loader import load_backend
from emseg_rt.runtime.options import SegmentOptions
from emseg_rt.runtime.planes import parse_planes, plane_name
from emseg_rt.runtime.prompts import NMS_KERNEL, PEAK_THRESHOLD, PointSet, load_points, points_per_window
from emseg_rt.runtime.region import Range, parse_roi
from emseg_rt.runtime.slab import PromptMode

Say = Callable[[str], None]
OPTION_NAMES = frozenset(f.name for f in fields(SegmentOptions))


@dataclass(frozen=True)
class SegmentRequest:
    """One segment run as the user asked for it.

    input:   a path or URL that `io.open_volume` reads (zarr / OME-Zarr, N5, HDF5, TIFF; `key` picks a dataset,
             `level` an OME level), or a numpy / dask / zarr array (Z, Y, X). A 2D image (Y, X) (PNG, 2D TIFF or zarr,
             array) runs as one plane into a 2D label image. Non-uint8 intensities are mapped
             to uint8 with dataset-level robust percentiles, or `window` ("LOW,HIGH", "1%,99%").
    output:  new directory that becomes the label image; refuses an existing one unless `options.resume` (finish
             what is missing) or `options.overwrite`. None with `options.into_input`: INPUT/labels/<label_name>.
             None for `segment_labels` (nothing written).
    roi:     segment only this box of the input, "z0:z1,y0:y1,x0:x1" in voxels or physical units ("0.4um:1.2um",
             `runtime.region`); the label
             image has the box's shape and starts at its first voxel.
    mask:    segment only inside this label or binary volume (a path, URL or array; nonzero = inside) at its
             level `mask_level` (default 0), mapped onto the input by its transform (`runtime.mask`): blocks
             and tiles without a mask voxel are skipped, every voxel outside it is 0.
    model:   registry name or model package directory; None → the embedded default model.
    checkpoints: weights loaded in order into a registry model (emseg_rt.models.checkpoint formats).
    backend: 'auto' | 'torch' | 'onnxruntime' | 'tensorrt', or an already loaded Backend.
    device:  'auto' (a CUDA GPU when torch sees one, else the CPU; `runtime.devices`), 'cpu', 'cuda[:N]'.
    precision: 'auto' (a package's own; on a CPU with native bf16, `--backend auto`, the faster of ONNX Runtime
             fp32 and torch bf16 that keeps the labels: `runtime.cpu_choice`; else fp32), 'fp32', 'fp16', 'bf16'
             (torch backend only), 'int8', 'fp32-fused', 'fp8', 'int8-wo' (packages).
    options: tiling, batching, blocks, shards, pyramid levels and resume (`SegmentOptions`).
    allow_missing_chunks: read never-written input chunks as the array's fill value instead of refusing.
    dask:    'local:N' or a scheduler address: one task per block on a Dask cluster (`runtime.distributed`),
             the same computation and output as without it.
    prompts: point prompts for a window-prompted model (prompt-das-*): a CSV z,y,x[,label], a zarr array
             (N, 3|4) or a `PointSet`, in voxel coordinates of the input (`runtime.prompts`); None: none;
             "auto": per slab, a prompt-free pass gives the blended density, its peaks (`peak_threshold`,
             default 125/255 as the Prompt-DAS code; NMS kernel 5) are the positive points of a second pass.
    instances: class names (or "a,b"): also write each class's instances as a uint32 label image
             `<class>_instances` beside the semantic one (`runtime.instances`): connected components under the
             class's rule (`runtime.instance_rules`: holes, minimum size, distance-transform split), or for a
             model with a density output (prompt-das-*) a marker watershed seeded by the density's peaks.
    progress: a bar on a terminal, else a line every 10 s through `say`; report: write the JSON report there.
    say:     receives one-line notes (which backend `auto` chose and why, progress when not on a terminal).
    on_progress: called as on_progress(planes done, planes in all) after each block (`progress.Progress`'s
             listener, with or without `progress`); an exception it raises stops the run between blocks.
    """

    input: Any
    output: str | Path | None = None
    model: str | None = None
    checkpoints: tuple[str | Path, ...] = ()
    backend: str | Backend = "auto"
    device: str = "auto"
    precision: str = "auto"
    options: SegmentOptions = SegmentOptions()
    key: str | None = None
    level: int | None = None
    roi: str | None = None
    mask: Any = None
    mask_level: int | None = None
    window: str | None = None
    allow_missing_chunks: bool = False
    dask: str | None = None
    prompts: str | Path | PointSet | None = None
    instances: str | Sequence[str] | None = None
    peak_threshold: float | None = None
    progress: bool = False
    report: str | Path | None = None
    say: Say | None = field(default=None, compare=False)
    on_progress: Callable[[int, int | None], None] | None = field(default=None, compare=False)
    points: PointSet | None = field(default=None, init=False, compare=False)  # the loaded prompts (validate)
    region: tuple[Range, ...] | None = field(default=None, init=False, compare=False)  # the parsed roi (validate)
    checked: bool = field(default=False, init=False, compare=False)  # validate() ran

    def checked_once(self) -> SegmentRequest:
        """This request, validated if nobody has yet (a request built directly rather than by `from_keywords`)."""
        return self if self.checked else self.validate()

    @classmethod
    def from_keywords(cls, input: Any, output: str | Path | None = None, **choices: Any) -> SegmentRequest:
        """A checked request from `segment_volume`'s flat keywords (tiling/output ones go into `options`)."""
        options = SegmentOptions(**{k: choices.pop(k) for k in list(choices) if k in OPTION_NAMES})
        choices["checkpoints"] = tuple(choices.get("checkpoints", ()))
        return cls(input=input, output=output, options=options, **choices).validate()

    @property
    def source(self) -> Any:
        """The input as `io.open_volume` takes it: an array or URL as given, else a Path."""
        if is_array(self.input) or is_url(self.input):
            return self.input
        text = str(self.input)
        return Path(unquote(urlsplit(text).path) if text.startswith("file://") else text)

    @property
    def auto_threshold(self) -> float | None:
        """The density threshold of `--prompts auto`; None when the prompts are not 'auto'."""
        if not self.auto_prompts:
            return None
        return PEAK_THRESHOLD if self.peak_threshold is None else float(self.peak_threshold)

    @property
    def auto_prompts(self) -> bool:
        return isinstance(self.prompts, str) and self.prompts == "auto"

    def note(self, message: str) -> None:
        if self.say is not None:
            self.say(message)

    def with_options(self, **changes: Any) -> SegmentRequest:
        """The same request with some `options` changed (checked again)."""
        return replace(self, options=replace(self.options, **changes)).validate()

    def validate(self) -> SegmentRequest:
        """EmsegError naming the option for a choice that no model could run; loads the point prompts."""
        self.options.validate()
        self._check_planes()
        self._check_names()
        self._check_peak_threshold()
        if self.device != "auto":  # a GPU that is not there: refused before anything is read or claimed
            resolve_device(self.device)
        self._check_dask()
        if self.report is not None:  # a report that cannot be written is refused before the run, not after it
            check_output_file(self.report, "--report", overwrite=True)
        object.__setattr__(self, "region", None if self.roi is None else parse_roi(self.roi))
        if self.mask_level is not None and (self.mask is None or self.mask_level < 0):
            raise EmsegError(f"--mask-level {self.mask_level}: give a level >= 0 of the image --mask names")
        if self.region is not None and self.options.into_input:
            raise EmsegError("--roi writes a label image of the region's shape, which cannot go into the input "
                             "image's labels/; use --out")
        points = None if self.prompts is None or self.auto_prompts else load_points(self.prompts)
        if points is not None and self.region is not None:
            raise EmsegError("--roi with point prompts: the points are in the input's coordinates, not the "
                             "region's; use --prompts auto, or crop the volume and shift the points yourself")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "checked", True)
        return self

    def _check_planes(self) -> None:
        """--planes xy,xz,yz → the axes in `options.planes`, the first one the run's own `axis`."""
        if not isinstance(self.options.planes, str):
            return
        axes = parse_planes(self.options.planes)
        if self.options.axis not in ("z", axes[0]):
            raise EmsegError(f"--axis {self.options.axis} and --planes {self.options.planes}: the first plane is the "
                             f"run's own ({plane_name(axes[0])}, --axis {axes[0]}); drop --axis")
        if len(axes) > 1 and self.prompts is not None:
            raise EmsegError("--planes with point prompts: prompts are placed on the run's own planes only; segment "
                             "one orientation, or drop --prompts")
        object.__setattr__(self, "options", replace(self.options, planes=axes, axis=axes[0]))

    def _check_names(self) -> None:
        """--model and --instances name something when given: an empty value is a typo, never the default."""
        if isinstance(self.model, str) and not self.model.strip():
            raise EmsegError(f"--model {self.model!r}: name a registered model (`emseg-rt models`) or a model "
                             "package directory, or leave --model out for the default model")
        if isinstance(self.instances, str):
            split_items(self.instances, "--instances", "mitochondria,granules")
        elif self.instances is not None and not all(isinstance(n, str) and n.strip() for n in self.instances):
            raise EmsegError(f"--instances {list(self.instances)!r}: every entry must be a class name")

    def _check_peak_threshold(self) -> None:
        """--peak-threshold is for --prompts auto, and for --instances (checked once the model is known)."""
        if self.peak_threshold is None:
            return
        if not self.auto_prompts and not self.instances:
            raise EmsegError("--peak-threshold is for --prompts auto and for --instances on a density model")
        if not np.isfinite(float(self.peak_threshold)):
            raise EmsegError(f"--peak-threshold {self.peak_threshold} must be a finite number")

    def _check_dask(self) -> None:
        if self.dask is None:
            return
        check_address(self.dask)
        if not isinstance(self.backend, str):
            raise EmsegError("--dask: workers load the model themselves; pass a backend name, not a loaded backend")
        if is_array(self.source):
            raise EmsegError("--dask: workers read the input themselves; pass a path or URL, not an in-memory "
                             "array")


def open_backend(request: SegmentRequest, note: Say) -> tuple[Backend, bool, str]:
    """The request's backend: (backend, whether the caller must close it, the device it runs on). A backend
    name is loaded (`runtime.loader`; 'auto' device resolved and said); a loaded Backend is used as it is."""
    if not isinstance(request.backend, str):
        return request.backend, False, request.device
    device = resolve_device(request.device, note)
    engine = load_backend(request.model, request.backend, device, request.precision, request.checkpoints,
                          batch=request.options.batch, say=note)
    return engine, True, device


@dataclass(frozen=True)
class ModelChoices:
    """What the request means for one loaded model: how tiles are prompted, which instances, which seeds."""

    mode: PromptMode
    instances: tuple[str, ...]
    seeds: WatershedSeeds | None


def check_against(engine: Backend, request: SegmentRequest, instances: bool = True) -> ModelChoices:
    """Refuse what this backend cannot run of `request`; how its tiles are prompted and its instances found.

    instances: False for `segment_labels` (no instance label images in memory)."""
    auto = request.auto_threshold is not None
    max_points = _points_per_tile(engine, request, auto)
    batch_max = engine.spec.details.get("batch_max")
    if batch_max and request.options.batch > batch_max:
        raise EmsegError(f"--batch {request.options.batch} exceeds the model package's largest batch ({batch_max}); "
                         f"pass --batch {batch_max} or export with a larger --batch-max")
    classes = parse_instance_classes(request.instances, tuple(engine.spec.classes)) if instances else ()
    seeds = _watershed_seeds(engine, classes, request)
    return ModelChoices(PromptMode(max_points, request.points, request.auto_threshold), classes, seeds)


def _points_per_tile(engine: Backend, request: SegmentRequest, auto: bool) -> int | None:
    """P, the points per tile of a window-prompted model (None for a prompt-free one). `auto` (--prompts auto)
    needs a window-prompted model with a density output."""
    if auto and (not engine.spec.prompts or "density" not in getattr(engine.spec, "extra_outputs", ())):
        raise EmsegError("--prompts auto needs a point-prompted model with a density output (prompt-das-*)")
    if engine.spec.prompts:
        max_points = points_per_window(engine)  # None: vanilla-sam's per-class prompts, or an unknown layout
        if max_points is None:
            raise EmsegError(f"the model needs per-tile prompts ({', '.join(engine.spec.prompts)}); `segment` runs "
                             "prompt-free models (scsam-*, sam-star-*, mae-star-*, surgicalsam-*) and "
                             "window-prompted ones (prompt-das-*)")
        return max_points
    if request.points is not None:
        raise EmsegError("--prompts: this model takes no prompts (point prompts are for prompt-das-*)")
    return None


def _watershed_seeds(engine: Backend, instances: tuple[str, ...], request: SegmentRequest) -> WatershedSeeds | None:
    """The instance stage's watershed settings: for --instances on a model with a density output, its peaks
    (the auto threshold, else --peak-threshold, else PEAK_THRESHOLD) seed it; None: connected components."""
    has_density = "density" in getattr(engine.spec, "extra_outputs", ())
    auto_threshold, peak_threshold = request.auto_threshold, request.peak_threshold
    if not instances or not has_density:
        if peak_threshold is not None and auto_threshold is None:
            raise EmsegError("--peak-threshold with --instances needs a model with a density output (prompt-das-*)")
        return None
    threshold = auto_threshold if auto_threshold is not None else (
        PEAK_THRESHOLD if peak_threshold is None else float(peak_threshold))
    return WatershedSeeds(threshold, NMS_KERNEL)
