"""Read and write the volumes this package's data tools use: OME-Zarr 0.5 (zarr v3) images and label groups.

`write_phantom` writes an image with a `labels/<name>` group holding `image-label` metadata (colours and
class names), readable by napari and neuroglancer. `read_array` opens any of: a plain zarr array, an
OME-Zarr image group (first multiscale level, taken from the metadata, never assumed to be `0`), or a
label group (`VOL.zarr/labels/ground_truth`); `VOL.zarr` with `labels=NAME` picks that label group.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from emseg_rt.data.phantom import CLASS_NAMES, Phantom
from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import open_volume, write_ome_image, write_ome_labels

GROUND_TRUTH = "ground_truth"


def write_volume_with_labels(
    path: str | Path, image: np.ndarray, labels: dict[str, np.ndarray], voxel_size: tuple[float, float, float],
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> Path:
    """Write image (Z, Y, X) uint8 and label volumes (Z, Y, X) uint8 as OME-Zarr 0.5; atomically (temp + rename)."""
    path = Path(path)
    if path.exists():
        raise EmsegError(f"{path} already exists; choose another output path or delete it")
    if not path.parent.exists():
        raise EmsegError(f"output folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_ome_image(tmp, image, voxel_size=voxel_size, axes="zyx", units=None, overwrite=True)
    for name, volume in labels.items():
        write_ome_labels(tmp, name, volume, class_names)
    tmp.rename(path)
    return path


def write_phantom(path: str | Path, phantom: Phantom) -> Path:
    """Write a phantom: image at the root, ground truth in `labels/ground_truth`; attrs record how it was made."""
    out = write_volume_with_labels(
        path, phantom.image, {GROUND_TRUTH: phantom.labels}, (phantom.anisotropy, 1.0, 1.0)
    )
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["emseg_rt_phantom"] = {
        "seed": phantom.seed, "noise": phantom.noise, "anisotropy": phantom.anisotropy,
        "shape": list(phantom.image.shape), "classes": list(CLASS_NAMES),
    }
    return out


def open_array(path: str | Path, labels: str | None = None):
    """The lazy (Z, Y, X) array at `path` (see module docstring); `labels` names a label group inside it."""
    path = Path(path)
    if labels is not None:
        if labels not in list_label_groups(path):
            raise EmsegError(f"{path} has no label group labels/{labels}; it has: "
                             f"{', '.join(list_label_groups(path)) or 'none'}")
        path = path / "labels" / labels
    volume = open_volume(path)
    if volume.ndim not in (2, 3):
        raise EmsegError(f"{path} has {volume.ndim} dimensions; expected a 2D slice or a 3D volume (Z, Y, X)")
    return volume


def read_array(path: str | Path, labels: str | None = None) -> np.ndarray:
    """Read the whole (Z, Y, X) (or (Y, X)) array of `open_array` into memory."""
    return np.asarray(open_array(path, labels)[...])


def list_label_groups(path: str | Path) -> list[str]:
    """Names of the label groups of an OME-Zarr image (empty when it has none)."""
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # not zarr at all: no label groups
        return []
    if not isinstance(node, zarr.Group) or "labels" not in node:
        return []
    attrs = dict(node["labels"].attrs)
    return list(attrs.get("ome", attrs).get("labels", []))
