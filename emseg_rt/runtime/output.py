"""The output of a `segment_volume` run: its arrays, its run record and its done-markers.

The output root is an OME-Zarr label image (docs/runtime.md "Output layout" says why)::

    OUT.zarr/zarr.json             `multiscales` + `image-label` (classes, colours); attributes["emseg_rt"]:
                                   run configuration and status ("incomplete" until every level is written)
    OUT.zarr/s0, s1, ...           (Z, Y, X) uint8 labels (uint16 past 255 classes); s1.. stride-sampled;
                                   (Y, X), axes y, x, for a 2D image (run as one plane: `OutputLayout.planar`)
    OUT.zarr/probabilities/s0      (K, Z, Y, X) uint8 per-class probabilities (with probabilities=True)
    OUT.zarr/.emseg-rt/            a zarr group holding the run state, so zarr and OME readers walk it
                                   without warnings: attributes["emseg_rt_run"] = configuration, its hash and
                                   the input fingerprint; `done-<hash>` (one uint8 per write block) and
                                   `levels-<hash>` (one per pyramid level) are the done-markers (`DoneMarkers`);
                                   `density-<hash>` the density the instance watershed reads; a later stage
                                   keeps its own markers and arrays in a group of its own
                                   (`instances-<hash>-<class>/`, `runtime.instances`)

With `--into-input` the same label image is `IN.zarr/labels/<name>`, in the input's zarr format and
OME-Zarr version, and its name joins the `labels` list only once it is complete.

Zarr v3 outputs are sharded (unless `--no-shards`): every level of a label image, the probabilities and the
density hold one shard file per write block (`OutputLayout.shards`), each written whole by the one writer of
that block; the chunks inside a shard are what viewers read. The done-markers stay one small file per item.

The run record is written first (one atomic file), so a directory is recognisably ours before anything else
is in it (`runtime.claim`). A block's marker is written only after all its chunks (shards) are, so a crash
leaves at worst a block without its marker, redone on resume (zarr writes each chunk or shard file to a
temporary name and renames it, so no file is ever half written; a kill leaves at most a `.partial` file); the root says "complete" only once every block and
every level has its marker. The record holds the input's fingerprint: a resume refuses an input that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import LabelImageSpec, create_array, create_ome_group
from emseg_rt.io.pyramid import Level, write_lower_levels
from emseg_rt.io.volume import PlaneStack
from emseg_rt.runtime.claim import RUN_DIR, RUN_KEY, read_record, write_record
from emseg_rt.runtime.fingerprint import DIGEST_BYTES

# The temporary files a kill can leave in our output tree: zarr's atomic writes (`<name>.<uuid hex>.partial`)
# and the run record's (`.<name>.tmp<pid>`); a resume removes them (`remove_write_leftovers`).
_LEFTOVER = re.compile(r".+\.[0-9a-f]{32}\.partial|\..+\.tmp[0-9]+")


# A run configuration leaves out keys at these values (so runs without them keep their identity).
UNRECORDED = {"threads": 1}


def config_hash(config: dict) -> str:
    """sha256 of a run configuration (JSON, sorted keys): equal hashes mean equal output bytes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class DoneMarkers:
    """One done-marker array of the run state: 1-D uint8, one chunk of `width` elements per item; item i's chunk
    is written once item i (a write block, a pyramid level, a block of an instance pass) is completely written.
    zarr writes each chunk file atomically, so the chunk files that exist are the markers that were set
    (`marker_indices`). A marker of width > 1 carries a value: a write block's is the digest of the input it
    read (`fingerprint.block_digest`)."""

    path: Path
    zarr_format: int
    width: int = 1

    def create(self, length: int) -> None:
        """An empty marker array of `length` items (at least 1), replacing any; its group must exist."""
        group = zarr.open_group(str(self.path.parent), mode="r+")
        create_array(group, self.path.name, (max(length, 1) * self.width,), np.uint8, (self.width,), None,
                     self.zarr_format, overwrite=True, compressors=None)

    def exists(self) -> bool:
        """True once the array's metadata is written (a kill while creating it leaves at most a directory)."""
        return (self.path / "zarr.json").is_file() or (self.path / ".zarray").is_file()

    def done(self) -> set[int]:
        """The indices whose markers are set (none when the array does not exist)."""
        return marker_indices(self.path)

    def mark(self, index: int, value: bytes = b"\x01") -> None:
        """Set marker `index` to `value` (`width` bytes); the item's data must be completely written already."""
        if len(value) != self.width:
            raise ValueError(f"a marker of {self.path.name} holds {self.width} bytes, not {len(value)}")
        array = zarr.open_array(str(self.path), mode="r+")
        array[index * self.width:(index + 1) * self.width] = np.frombuffer(value, np.uint8)

    def value(self, index: int) -> bytes:
        """The bytes marker `index` was set to (zeros when it is not set)."""
        array = zarr.open_array(str(self.path), mode="r")
        return np.asarray(array[index * self.width:(index + 1) * self.width], np.uint8).tobytes()


@dataclass(frozen=True)
class OutputLayout:
    """What the output looks like: s0's shape (Z, Y, X) and chunks, the label dtype, the OME metadata and
    the pyramid levels (s0 first), the number of write blocks. `nested`: the label image sits in an image's
    `labels/` (`--into-input`). `planar`: a 2D image run as one plane (shape (1, Y, X)); its label image (and
    probabilities) drop the z axis: (Y, X) levels, axes y, x (`image_levels`, `label_spec`), written through a
    `PlaneStack` so blocks and instances index it as (1, Y, X). `shards`: s0's shard shape (Z, Y, X), one write
    block deep and spanning the plane, `chunks` then being the chunks inside it (`plan.output_chunking`); None:
    one file per chunk (zarr v2, `--no-shards`)."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    classes: tuple[str, ...]
    label_dtype: np.dtype
    label_name: str
    voxel_size: tuple[float, ...]
    units: tuple[str | None, ...]
    axes: str
    probabilities: bool
    levels: tuple[Level, ...] = field(default=())
    blocks: int = 1
    version: str = "0.5"
    nested: bool = False
    density: bool = False  # keep the model's density per voxel in the run state (the instance watershed)
    planar: bool = False
    shards: tuple[int, ...] | None = None

    @property
    def zarr_format(self) -> int:
        return 2 if self.version == "0.4" else 3

    def _image(self, values: tuple) -> tuple:
        """Per-axis values (Z, Y, X) as the label image has them: without z for a planar run."""
        return values[1:] if self.planar else values

    @property
    def image_levels(self) -> tuple[Level, ...]:
        """The label image's levels (`levels`, without z for a planar run)."""
        return tuple(Level(lvl.path, self._image(lvl.shape), self._image(lvl.scale), self._image(lvl.translation))
                     for lvl in self.levels)

    def label_spec(self) -> LabelImageSpec:
        return LabelImageSpec(name=self.label_name, axes="".join(self._image(tuple(self.axes))),
                              units=self._image(tuple(self.units)), classes=self.classes, levels=self.image_levels,
                              dtype=self.label_dtype, chunks=self._image(self.chunks), version=self.version,
                              shards=None if self.shards is None else self._image(self.shards))

    def volume_view(self, image_array: Any, axis: int = 0) -> Any:
        """An array of the label image as the run indexes it, (Z, Y, X): itself, or for a planar run a
        `PlaneStack` adding the z axis at `axis` (1 for (K, Z, Y, X) probabilities)."""
        return PlaneStack(image_array, axis) if self.planar else image_array


class OutputStore:
    """The arrays and markers of one run's output directory (created fresh or reopened to resume)."""

    def __init__(self, root: Path, layout: OutputLayout, run_hash: str) -> None:
        self.root = root
        self.layout = layout
        self.run_hash = run_hash
        self.state = root / RUN_DIR
        self.labels: Any = None
        self.probabilities: Any = None
        self.density: Any = None

    @property
    def label_path(self) -> Path:
        return self.root

    def create(self, config: dict, root_attrs: dict, fingerprint: str) -> None:
        """Write the run record (first), then the label image, its level arrays and the markers."""
        try:
            record = {"config_hash": self.run_hash, "config": config, "input_fingerprint": fingerprint}
            write_record(self.state, {RUN_KEY: record}, self.layout.zarr_format)
            self._create_arrays(root_attrs)
        except OSError as exc:
            raise _write_error(self.root, exc) from exc

    def _create_arrays(self, root_attrs: dict) -> None:
        """Every array of the output, the block markers last: their presence says that all the others exist,
        so a kill at any point of the creation leaves either no block markers (a resume creates everything
        again) or a complete set of arrays."""
        layout = self.layout
        arrays = create_ome_group(self.root, layout.label_spec(), source_image=self.source_image,
                                  extra_attributes={"emseg_rt": root_attrs})
        self.labels = layout.volume_view(arrays[0])
        self.markers(self._levels_name).create(len(layout.levels))
        if layout.probabilities:
            self.probabilities = self._create_probabilities()
        if layout.density:
            self.density = self.create_state_array(self._density_name, layout.shape, np.uint8, layout.chunks,
                                                   layout.shards)
        self.block_markers.create(layout.blocks)

    @property
    def source_image(self) -> str | None:
        """Where the label images of this output point as their source image: the input image for
        `--into-input`, none for a new output."""
        return "../../" if self.layout.nested else None

    # -- the run state, for this store and the stages after it (each in a group of its own)
    def markers(self, name: str) -> DoneMarkers:
        """The done-marker array `name` of the run state (e.g. "done-<hash>", "instances-<hash>-<class>/pyramid")."""
        return DoneMarkers(self.state / name, self.layout.zarr_format)

    def create_state_group(self, name: str) -> Path:
        """A group `name` in the run state for a stage's markers and arrays (kept when it exists)."""
        zarr.open_group(str(self.state / name), mode="a", zarr_format=self.layout.zarr_format)
        return self.state / name

    def create_state_array(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
                           shards: tuple[int, ...] | None = None) -> Any:
        """An empty array `name` of the run state (replacing any), e.g. "density-<hash>", "<group>/counts";
        sharded when `shards` is given (zarr v3)."""
        group = zarr.open_group(str((self.state / name).parent), mode="r+")
        sharding = {"shards": shards} if shards is not None else {}
        return create_array(group, (self.state / name).name, shape, dtype, chunks, None, self.layout.zarr_format,
                            overwrite=True, **sharding)

    def state_array(self, name: str) -> Any:
        """The run state's array `name`, open for reading and writing."""
        return zarr.open_array(str(self.state / name), mode="r+")

    def set_status(self, status: str, image: Path | None = None) -> None:
        """attributes["emseg_rt"]["status"] of a label image of this output (default: the root), e.g.
        "complete"; the other run attributes are kept."""
        group = zarr.open_group(str(image or self.root), mode="r+")
        attrs = dict(group.attrs.get("emseg_rt", {}))
        attrs["status"] = status
        group.attrs.update({"emseg_rt": attrs})

    @property
    def _density_name(self) -> str:
        return f"density-{self.run_hash[:16]}"

    @property
    def density_path(self) -> Path:
        """The run state's density array (Z, Y, X) uint8, density·255 rounded (with layout.density)."""
        return self.state / self._density_name

    @property
    def _done_name(self) -> str:
        return f"done-{self.run_hash[:16]}"

    @property
    def block_markers(self) -> DoneMarkers:
        """The write blocks' markers, each the digest of the input the block read (`fingerprint.block_digest`)."""
        return DoneMarkers(self.state / self._done_name, self.layout.zarr_format, DIGEST_BYTES)

    @property
    def _levels_name(self) -> str:
        return f"levels-{self.run_hash[:16]}"

    def _create_probabilities(self) -> Any:
        layout = self.layout
        s0, image = layout.image_levels[0], layout.label_spec()
        spec = LabelImageSpec(name="probabilities", axes="c" + image.axes, units=(None,) + image.units,
                              classes=(), dtype=np.dtype(np.uint8), chunks=(1,) + image.chunks,
                              version=layout.version,  # a block's K classes in one shard
                              shards=None if image.shards is None else (len(layout.classes),) + image.shards,
                              levels=(Level("s0", (len(layout.classes),) + s0.shape, (1.0,) + s0.scale,
                                            (0.0,) + s0.translation),))
        attrs = {"emseg_rt": {"classes": list(layout.classes), "scale": "sigmoid(logit) * 255"}}
        arrays = create_ome_group(self.root / "probabilities", spec, extra_attributes=attrs, image_label=False)
        return layout.volume_view(arrays[0], axis=1)

    def reopen(self, config: dict, fingerprint: str, root_attrs: dict) -> None:
        """Open an interrupted run's arrays (creating any a kill left unwritten). EmsegError when it was
        written with another configuration (`config`, naming what differs) or the input's description changed
        since (`fingerprint.input_fingerprint`; its content is checked block by block by the caller)."""
        previous = read_run_record(self.root) or {}
        if previous.get("config_hash") != self.run_hash:
            raise EmsegError(f"{self.root} was written with a different configuration "
                             f"({config_difference(previous.get('config'), config)}); resume it as it was started, "
                             "or pass --overwrite to start again")
        if previous.get("input_fingerprint") != fingerprint:
            raise EmsegError(f"the input changed since {self.root} was started (its shape, dtype, chunks, axes, voxel "
                             "size, units or translation differ); a resume would mix old and new blocks; pass "
                             "--overwrite to start again")
        try:
            remove_write_leftovers(self.root)
            self.attach()
            levels = self.markers(self._levels_name)
            if not levels.exists():  # an output of an earlier version killed before its level markers
                levels.create(len(self.layout.levels))  # none set: the pyramid is written again from s0
        except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
            self._recreate_before_any_marker(root_attrs)
        except OSError as exc:
            raise _write_error(self.root, exc) from exc

    def _recreate_before_any_marker(self, root_attrs: dict) -> None:
        """A kill between the run record and the arrays: no block can be marked done yet, so create them."""
        try:
            if self.done_blocks():
                raise EmsegError(f"{self.root}: done-markers exist but the label array is missing; the output was "
                                 "damaged; pass --overwrite to start again")
        except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
            pass
        self._create_arrays(root_attrs)

    def attach(self) -> None:
        """Open the arrays of an output the driver created (a Dask worker writing its blocks)."""
        self.labels = self.open_level0(self.root, mode="r+")
        self.state_array(self._done_name)  # raises when a kill left it unwritten
        if self.layout.probabilities:
            self.probabilities = self.layout.volume_view(
                zarr.open_array(str(self.root / "probabilities" / "s0"), mode="r+"), axis=1)
        if self.layout.density:
            self.density = zarr.open_array(str(self.density_path), mode="r+")

    def open_level0(self, image: Path, mode: str = "r") -> Any:
        """s0 of a label image of this output (the semantic one at the root, or an instance one) as the run
        indexes it, (Z, Y, X) (`OutputLayout.volume_view`)."""
        return self.layout.volume_view(zarr.open_array(str(image / self.layout.levels[0].path), mode=mode))

    def done_blocks(self) -> set[int]:
        """The write blocks whose markers are set; FileNotFoundError when the marker array is missing."""
        markers = self.block_markers
        if not markers.exists():
            raise FileNotFoundError(markers.path)
        return markers.done()

    def input_digest(self, index: int) -> bytes:
        """The digest of the input that finished block `index` read (recorded in its marker)."""
        return self.block_markers.value(index)

    def write_block(self, index: int, region: tuple[slice, ...], labels: np.ndarray, probabilities: np.ndarray | None,
                    density: np.ndarray | None, input_digest: bytes) -> None:
        """Write one block's whole chunks (shards), then its done-marker (never the other way round), which records
        `input_digest`, the digest of the input planes the block was computed from. density: the block's
        (Z, Y, X) float density (layout.density), stored as uint8 round(clip(d, 0, 1)·255)."""
        try:
            self._discard_shards(region)
            self.labels[region] = labels
            if self.probabilities is not None and probabilities is not None:
                self.probabilities[(slice(None),) + region] = probabilities
            if self.density is not None and density is not None:
                self.density[region] = np.rint(np.clip(density, 0.0, 1.0) * 255).astype(np.uint8)
            self.mark_done(index, input_digest)
        except OSError as exc:
            raise _write_error(self.root, exc) from exc

    def _discard_shards(self, region: tuple[slice, ...]) -> None:
        """Delete the shard files of the block at `region` (one per array: shards span the plane) before they
        are written: zarr merges a write into the shard it finds, so a shard an earlier, killed attempt left
        (whole, as zarr renames each into place; torn only on a store without atomic renames, which zarr's
        checksummed shard index refuses) never enters the rewrite, whose bytes then equal an uninterrupted
        run's. Keys are zarr v3's default encoding, c/i/j/k, as `create_array` makes them."""
        layout = self.layout
        if layout.shards is None:
            return
        shard = tuple((s.start or 0) // depth for s, depth in zip(region, layout.shards))
        image = "/".join(map(str, layout._image(shard)))
        paths = [self.root / layout.levels[0].path / "c" / image]
        if self.probabilities is not None:
            paths.append(self.root / "probabilities" / "s0" / "c" / "0" / image)
        if self.density is not None:
            paths.append(self.density_path / "c" / "/".join(map(str, shard)))
        for path in paths:
            path.unlink(missing_ok=True)

    def mark_done(self, index: int, input_digest: bytes) -> None:
        """Write block `index`'s done-marker, the digest of its input (its chunks must be written already)."""
        self.block_markers.mark(index, input_digest)

    def write_pyramid(self) -> int:
        """Fill the levels below s0 that have no marker yet (stride sampling, one streaming pass each, only
        once every block is done); returns how many it wrote."""
        markers = self.markers(self._levels_name)
        done = markers.done()
        pending = [i for i in range(1, len(self.layout.levels)) if i not in done]
        for index in pending:
            try:
                if self.layout.shards is not None:  # written whole again: nothing a killed attempt left is merged
                    shutil.rmtree(self.root / self.layout.levels[index].path / "c", ignore_errors=True)
                write_lower_levels(self.root, self.layout.image_levels, [index])
                markers.mark(index)
            except OSError as exc:
                raise _write_error(self.root, exc) from exc
        return len(pending)

    def mark_complete_if_done(self, blocks_total: int, before_complete: Callable[[], None] | None = None) -> bool:
        """Write the pyramid once every block has its marker, run `before_complete` (the instance stage), then
        set the root's status to 'complete'; returns whether the output is complete."""
        if len(self.done_blocks() & set(range(blocks_total))) < blocks_total:
            return False
        self.write_pyramid()
        if before_complete is not None:
            try:
                before_complete()
            except OSError as exc:
                raise _write_error(self.root, exc) from exc
        self.set_status("complete")
        return True


def config_difference(previous: Any, config: dict) -> str:
    """What differs between a recorded run configuration and this run's, for a message: "threads: 2 then, 1 now;
    ..." (the first three keys), or a note that the output predates the current run format."""
    if not isinstance(previous, dict):
        return "its run record is unreadable"
    if previous.get("format") != config.get("format"):
        return (f"written by another emseg-rt version: run format {previous.get('format')}, "
                f"{config.get('format')} now")
    def get(record: dict, key: str) -> Any:
        return record.get(key, UNRECORDED.get(key))

    keys = sorted(k for k in set(previous) | set(config) if get(previous, k) != get(config, k))
    parts = [f"{k}: {_short(get(previous, k))} then, {_short(get(config, k))} now" for k in keys[:3]]
    if "threads" in keys:
        parts.append("set OMP_NUM_THREADS to the thread count it was started with")
    if "shards" in keys and ("shards" in previous) != ("shards" in config):
        parts.append("pass --no-shards to resume an output written without shards" if "shards" not in previous
                     else "leave out --no-shards to resume an output written with shards")
    return "; ".join(parts) or "same options, other hash"


def _short(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def marker_indices(array_dir: Path) -> set[int]:
    """The set markers of a 1-D marker array: the indices of its chunk files (one element per chunk). zarr
    writes each chunk file atomically, so a file that exists is a marker that was completely written."""
    chunk_dir = array_dir / "c" if (array_dir / "c").is_dir() else array_dir  # v3 keys c/i, v2 ('/') keys i
    try:
        return {int(p.name) for p in chunk_dir.iterdir() if p.name.isdigit()}
    except FileNotFoundError:
        return set()


def done_markers(root: Path) -> set[int]:
    """The finished write blocks of the output at `root` (any configuration's markers)."""
    state = root / RUN_DIR
    names = [p for p in state.iterdir() if p.name.startswith("done-")] if state.is_dir() else []
    return set().union(*(marker_indices(d) for d in names))


def remove_write_leftovers(root: Path) -> None:
    """Remove the temporary files a killed run left in its own output tree `root` (`_LEFTOVER`: zarr's
    `.partial` files and the run record's temporary files; the caller holds the output's lock, so none is
    being written). They hide nothing a reader sees, but the finished output would not equal a run that was
    never interrupted."""
    for directory, _, files in os.walk(root):
        for name in files:
            if _LEFTOVER.fullmatch(name):
                Path(directory, name).unlink(missing_ok=True)


def read_run_record(root: Path) -> dict | None:
    """The run record of the output at `root` (None when there is none)."""
    return read_record(root)


def _write_error(root: Path, exc: OSError) -> EmsegError:
    """One line for a filesystem error while writing the output (disk full, read-only, permissions)."""
    return EmsegError(f"cannot write {root}: {exc.strerror or exc} ({exc.filename or root}); free space or fix "
                      "permissions, then rerun with --resume (finished blocks are kept)")
