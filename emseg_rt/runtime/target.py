"""Where a `segment` run writes its label image, and with which levels, zarr format and OME-Zarr version.

- A new output (`--out OUT.zarr`): OUT is itself the label image (OME-Zarr 0.5, zarr v3), with physical
  metadata carried from the input level that was segmented (scale, translation, units: none invented) and
  `levels` stride-sampled levels, 2× smaller in y and x each (default from the plane size).
- `--into-input`: `IN.zarr/labels/<name>` in the input image's own zarr format and OME-Zarr version (0.4 on
  zarr v2, 0.5 on zarr v3), with the image's levels (same count, shapes and transforms). The image's arrays
  are never opened for writing; the name joins the `labels` list only when the label image is complete.

Every label image is locked on its real path (`output_lock`): an image's label image beside the image (the
same lock whether it is written with `--into-input`, through a symlink to the image, or as `--out
IMAGE/labels/NAME`), any other output beside itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import register_label, require_labels_group
from emseg_rt.io.pyramid import Level, default_level_count, levels_like_image, pyramid_levels
from emseg_rt.package import lock_path_beside
from emseg_rt.runtime.options import SegmentOptions


@dataclass(frozen=True)
class OutputTarget:
    """output: the label image directory; lock: its lock file (None: beside it); image: the input image whose
    `labels` list gets the name once complete (`--into-input` only)."""

    output: Path
    levels: tuple[Level, ...]
    version: str = "0.5"
    lock: Path | None = None
    image: Path | None = None
    name: str = ""

    @property
    def nested(self) -> bool:
        return self.image is not None

    def register(self, extra: tuple[str, ...] = ()) -> None:
        """Add the finished label image (and `extra` ones beside it: instance label images) to the input
        image's `labels` list (no-op for a new output)."""
        if self.image is not None:
            for name in (self.name, *extra):
                register_label(self.image, name, self.version, _lock_beside(self.image, "labels"))


def plan_target(source: Any, volume: Any, output: str | Path | None, options: SegmentOptions,
                level: int | None) -> OutputTarget:
    """The OutputTarget for this run; EmsegError (one line) for an impossible combination."""
    if not options.into_input:
        if output is None:
            raise EmsegError("no output given: pass --out OUT.zarr, or --into-input to write into the input image")
        count = options.levels or default_level_count(volume.shape, "".join(volume.axes))
        return OutputTarget(Path(output), pyramid_levels(volume.shape, "".join(volume.axes), volume.voxel_size,
                                                         volume.translation, count), lock=output_lock(Path(output)))
    return _into_input_target(source, volume, output, options, level)


def _into_input_target(source: Any, volume: Any, output: str | Path | None, options: SegmentOptions,
                       level: int | None) -> OutputTarget:
    if output is not None:
        raise EmsegError("--into-input writes into the input image's labels/; do not also pass --out")
    if not isinstance(source, Path) or not volume.is_ome or volume.format != "zarr":
        raise EmsegError("--into-input needs a local OME-Zarr image as input (labels are written into its labels/)")
    if level not in (None, 0):
        raise EmsegError("--into-input segments level 0 (the label image gets the image's own levels); drop --level")
    if options.levels is not None:
        raise EmsegError("--into-input uses the input image's levels; drop --levels")
    image_path = Path(volume.path)
    image = zarr.open_group(str(image_path), mode="r")
    attrs = dict(image.attrs)
    version = "0.5" if "ome" in attrs else "0.4"
    if image.metadata.zarr_format != (3 if version == "0.5" else 2):
        raise EmsegError(f"input {image_path}: OME-Zarr {version} on zarr v{image.metadata.zarr_format} is not a "
                         "valid combination; --into-input writes 0.4 into zarr v2 and 0.5 into zarr v3 images")
    multiscale = (attrs.get("ome", attrs))["multiscales"][0]
    if len(multiscale.get("axes", ())) != 3:
        raise EmsegError(f"input {image_path} has axes {[a.get('name') for a in multiscale.get('axes', ())]}; "
                         "--into-input writes labels into 3D (z, y, x) images only; use --out")
    levels = levels_like_image(image, multiscale, volume.shape)
    if isinstance(image.get("labels"), zarr.Array):
        raise EmsegError(f"input {image_path}: its 'labels' is an array, not the OME-Zarr labels group that "
                         "--into-input writes into; use --out")
    require_labels_group(image_path, version)
    output = image_path / "labels" / options.label_name
    return OutputTarget(output, levels, version, lock=output_lock(output), image=image_path, name=options.label_name)


def output_lock(output: Path) -> Path:
    """The lock file of the label image `output`, keyed on its real path: beside the image for a label image in
    an image's `labels/` (never inside its zarr hierarchy, where readers would trip on it), else beside it."""
    labels = output.parent.resolve()
    image = labels.parent
    if labels.name == "labels" and any((image / name).is_file() for name in ("zarr.json", ".zgroup")):
        return lock_path_beside(image, f"labels-{output.name}")
    return lock_path_beside(output)


def _lock_beside(image: Path, what: str) -> Path:
    """A lock file next to the image's real path (the image's `labels` list: `register`)."""
    return lock_path_beside(image, what)
