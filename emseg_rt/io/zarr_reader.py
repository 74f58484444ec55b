"""Reading zarr v2/v3 arrays and OME-Zarr 0.4/0.5 images: local, remote (fsspec URLs) and in memory.

`path` may be a plain zarr array, an OME-Zarr image group, a label image (a `segment` output,
`VOL.zarr/labels/organelles`) or a bioformats2raw container (OME-Zarr 0.4 or 0.5: its image `0`, the first
its OME/ group's `series` lists, is opened, `key="1"` opens image 1); `labels=NAME` on an image picks its label
group `labels/NAME` (`label_names` is the one lookup of the names an image lists). Dataset paths are taken from
the `multiscales` metadata, never assumed (ome-zarr-py names levels s0, s1, ...; other writers 0, 1, ...).
Scale and translation compose the dataset's transforms with the multiscales-level ones, as the OME-Zarr spec
lays out. Remote stores (`http(s)://`, `s3://`, any fsspec protocol) go through zarr's FsspecStore, with the
path left exactly as given.
"""

from __future__ import annotations

import json
import math
import posixpath
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.metadata import ArrayV2Metadata
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from emseg_rt.checks import check_input_exists, is_url
from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import (
    PlaneStack,
    SqueezedArray,
    Volume,
    check_chunk_size,
    check_member,
    default_axes,
    first_line,
    import_optional,
    squeeze_non_spatial,
)

Location = Path | str  # a local path, or a URL kept as the string the user gave

# What a protocol needs beyond fsspec (the ImportError fsspec raises names it; we name the extra).
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "http": "aiohttp", "https": "aiohttp", "gs": "gcsfs",
                      "gcs": "gcsfs"}


def join_location(location: Location, *parts: str) -> Location:
    """`location/part/...`: Path joining for local paths, '/'-joining for URLs (never through Path)."""
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return posixpath.join(location.rstrip("/"), *(p.strip("/") for p in parts))


def fsspec_store(url: str) -> Any:
    """A read-only zarr FsspecStore for `url`; a missing protocol library is a one-line EmsegError naming the extra."""
    import_optional("fsspec", f"{url.split('://')[0]}:// URLs")
    protocol = url.split("://", 1)[0].lower()
    try:
        return FsspecStore.from_url(url, read_only=True)
    except ImportError as exc:
        package = _PROTOCOL_PACKAGES.get(protocol, "the fsspec implementation for it")
        raise EmsegError(f"reading {protocol}:// URLs needs {package}, which is not installed: "
                         "pip install 'emseg-rt[remote]'") from exc
    except (ValueError, TypeError) as exc:
        raise EmsegError(f"input {url}: cannot open this URL ({first_line(exc)})") from exc


def member(group: Any, name: str, what: str, where: Any) -> Any:
    """`group[name]` after `check_member`; None when the group has no such member."""
    try:
        return group[check_member(name, what, where)]
    except KeyError:
        return None


def looks_like_zarr(path: Path) -> bool:
    """True when the local directory `path` holds zarr v2 or v3 metadata (an array or a group)."""
    return any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup"))


def _open_node(location: Location) -> Any:
    """The zarr array or group at `location` (local path or URL), read-only; EmsegError when there is none."""
    if isinstance(location, Path):
        try:
            return zarr.open(str(location), mode="r")
        except Exception as exc:  # zarr raises many types for malformed metadata
            raise EmsegError(f"input {location} could not be opened as zarr: {first_line(exc)}") from exc
    store = fsspec_store(location)
    try:
        return zarr.open(store=store, mode="r")
    except (FileNotFoundError, KeyError) as exc:  # zarr 3.1: GroupNotFoundError is a FileNotFoundError
        raise EmsegError(f"input {location} is not a zarr array or group (no zarr.json, .zarray or .zgroup "
                         "found there)") from exc
    except EmsegError:
        raise
    except Exception as exc:  # network, permission and parse errors from fsspec / the server
        hint = ""
        if type(exc).__name__ == "NoCredentialsError":
            hint = "; for a public bucket set FSSPEC_S3='{\"anon\": true}'"
        raise EmsegError(f"input {location} could not be read: {first_line(exc)}{hint}") from exc


def chunk_counts(array: Any) -> tuple[int, int] | None:
    """(chunks stored, chunks the metadata declares) of a zarr array (or one with singleton axes squeezed out),
    counted from the store's listing: time in proportion to what is stored, never to the declared chunk grid
    (zarr's `nchunks_initialized` tests every key of the grid, hours for absurd metadata). Sharded arrays count
    a stored shard as all its chunks, as zarr does. None for an array that is not zarr; a store that cannot
    list its keys raises what it raises (remote stores)."""
    base = array
    while isinstance(base, (SqueezedArray, PlaneStack)):  # views over a stored array: count its chunks
        base = base._base
    if not isinstance(base, zarr.Array):
        return None
    unit = tuple(base.shards or base.chunks)
    grid = tuple(-(-int(s) // int(u)) for s, u in zip(base.shape, unit))
    per_unit = math.prod(int(u) // int(c) for u, c in zip(unit, base.chunks))
    prefix = f"{base.path}/" if base.path else ""

    async def keys() -> list[str]:
        return [key[len(prefix):] async for key in base.store.list_prefix(prefix)]

    present = sum(1 for key in sync(keys()) if _grid_key(base.metadata, key, grid))
    return present * per_unit, math.prod(grid) * per_unit


def _grid_key(metadata: Any, key: str, grid: tuple[int, ...]) -> bool:
    """Whether the stored `key` is the key of a chunk (or shard) of `grid` under the array's key encoding."""
    if not grid:
        return key == metadata.encode_chunk_key(())
    if isinstance(metadata, ArrayV2Metadata):
        separator, start = metadata.dimension_separator, ""
    else:  # v3: "default" keys are c/0/1/2 (or c.0.1.2), "v2" keys 0/1/2 or 0.1.2
        encoding = metadata.chunk_key_encoding
        separator = encoding.separator
        start = f"c{separator}" if encoding.name == "default" else ""
    if not key.startswith(start):
        return False
    try:
        coords = tuple(int(part) for part in key[len(start):].split(separator))
    except ValueError:
        return False
    return (len(coords) == len(grid) and all(0 <= c < g for c, g in zip(coords, grid))
            and metadata.encode_chunk_key(coords) == key)


def label_names(labels_group: zarr.Group, *, members: bool = False) -> list[str]:
    """The label image names an image's `labels` group lists: under "ome" (OME-Zarr 0.5) or at the top
    level (0.4). When it lists none: [], or with `members` the names of its member groups, sorted."""
    attrs = dict(labels_group.attrs)
    ome = attrs.get("ome")
    listed = ome["labels"] if isinstance(ome, dict) and "labels" in ome else attrs.get("labels")
    names = [str(name) for name in listed] if isinstance(listed, list) else []
    return names or (sorted(labels_group.group_keys()) if members else [])


def list_label_groups(path: Location) -> list[str]:
    """Names of the label groups of the OME-Zarr image at `path` (empty when it has none or is no image)."""
    try:
        node = zarr.open(str(path), mode="r") if not is_url(path) else zarr.open(store=fsspec_store(path), mode="r")
    except Exception:  # not zarr at all: no label groups
        return []
    try:
        if not isinstance(node, zarr.Group) or "labels" not in node:
            return []
        return label_names(node["labels"])
    except Exception:  # a remote store that cannot answer: no label groups found
        return []


def read_label_metadata(label_path: Location) -> dict:
    """The `image-label` dict of an OME label group (colours, properties with class names)."""
    group = zarr.open_group(str(label_path), mode="r") if not is_url(label_path) else zarr.open_group(
        store=fsspec_store(str(label_path)), mode="r")
    attrs = dict(group.attrs)
    meta = attrs.get("ome", {}).get("image-label") or attrs.get("image-label")
    if meta is None:
        raise EmsegError(f"{label_path} is not an OME-Zarr label image (no image-label metadata)")
    return json.loads(json.dumps(meta))


def dataset_scale(dataset: dict) -> tuple[float, ...]:
    """The `scale` transform of one multiscales dataset (level) as given, () when it has none."""
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            return tuple(float(v) for v in transform["scale"])
    return ()


def _transform_values(transforms: list, kind: str, ndim: int) -> np.ndarray | None:
    for transform in transforms or []:
        values = transform.get(kind) if isinstance(transform, dict) and transform.get("type") == kind else None
        if values is not None and len(values) == ndim:
            return np.asarray(values, dtype=np.float64)
    return None


def ome_scale_translation(multiscale: dict, dataset: dict, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Voxel size and origin of one level: the dataset's scale/translation, then the multiscales-level ones.

    physical = (index · s_dataset + t_dataset) · s_multiscale + t_multiscale.
    """
    ones, zeros = np.ones(ndim), np.zeros(ndim)
    level_transforms = dataset.get("coordinateTransformations", [])
    common = multiscale.get("coordinateTransformations", [])
    s_d = _transform_values(level_transforms, "scale", ndim)
    t_d = _transform_values(level_transforms, "translation", ndim)
    s_m = _transform_values(common, "scale", ndim)
    t_m = _transform_values(common, "translation", ndim)
    s_d, t_d = (ones if s_d is None else s_d), (zeros if t_d is None else t_d)
    s_m, t_m = (ones if s_m is None else s_m), (zeros if t_m is None else t_m)
    return tuple(float(v) for v in s_d * s_m), tuple(float(v) for v in t_d * s_m + t_m)


def multiscales_of(attrs: dict) -> list | None:
    """The `multiscales` list of a group's attributes (0.5 under "ome", 0.4 at the top level), or None."""
    ome = attrs.get("ome")
    return (ome.get("multiscales") if isinstance(ome, dict) else None) or attrs.get("multiscales")


def _member_hint(group: Any, *, groups: bool = False) -> str:
    """' (arrays: a, b)' (with `groups`: ' (groups: 0, 1)') listing the group's members, '' when none."""
    try:
        with warnings.catch_warnings():  # zarr warns of non-zarr files it lists (bioformats2raw's METADATA.ome.xml)
            warnings.simplefilter("ignore")
            members = sorted(group.group_keys() if groups else group.array_keys())
    except Exception:  # a remote store that cannot list
        return ""
    return f" ({'groups' if groups else 'arrays'}: {', '.join(members)})" if members else ""


def zarr_volume(location: Location, key: str | None = None, level: int | None = None, labels: str | None = None,
                *, spatial: bool = False) -> Volume:
    """Open a zarr / OME-Zarr volume at a local path or URL (see the module docstring); nothing but metadata is read."""
    if labels is not None:
        labels = check_member(labels, "label image", location)
        groups = list_label_groups(location)
        if labels not in groups:
            raise EmsegError(f"{location} has no label group labels/{labels}; it has: {', '.join(groups) or 'none'}")
        location = join_location(location, "labels", labels)
    if isinstance(location, Path):
        check_input_exists(location)
        if not location.is_dir() or not looks_like_zarr(location):
            raise EmsegError(f"input {location} is not a zarr array or group (no zarr.json, .zarray or .zgroup found)")
    return node_volume(_open_node(location), location, key, level, spatial=spatial)


def node_volume(node: Any, location: Location | None, key: str | None = None, level: int | None = None, *,
                spatial: bool = False) -> Volume:
    """A Volume for an open zarr array or group (`location` names it in messages; None for one in memory)."""
    kind = "group" if isinstance(node, zarr.Group) else "array"
    name = location if location is not None else f"in-memory zarr {kind}"
    node_path = location
    if key:
        if not isinstance(node, zarr.Group):
            raise EmsegError(f"--key {key!r} given but {name} is an array, not a group")
        key = check_member(key, "--key", name)
        try:
            node = node[key]
        except KeyError:
            try:
                members = ", ".join(sorted(node.keys())) or "none"
            except Exception:  # a remote store that cannot list
                members = "unknown (the store cannot list them)"
            raise EmsegError(f"{name} has no member {key!r}; members: {members}") from None
        node_path = join_location(location, key) if location is not None else None
        name = node_path if node_path is not None else f"{name} member {key!r}"
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        if not multiscales_of(attrs) and not key and _ome_value(attrs, "bioformats2raw.layout") is not None:
            node, node_path, name = _bioformats2raw_image(node, node_path, name)
            attrs = dict(node.attrs)
        multiscales = multiscales_of(attrs)
        if not multiscales:
            raise EmsegError(f"{name} is a zarr group, not an array or OME-Zarr image: choose an array with --key"
                             f"{_member_hint(node)}")
        return _ome_volume(node, multiscales[0], attrs, node_path, name, level, spatial)
    if level not in (None, 0):
        raise EmsegError(f"--level {level} given but {name} is a plain array, not an OME-Zarr image")
    check_chunk_size(node.chunks, node.dtype, f"input {name}")
    names = getattr(node.metadata, "dimension_names", None) or node.attrs.get("_ARRAY_DIMENSIONS")
    named = bool(names) and len(names) == node.ndim and all(names)
    axes = tuple(str(n) for n in names) if named else default_axes(node.ndim)
    volume = Volume(node_path, node, axes, (1.0,) * node.ndim, (None,) * node.ndim, False, None, dict(node.attrs),
                    format="zarr" if location is not None else "memory")
    if not named:
        return volume
    return squeeze_non_spatial(volume, [None] * node.ndim, f"input {name}", spatial)


def _ome_value(attrs: dict, key: str) -> Any:
    """`key` of a group's OME attributes: under "ome" (OME-Zarr 0.5) or at the top level (0.4); None if absent."""
    ome = attrs.get("ome")
    return ome[key] if isinstance(ome, dict) and key in ome else attrs.get(key)


def _bioformats2raw_image(group: Any, node_path: Location | None, name: Any) -> tuple[Any, Location | None, Any]:
    """Image 0 of a bioformats2raw container: the first path its OME group's `series` lists, else `0` (the layout
    numbers images 0, 1, ... in the order of the OME-XML's Image elements); `--key N` opens another."""
    series = _ome_value(dict(group["OME"].attrs), "series") if "OME" in group else None
    first = str(series[0]) if isinstance(series, list) and series else "0"
    image = member(group, first, "bioformats2raw OME series path", name)
    if not isinstance(image, zarr.Group):
        raise EmsegError(f"{name} is a bioformats2raw container without image {first!r}; choose an image with "
                         f"--key{_member_hint(group, groups=True)}")
    path = join_location(node_path, first) if node_path is not None else None
    return image, path, path if path is not None else f"{name} image {first!r}"


def _ome_datasets(ms: Any, name: Any) -> list[dict]:
    """The `datasets` of one multiscales entry, each a dict with a member path; EmsegError (one line) else."""
    datasets = ms.get("datasets") if isinstance(ms, dict) else None
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
        raise EmsegError(f"{name}: its multiscales metadata lists no datasets (levels); it is not a valid OME-Zarr "
                         "image: fix the metadata or pass an array with --key")
    return datasets


def _ome_volume(group: Any, ms: dict, attrs: dict, node_path: Location | None, name: Any, level: int | None,
                spatial: bool) -> Volume:
    datasets = _ome_datasets(ms, name)
    level = 0 if level is None else level
    if not 0 <= level < len(datasets):
        raise EmsegError(f"{name} has {len(datasets)} level(s); --level {level} is out of range")
    dataset_path = datasets[level].get("path")
    array = member(group, dataset_path, "multiscales dataset path", name)
    if not isinstance(array, zarr.Array):
        what = "which does not exist" if array is None else "which is a group, not an array"
        raise EmsegError(f"{name}: multiscales names level {dataset_path!r}, {what}")
    check_chunk_size(array.chunks, array.dtype, f"input {name} (level {dataset_path})")
    axes_meta = ms.get("axes") or [{"name": n} for n in default_axes(array.ndim)]
    if not isinstance(axes_meta, list) or len(axes_meta) != array.ndim:
        listed = f"{len(axes_meta)} axes" if isinstance(axes_meta, list) else f"axes {axes_meta!r}"[:80]
        raise EmsegError(f"{name}: multiscales lists {listed} but level {dataset_path!r} has "
                         f"{array.ndim} dimensions")
    axes = tuple(str(a.get("name")) if isinstance(a, dict) else str(a) for a in axes_meta)
    units = tuple(a.get("unit") if isinstance(a, dict) else None for a in axes_meta)
    types = [a.get("type") if isinstance(a, dict) else None for a in axes_meta]
    try:
        voxel_size, translation = ome_scale_translation(ms, datasets[level], array.ndim)
    except (TypeError, ValueError, AttributeError):
        raise EmsegError(f"{name}: the multiscales coordinateTransformations of level {dataset_path!r} are not "
                         "lists of numbers; fix the metadata") from None
    volume = Volume(node_path, array, axes, voxel_size, units, True, dataset_path, attrs, translation,
                    format="zarr" if node_path is not None else "memory")
    return squeeze_non_spatial(volume, types, f"input {name}", spatial)
