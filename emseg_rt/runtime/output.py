"""The output of a `segment_volume` run: its location checks, its arrays, its run record and done-markers.

Layout (OME-Zarr 0.5, zarr v3)::

    OUT.zarr/zarr.json                   root group; attributes["emseg_rt"] = run configuration + status
    OUT.zarr/labels/<name>/s0            (Z, Y, X) uint8 labels (uint16 past 255 classes), image-label metadata
    OUT.zarr/probabilities/s0            (K, Z, Y, X) uint8 per-class probabilities (with probabilities=True)
    OUT.zarr/.emseg-rt/run.json          configuration and its hash
    OUT.zarr/.emseg-rt/done/<hash>/<i>   one empty marker per finished write block (whole output chunks)

The run record is written first (atomically), so a directory is recognisably ours before anything else
is in it (`runtime.claim`). A block's marker is touched only after all its chunks are written, so a crash
leaves at worst a block without its marker, redone on resume; the root says "complete" only once every
block has its marker. The record holds the input's fingerprint: a resume refuses an input that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import create_ome_image, create_ome_labels
from emseg_rt.runtime.claim import RUN_DIR, RUN_RECORD


def config_hash(config: dict) -> str:
    """sha256 of a run configuration (JSON, sorted keys): equal hashes mean equal output bytes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


@dataclass(frozen=True)
class OutputLayout:
    """What the output arrays look like: shape (Z, Y, X), chunks, label dtype and the OME metadata."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    classes: tuple[str, ...]
    label_dtype: np.dtype
    label_name: str
    voxel_size: tuple[float, ...]
    units: Any
    axes: str
    probabilities: bool


class OutputStore:
    """The arrays and markers of one run's output directory (created fresh or reopened to resume)."""

    def __init__(self, root: Path, layout: OutputLayout, run_hash: str) -> None:
        self.root = root
        self.layout = layout
        self.run_hash = run_hash
        self.done_dir = root / RUN_DIR / "done" / run_hash[:16]
        self.labels: Any = None
        self.probabilities: Any = None

    @property
    def label_path(self) -> Path:
        return self.root / "labels" / self.layout.label_name

    def create(self, config: dict, root_attrs: dict, fingerprint: str) -> None:
        """Write the run record (first), the root group and the label (and probability) arrays."""
        try:
            (self.root / RUN_DIR).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.root / RUN_DIR / RUN_RECORD,
                              {"config_hash": self.run_hash, "config": config, "input_fingerprint": fingerprint})
            group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
            group.attrs.update({"ome": {"version": "0.5"}, "emseg_rt": root_attrs})
            self._create_arrays()
        except OSError as exc:
            raise _write_error(self.root, exc) from exc
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def _create_arrays(self) -> None:
        layout = self.layout
        self.labels = create_ome_labels(self.root, layout.label_name, layout.shape, layout.classes,
                                        voxel_size=layout.voxel_size, axes=layout.axes, units=layout.units,
                                        chunks=layout.chunks, dtype=layout.label_dtype)
        if layout.probabilities:
            self.probabilities = self._create_probabilities()

    def _create_probabilities(self) -> Any:
        layout = self.layout
        units = layout.units if isinstance(layout.units, tuple) else (layout.units,) * len(layout.shape)
        return create_ome_image(
            self.root / "probabilities", (len(layout.classes),) + layout.shape, np.uint8,
            voxel_size=(1.0,) + layout.voxel_size, axes="c" + layout.axes, units=(None,) + tuple(units),
            chunks=(1,) + layout.chunks, name="probabilities",
            extra_attributes={"emseg_rt": {"classes": list(layout.classes), "scale": "sigmoid(logit) * 255"}})

    def reopen(self, fingerprint: str, root_attrs: dict) -> None:
        """Open an interrupted run's arrays (creating any a kill left unwritten). EmsegError when it was
        written with another configuration or the input changed since."""
        previous = json.loads((self.root / RUN_DIR / RUN_RECORD).read_text())
        if previous.get("config_hash") != self.run_hash:
            raise EmsegError(f"{self.root} was written with a different configuration (model, backend, precision, "
                             "tiling or input differ); pass --overwrite to start again")
        if previous.get("input_fingerprint") != fingerprint:
            raise EmsegError(f"the input changed since {self.root} was started (its chunk files differ); a resume "
                             "would mix old and new blocks; pass --overwrite to start again")
        try:
            self.labels = zarr.open_array(str(self.label_path / "s0"), mode="r+")
            if self.layout.probabilities:
                self.probabilities = zarr.open_array(str(self.root / "probabilities" / "s0"), mode="r+")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            self._recreate_before_any_marker(root_attrs)
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def _recreate_before_any_marker(self, root_attrs: dict) -> None:
        """A kill between the run record and the arrays: no block can be marked done yet, so create them."""
        if self.done_dir.is_dir() and any(self.done_dir.iterdir()):
            raise EmsegError(f"{self.root}: done-markers exist but the label array is missing; the output was "
                             "damaged; pass --overwrite to start again")
        group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
        group.attrs.update({"ome": {"version": "0.5"}, "emseg_rt": root_attrs})
        self._create_arrays()

    def attach(self) -> None:
        """Open the arrays of an output the driver created (a Dask worker writing its blocks)."""
        self.labels = zarr.open_array(str(self.label_path / "s0"), mode="r+")
        if self.layout.probabilities:
            self.probabilities = zarr.open_array(str(self.root / "probabilities" / "s0"), mode="r+")

    def done_blocks(self) -> set[int]:
        return {int(p.name) for p in self.done_dir.iterdir() if p.name.isdigit()}

    def write_block(self, index: int, region: tuple[slice, ...], labels: np.ndarray, probabilities: np.ndarray | None
                    ) -> None:
        """Write one block's whole chunks, then its done-marker (never the other way round)."""
        try:
            self.labels[region] = labels
            if self.probabilities is not None and probabilities is not None:
                self.probabilities[(slice(None),) + region] = probabilities
            (self.done_dir / str(index)).touch()
        except OSError as exc:
            raise _write_error(self.root, exc) from exc

    def mark_complete_if_done(self, blocks_total: int) -> bool:
        """Set the root's status to 'complete' when every block has its marker; returns whether it did."""
        if not all((self.done_dir / str(i)).exists() for i in range(blocks_total)):
            return False
        group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
        attrs = dict(group.attrs.get("emseg_rt", {}))
        attrs["status"] = "complete"
        group.attrs.update({"emseg_rt": attrs})
        return True


def _write_error(root: Path, exc: OSError) -> EmsegError:
    """One line for a filesystem error while writing the output (disk full, read-only, permissions)."""
    return EmsegError(f"cannot write {root}: {exc.strerror or exc} ({exc.filename or root}); free space or fix "
                      "permissions, then rerun with --resume (finished blocks are kept)")
