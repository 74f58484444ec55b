"""N5 containers (OpenOrganelle / COSEM, BigDataViewer, Paintera) through tensorstore's `n5` driver.

zarr 3 has no N5 store; tensorstore (Google's) reads N5 from local disk, http(s) and s3 alike, chunk by chunk.
N5 lists dimensions fastest-first (x, y, z): the volume is presented in C order, (z, y, x), as
zarr-python's N5Store and the COSEM tools present it; per-axis metadata written in N5 order is reversed
with it. Physical metadata, first found wins:
    dataset `transform` (COSEM: axes, scale, translate, units; `ordering` "C" unless "F"),
    the group's COSEM `multiscales` entry for the level,
    `pixelResolution` {dimensions, unit} (N5 order; at the group, times the level's `downsamplingFactors`),
    `resolution` (N5 order, no unit).
`key` names the dataset (or multiscale group) inside the container; `level` picks a level of a COSEM
`multiscales` group or of a group with datasets s0, s1, ...
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import (
    ArrayView,
    Volume,
    check_chunk_size,
    check_member,
    default_axes,
    first_line,
    import_optional,
    squeeze_non_spatial,
    unit_name,
)
from emseg_rt.io.zarr_reader import Location, join_location

_MAX_LISTED = 20


def looks_like_n5(path: Path) -> bool:
    """A directory named *.n5, or one holding N5's attributes.json."""
    return path.is_dir() and (path.suffix.lower() == ".n5" or (path / "attributes.json").is_file())


def _kvstore_spec(ts: Any, location: Location) -> dict:
    if isinstance(location, Path):
        return {"driver": "file", "path": str(location.resolve()).rstrip("/") + "/"}
    try:
        return ts.KvStore.Spec(location.rstrip("/") + "/").to_json()
    except Exception as exc:  # tensorstore has no kvstore for this URL scheme
        raise EmsegError(f"input {location}: tensorstore cannot read N5 from this URL ({first_line(exc)})") from exc


def _with_path(spec: dict, node: str) -> dict:
    path = posixpath.join(spec.get("path", ""), node) if node else spec.get("path", "")
    return {**spec, "path": path.rstrip("/") + "/"}


class _Container:
    """One N5 container: attributes.json of any node, opening a dataset."""

    def __init__(self, location: Location) -> None:
        self.ts = import_optional("tensorstore", "N5 containers")
        self.location = location
        self.spec = _kvstore_spec(self.ts, location)
        try:
            self.kvstore = self.ts.KvStore.open(self.spec).result()
        except Exception as exc:
            raise EmsegError(f"input {location} could not be opened: {first_line(exc)}") from exc

    def attributes(self, node: str) -> dict | None:
        """The node's attributes.json as a dict; None when it has none."""
        key = posixpath.join(node, "attributes.json") if node else "attributes.json"
        try:
            result = self.kvstore.read(key).result()
        except Exception as exc:  # network or permission errors
            raise EmsegError(f"input {join_location(self.location, node)}: cannot read attributes.json "
                             f"({first_line(exc)})") from exc
        if result.state != "value":
            return None
        try:
            return json.loads(result.value)
        except ValueError as exc:
            raise EmsegError(f"input {join_location(self.location, node)}: attributes.json is not valid JSON "
                             f"({first_line(exc)})") from exc

    def exists(self, node: str) -> bool:
        if isinstance(self.location, Path):
            return (self.location / node).is_dir()
        return self.attributes(node) is not None

    def datasets(self) -> list[str] | None:
        """Up to _MAX_LISTED dataset paths in a local container (None for a remote one: it cannot be listed)."""
        if not isinstance(self.location, Path):
            return None
        found: list[str] = []
        root = self.location
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root).as_posix()
            # chunk folders are numbers: never walked into
            dirnames[:] = sorted(d for d in dirnames if not d.isdigit() and not d.startswith("."))
            if rel.count("/") > 6:
                dirnames[:] = []
            if "attributes.json" in filenames and "dimensions" in (self.attributes("" if rel == "." else rel) or {}):
                found.append(rel)
                dirnames[:] = []
            if len(found) >= _MAX_LISTED:
                break
        return found

    def open(self, node: str) -> Any:
        try:
            spec = {"driver": "n5", "kvstore": _with_path(self.spec, node)}
            return self.ts.open(spec, read=True, write=False).result()
        except Exception as exc:
            raise EmsegError(f"input {join_location(self.location, node)} could not be opened as an N5 dataset: "
                             f"{first_line(exc)}") from exc


def _listing(container: _Container) -> str:
    names = container.datasets()
    if names is None:
        return ""
    shown = ", ".join(names[:_MAX_LISTED]) or "none"
    return f" (datasets: {shown}{', ...' if len(names) >= _MAX_LISTED else ''})"


def _physical(dataset_attrs: dict, group_attrs: dict, level_entry: dict | None, ndim: int
              ) -> tuple[tuple[str, ...] | None, tuple[float, ...], tuple[str | None, ...], tuple[float, ...]]:
    """(axes or None, voxel size, units, translation), all in C order (z, y, x)."""
    transform = dataset_attrs.get("transform") or (level_entry or {}).get("transform")
    if isinstance(transform, dict) and len(transform.get("scale", ())) == ndim:
        order = (lambda v: list(v)[::-1]) if transform.get("ordering") == "F" else list
        axes = tuple(order(transform["axes"])) if len(transform.get("axes", ())) == ndim else None
        units = tuple(unit_name(u) for u in order(transform.get("units") or [None] * ndim))
        translation = tuple(float(v) for v in order(transform.get("translate") or [0.0] * ndim))
        return axes, tuple(float(v) for v in order(transform["scale"])), units, translation
    axes_attr = dataset_attrs.get("axes")
    axes = tuple(str(a) for a in axes_attr[::-1]) if isinstance(axes_attr, list) and len(axes_attr) == ndim else None
    units_attr = dataset_attrs.get("units")
    units = tuple(unit_name(u) for u in units_attr[::-1]) if isinstance(units_attr, list) and len(units_attr) == ndim \
        else (None,) * ndim
    resolution = dataset_attrs.get("pixelResolution")
    factors = [1.0] * ndim
    if resolution is None and "pixelResolution" in group_attrs:
        resolution = group_attrs["pixelResolution"]
        factors = dataset_attrs.get("downsamplingFactors") or factors
    if isinstance(resolution, dict) and len(resolution.get("dimensions", ())) == ndim and len(factors) == ndim:
        size = [float(r) * float(f) for r, f in zip(resolution["dimensions"], factors)][::-1]
        unit = unit_name(resolution.get("unit"))
        return axes, tuple(size), (unit,) * ndim if unit else units, (0.0,) * ndim
    if isinstance(dataset_attrs.get("resolution"), list) and len(dataset_attrs["resolution"]) == ndim:
        return axes, tuple(float(r) for r in dataset_attrs["resolution"][::-1]), units, (0.0,) * ndim
    return axes, (1.0,) * ndim, units, (0.0,) * ndim


def n5_volume(location: Location, key: str | None = None, level: int | None = None, *, spatial: bool = False) -> Volume:
    """Open an N5 dataset (or a level of a multiscale N5 group) lazily; reads attributes.json files only."""
    container = _Container(location)
    node = check_member(key, "--key", location) if key else ""
    name = join_location(location, node) if node else location
    attrs = container.attributes(node)
    if attrs is None and node and not container.exists(node):
        raise EmsegError(f"{location} has no N5 dataset or group {key!r}{_listing(container)}")
    attrs = attrs or {}
    group_attrs: dict = {}
    level_entry: dict | None = None
    dataset_path: str | None = None
    if "dimensions" not in attrs:
        group_attrs = attrs
        multiscales = attrs.get("multiscales")
        if isinstance(multiscales, list) and multiscales and multiscales[0].get("datasets"):
            levels = [d.get("path") for d in multiscales[0]["datasets"]]
        elif (container.attributes(posixpath.join(node, "s0")) or {}).get("dimensions"):
            levels = [f"s{i}" for i in range((level or 0) + 1)]  # n5-viewer layout: s0, s1, ...
        else:
            what = "an N5 container" if not node else "an N5 group"
            raise EmsegError(f"{name} is {what}, not a dataset: choose a dataset with --key{_listing(container)}")
        index = 0 if level is None else level
        if not 0 <= index < len(levels):
            raise EmsegError(f"{name} has {len(levels)} level(s); --level {level} is out of range")
        if isinstance(multiscales, list) and multiscales:
            level_entry = multiscales[0]["datasets"][index]
        dataset_path = check_member(levels[index], "multiscales dataset path", name)
        node = posixpath.join(node, dataset_path)
        attrs = container.attributes(node)
        if not attrs or "dimensions" not in attrs:
            raise EmsegError(f"{name}: level {dataset_path!r} is not an N5 dataset")
    elif level not in (None, 0):
        raise EmsegError(f"--level {level} given but {name} is a single N5 dataset, not a multiscale group")
    store = container.open(node).T  # N5 order (x, y, z) → C order (z, y, x)
    shape = tuple(int(s) for s in store.shape)
    ndim = len(shape)
    try:
        axes, voxel_size, units, translation = _physical(attrs, group_attrs, level_entry, ndim)
    except (TypeError, ValueError, AttributeError, KeyError):
        raise EmsegError(f"input {name}: its resolution / transform attributes are not lists of numbers; fix the "
                         "attributes.json") from None
    chunks = tuple(int(c) for c in store.chunk_layout.read_chunk.shape)
    check_chunk_size(chunks, store.dtype.numpy_dtype, f"input {name}")
    array = ArrayView(lambda index: store[index].read().result(), shape, store.dtype.numpy_dtype,
                      chunks, keep=store, explicit_index=True, kind="n5")
    named = axes is not None
    volume = Volume(join_location(location, node) if node else location, array, axes or default_axes(ndim),
                    voxel_size, units, False, dataset_path, {**group_attrs, **attrs}, translation, format="n5")
    return squeeze_non_spatial(volume, [None] * ndim, f"input {name}", spatial) if named else volume
