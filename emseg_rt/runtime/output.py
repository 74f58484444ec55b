"""The output of a `segment_volume` run: its location checks, its arrays, its run record and done-markers.

Layout (OME-Zarr 0.5, zarr v3)::

    OUT.zarr/zarr.json                   root group; attributes["emseg_rt"] = run configuration + status
    OUT.zarr/labels/<name>/s0            (Z, Y, X) uint8 labels (uint16 past 255 classes), image-label metadata
    OUT.zarr/probabilities/s0            (K, Z, Y, X) uint8 per-class probabilities (with probabilities=True)
    OUT.zarr/.emseg-rt/run.json          configuration and its hash
    OUT.zarr/.emseg-rt/done/<hash>/<i>   one empty marker per finished write block (whole output chunks)

A block's marker is touched only after all its chunks are written, so a crash leaves at worst a block
without its marker, redone on resume; the root says "complete" only once every block has its marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import create_ome_image, create_ome_labels

RUN_DIR = ".emseg-rt"


def config_hash(config: dict) -> str:
    """sha256 of a run configuration (JSON, sorted keys): equal hashes mean equal output bytes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def prepare_output(output: Path, source: Path, resume: bool, overwrite: bool) -> bool:
    """Check the output location; returns True when an existing run may be resumed."""
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise EmsegError(f"output {output} is the input or inside it; choose another --out")
    if output.exists() and not output.is_dir():
        raise EmsegError(f"output {output} is a file, not a directory; choose another --out")
    parent = output.parent if output.parent != Path("") else Path(".")
    if not parent.exists():
        raise EmsegError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK | os.X_OK)):
        raise EmsegError(f"cannot write {output}: {parent if not output.exists() else output} is not writable")
    if output.exists():
        is_ours = (output / RUN_DIR).is_dir() or (output / "zarr.json").is_file() or not any(output.iterdir())
        if overwrite:
            if not is_ours:
                raise EmsegError(f"output {output} exists and is not an emseg-rt output; refusing to delete it")
            shutil.rmtree(output)
            return False
        if resume:
            return (output / RUN_DIR / "run.json").is_file()
        if any(output.iterdir()):
            raise EmsegError(f"output {output} already exists; pass --resume to finish it or --overwrite to replace it")
    return False


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

    def create(self, config: dict, root_attrs: dict) -> None:
        """Write the root group, the label (and probability) arrays and run.json; EmsegError if not writable."""
        layout = self.layout
        try:
            self.root.mkdir(exist_ok=True)
            (self.root / RUN_DIR).mkdir(exist_ok=True)
            group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
            group.attrs.update({"ome": {"version": "0.5"}, "emseg_rt": root_attrs})
            self.labels = create_ome_labels(self.root, layout.label_name, layout.shape, layout.classes,
                                            voxel_size=layout.voxel_size, axes=layout.axes, units=layout.units,
                                            chunks=layout.chunks, dtype=layout.label_dtype)
            if layout.probabilities:
                self.probabilities = self._create_probabilities()
            write_json_atomic(self.root / RUN_DIR / "run.json", {"config_hash": self.run_hash, "config": config})
        except OSError as exc:
            raise EmsegError(f"cannot write {self.root}: {exc.strerror or exc} ({exc.filename or self.root}); "
                             "choose a writable --out") from exc
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def _create_probabilities(self) -> Any:
        layout = self.layout
        units = layout.units if isinstance(layout.units, tuple) else (layout.units,) * len(layout.shape)
        return create_ome_image(
            self.root / "probabilities", (len(layout.classes),) + layout.shape, np.uint8,
            voxel_size=(1.0,) + layout.voxel_size, axes="c" + layout.axes, units=(None,) + tuple(units),
            chunks=(1,) + layout.chunks, name="probabilities",
            extra_attributes={"emseg_rt": {"classes": list(layout.classes), "scale": "sigmoid(logit) * 255"}})

    def reopen(self) -> None:
        """Open an interrupted run's arrays; EmsegError when it was written with another configuration."""
        previous = json.loads((self.root / RUN_DIR / "run.json").read_text())
        if previous.get("config_hash") != self.run_hash:
            raise EmsegError(f"{self.root} was written with a different configuration (model, backend, precision, "
                             "tiling or input differ); pass --overwrite to start again")
        self.labels = zarr.open_array(str(self.label_path / "s0"), mode="r+")
        if self.layout.probabilities:
            self.probabilities = zarr.open_array(str(self.root / "probabilities" / "s0"), mode="r+")
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def done_blocks(self) -> set[int]:
        return {int(p.name) for p in self.done_dir.iterdir() if p.name.isdigit()}

    def write_block(self, index: int, region: tuple[slice, ...], labels: np.ndarray, probabilities: np.ndarray | None
                    ) -> None:
        """Write one block's whole chunks, then its done-marker (never the other way round)."""
        self.labels[region] = labels
        if self.probabilities is not None and probabilities is not None:
            self.probabilities[(slice(None),) + region] = probabilities
        (self.done_dir / str(index)).touch()

    def mark_complete_if_done(self, blocks_total: int) -> bool:
        """Set the root's status to 'complete' when every block has its marker; returns whether it did."""
        if not all((self.done_dir / str(i)).exists() for i in range(blocks_total)):
            return False
        group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
        attrs = dict(group.attrs.get("emseg_rt", {}))
        attrs["status"] = "complete"
        group.attrs.update({"emseg_rt": attrs})
        return True
