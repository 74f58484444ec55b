"""Finding a label image where the OME-Zarr spec puts one, for `emseg-rt eval` and anything else that scores labels.

`open_label_image(path, name, role=...)` accepts, in this order:

    path                                              label image opened
    ------------------------------------------------  ----------------------------------------------------
    any group with a labels/ group, and `name` given  path/labels/<name>
    a label image (`multiscales` + `image-label`)     path itself: a `segment` output root (its
                                                      probabilities/ and .emseg-rt/ members are ignored),
                                                      or a label group such as cell.zarr/labels/ground_truth
    an OME image (or group) with a labels/ group      path/labels/<the one label image>, or for role
                                                      "truth" labels/ground_truth, for role "prediction"
                                                      the one that is not ground_truth
    a zarr array, N5 / HDF5 / TIFF volume of integers path itself, without class names

Anything else (an image without labels/, a float array, a group with neither) is a one-line EmsegError.
OME-Zarr 0.4 (zarr v2, attributes at the top level) and 0.5 (zarr v3, under "ome") are read alike. Arrays
are opened through `open_volume` (level 0, nothing read until indexed); this module reads only metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.constants import GROUND_TRUTH
from emseg_rt.errors import EmsegError
from emseg_rt.io.readers import check_whole_fits, open_volume
from emseg_rt.io.volume import Volume, check_member, first_line
from emseg_rt.io.zarr_reader import label_names, looks_like_zarr
from emseg_rt.io.zarr_reader import member as zarr_member

ROLES = {"prediction": "--pred-labels", "truth": "--gt-labels"}  # role → the eval option that names a label image
ROLE_WORDS = {"prediction": "prediction", "truth": "ground truth"}
INSTANCE_SUFFIX = "_instances"  # `segment --instances`: <class>_instances beside the semantic label image


@dataclass(frozen=True)
class LabelImage:
    """One label volume found by `open_label_image`.

    volume:      level 0, lazily read: `volume.array[b0:b1]` → numpy (b1-b0, Y, X) integers (0 = background).
    class_names: label value → class name from the `image-label` properties ("class", else "name"); value 0
                 (background) is never listed; None when the metadata names no class.
    path:        what was opened, e.g. cell.zarr/labels/ground_truth.
    name:        the label image's name under labels/, None when `path` was given directly.
    """

    volume: Volume
    class_names: dict[int, str] | None
    path: Path
    name: str | None

    def read(self) -> np.ndarray:
        """The whole volume in memory, (Z, Y, X) integers; a chunk that cannot be read or decoded (corrupt,
        truncated, unreadable) is an EmsegError naming the volume instead of a codec traceback, and so is a
        volume larger than the memory available."""
        check_whole_fits(self.volume, str(self.path))
        try:
            return np.asarray(self.volume.array[...])
        except EmsegError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:  # zarr's codecs raise RuntimeError / ValueError
            raise EmsegError(f"{self.path}: cannot read the volume: a chunk is corrupt or unreadable "
                             f"({first_line(exc)[:200]})") from None


def open_label_image(path: str | Path, name: str | None = None, *, role: str) -> LabelImage:
    """Open the label image at or inside `path` (layouts: module docstring); only metadata is read.

    name: the label image under `path`/labels/ to open (the --pred-labels / --gt-labels option).
    role: "prediction" or "truth": says which label image to pick among several, and words the messages.
    Raises EmsegError (one line) when `path` holds no label image, several without a way to choose, a
    `name` it does not have, non-integer values or an unfinished segment output.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
    path = Path(path)
    if name is not None:
        name = check_member(name, ROLES[role], path)
    if not (path.is_dir() and looks_like_zarr(path)):  # missing, N5, HDF5, TIFF: open_volume says which
        return _plain_label_volume(open_volume(path), path, name, role)
    node = _open_zarr(path)
    if isinstance(node, zarr.Array):
        return _plain_label_volume(open_volume(path), path, name, role)
    return _label_image_in_group(node, path, name, role)


def instance_images(label: LabelImage) -> dict[str, LabelImage]:
    """The finished `segment --instances` label images of `label`'s classes, by class name: inside a
    `segment` output root (OUT.zarr/<class>_instances) or beside a label image under labels/
    (IN.zarr/labels/<class>_instances). Unfinished ones (status "incomplete") are left out."""
    found: dict[str, LabelImage] = {}
    places = [label.path] + ([label.path.parent] if label.name is not None else [])
    for class_name in sorted(set((label.class_names or {}).values())):
        if "/" in class_name or class_name in ("", ".", ".."):  # a name that would leave the image: no instances
            continue
        for place in places:
            path = place / f"{class_name}{INSTANCE_SUFFIX}"
            if not (path.is_dir() and looks_like_zarr(path)):
                continue
            try:
                node = _open_zarr(path)
                if not isinstance(node, zarr.Group) or not _is_label_image(_ome_attributes(node)):
                    continue
                found[class_name] = _label_image(node, path, None, "prediction")
            except EmsegError:
                continue  # unfinished or not integer: scored by connected components instead
            break
    return found


def check_same_shape(prediction: LabelImage, truth: LabelImage) -> None:
    """EmsegError (one line, naming both paths and shapes) unless both volumes have the same shape."""
    if prediction.volume.shape != truth.volume.shape:
        raise EmsegError(f"prediction {prediction.path} has shape {prediction.volume.shape} but ground truth "
                         f"{truth.path} has shape {truth.volume.shape}; score volumes of the same region and level")


def _open_zarr(path: Path) -> Any:
    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for malformed metadata
        raise EmsegError(f"{path} could not be opened as zarr: {first_line(exc)}") from exc


def _ome_attributes(group: zarr.Group) -> dict:
    """The group's OME metadata: the 0.5 "ome" entries over the 0.4 top-level attributes."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    return {**attrs, **ome} if isinstance(ome, dict) else attrs


def _is_label_image(ome: dict) -> bool:
    return bool(ome.get("multiscales")) and isinstance(ome.get("image-label"), dict)


def _label_image_in_group(group: zarr.Group, path: Path, name: str | None, role: str) -> LabelImage:
    ome = _ome_attributes(group)
    has_labels = "labels" in group and isinstance(group["labels"], zarr.Group)
    if name is not None:
        return _named_label_image(group, path, name, role, has_labels, _is_label_image(ome))
    if _is_label_image(ome):
        return _label_image(group, path, None, role)
    if has_labels:
        chosen = choose_label_name(label_names(group["labels"], members=True), path, role)
        return _listed_label_image(group, path, chosen, role)
    if ome.get("multiscales"):
        raise EmsegError(f"{path} is an image, not a label image, and has no labels/ group; pass its label image "
                         f"or a segment output as the {ROLE_WORDS[role]}")
    raise EmsegError(f"{path} is a zarr group with neither a label image (multiscales + image-label metadata) nor a "
                     "labels/ group; pass a label image, an OME-Zarr image with labels/, or an integer array")


def _named_label_image(group: zarr.Group, path: Path, name: str, role: str, has_labels: bool,
                       is_label_image: bool) -> LabelImage:
    option = ROLES[role]
    if not has_labels:
        hint = f" ({path} is a label image itself: leave out {option})" if is_label_image else ""
        raise EmsegError(f"{option} {name}: {path} has no labels/ group{hint}")
    names = label_names(group["labels"], members=True)
    if name not in names:
        unlisted = " (the group exists, but the labels/ metadata does not list it: is it unfinished?)" \
            if name in group["labels"] else ""
        raise EmsegError(f"{option} {name}: {path} has no label image labels/{name}{unlisted}; it has: "
                         f"{', '.join(names) or 'none'}")
    return _listed_label_image(group, path, name, role)


def choose_label_name(names: list[str], path: Path, role: str) -> str:
    """Which of an image's label images to score when none was named: the only one; else for role "truth"
    GROUND_TRUTH, for role "prediction" the only one that is not GROUND_TRUTH; else EmsegError naming the option."""
    if len(names) == 1:
        return names[0]
    if role == "truth" and GROUND_TRUTH in names:
        return GROUND_TRUTH
    others = [n for n in names if n != GROUND_TRUTH and not n.endswith(INSTANCE_SUFFIX)]
    if role == "prediction" and len(others) == 1:
        return others[0]
    if not names:
        raise EmsegError(f"{path} has a labels/ group with no label image in it; pass a label image as the "
                         f"{ROLE_WORDS[role]}")
    raise EmsegError(f"{path} has several label images ({', '.join(names)}): choose one with {ROLES[role]} NAME")


def _listed_label_image(image: zarr.Group, path: Path, name: str, role: str) -> LabelImage:
    """The label image `path`/labels/<name> that the labels/ metadata lists; EmsegError when it is not there."""
    member = zarr_member(image["labels"], name, f"{path}/labels lists the label image", path)
    if not isinstance(member, zarr.Group):
        raise EmsegError(f"{path}/labels lists the label image {name!r}, but there is no group labels/{name}")
    return _label_image(member, path / "labels" / name, name, role)


def _label_image(group: zarr.Group, path: Path, name: str | None, role: str) -> LabelImage:
    """The label image `group` (at `path`): its level 0 through open_volume and its class names."""
    ome = _ome_attributes(group)
    _refuse_unfinished(dict(group.attrs), path)
    if not ome.get("multiscales"):
        raise EmsegError(f"{path} is not an OME-Zarr label image (no multiscales metadata); pass a label image or "
                         "an integer array")
    volume = open_volume(path)
    _check_integer(volume, path, role)
    label_meta = ome.get("image-label")
    return LabelImage(volume, class_names_of(label_meta) if isinstance(label_meta, dict) else None, path, name)


def _plain_label_volume(volume: Volume, path: Path, name: str | None, role: str) -> LabelImage:
    if name is not None:
        raise EmsegError(f"{ROLES[role]} {name}: {path} is an array, not an image with a labels/ group")
    _check_integer(volume, path, role)
    return LabelImage(volume, None, path, None)


def _refuse_unfinished(attrs: dict, path: Path) -> None:
    run = attrs.get("emseg_rt")
    if isinstance(run, dict) and run.get("status") == "incomplete":
        raise EmsegError(f"{path} is an unfinished segment output (status 'incomplete'); resume the segment run "
                         "before scoring it")


def _check_integer(volume: Volume, path: Path, role: str) -> None:
    if volume.dtype.kind not in "uib":
        raise EmsegError(f"{ROLE_WORDS[role]} {path} holds {volume.dtype} values, not integer labels; pass a label "
                         "image or an integer array")


def class_names_of(image_label: dict) -> dict[int, str] | None:
    """Label value → class name from `image-label` properties: the "class" key, else "name"; background
    (value 0) and entries without an integer value or a name are left out; None when nothing is left."""
    names: dict[int, str] = {}
    for entry in image_label.get("properties") or []:
        if not isinstance(entry, dict):
            continue
        value = entry.get("label-value")
        class_name = entry.get("class", entry.get("name"))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0 and class_name is not None:
            names[value] = str(class_name)
    return names or None
