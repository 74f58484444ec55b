"""Instances from the semantic labels: `segment --instances CLASS[,CLASS]`, a stage every model family gets.

Each requested class's mask (s0 == the class's label value) is split into connected components, face
connectivity (6-neighbour in 3D), exactly as `scipy.ndimage.label` would split the whole volume, but one
write block at a time (planes b0..b1-1 along the segmenting axis), so only one block and the equivalence
table are ever in memory:

1. provisional pass, per block k: `ndimage.label` of the block's mask gives local IDs 1..n_k (in scan order
   of first appearance, planes first); global provisional ID = offset_k + local, offset_k = n_0+..+n_(k-1).
   Where a foreground voxel of block k-1's last plane faces one of block k's first plane (same in-plane
   position), their two components are one: the pass records those (local k-1, local k) pairs and n_k.
2. equivalence table: union-find over the provisional IDs joined by the recorded pairs; every set gets the
   final ID of the rank of its smallest provisional ID. Provisional IDs are ordered by first appearance in
   scan order, so final IDs are 1..N in order of first appearance: the result equals the whole-volume
   `ndimage.label` relabelled by first appearance (`relabel_by_first_appearance`), voxel for voxel.
3. relabel pass, per block: label the block again (deterministic: the same local IDs), map each local ID
   through the table, write uint32.

With a density head (Prompt-DAS), `seeds` switches the method to a marker watershed that splits touching
objects while staying a components method: per plane, the density's peaks inside the mask (`peak_markers`:
the same max-pool NMS and threshold as `--prompts auto`, a plateau peak one marker) flood `-density` within
the mask (scikit-image; components no marker reaches are pieces of their own), and the pixels on the lines
between pieces are cut from the mask (`cut_plane`). Instances are the 3D face-connected components of the cut
mask, computed exactly as below; each cut pixel then takes the ID of its plane's nearest labelled pixel
(`fill_cuts`, per plane, so per block), and each block's IDs are renumbered by first appearance of the
filled block (a filled cut pixel can precede its component's first uncut voxel). Cuts and fills see one
plane only and the cut mask alone links across block boundaries, so the result is independent of the block
size; with no two peaks in any component it is exactly the components method.

Resumability (`InstanceStage`): each class's stage keeps its state in the run's output (`OutputStore`), in
the group `.emseg-rt/instances-<hash>-<class>/`, with the same done-markers the semantic blocks use
(`DoneMarkers`): the provisional pass stores each block's count and boundary pairs (`counts`, `pairs-<k>`)
before setting the block's `provisional` marker, the table (`offsets`, `table`) has the marker `table-done`,
the relabel pass one `relabelled` marker per block and the pyramid one marker. The instance label image's
root says `"status": "incomplete"` until all of it is written (set through `OutputStore.set_status`), and
the run's root is marked complete only after every class's instance stage. `write_instances` is the stage.

Without a density head, each class has a rule (`runtime.instance_rules.InstanceRule`, defaults by class name,
recorded in the run configuration): holes are filled per plane before the components pass (block-local, so
the components are still exact), the relabel pass writes the components to the run-state array `components`
(uint32, planes first) instead of the instance image, a bounding-box pass (one read of `components`, per block;
marker `bbox-done`, array `bbox`) finds each component's box, and the split pass takes the components in ID
order: each is cut from its box (plus a voxel), removed below the rule's min_size or split by the
distance-transform watershed (`instance_rules.split_component`), and its pieces get final IDs, consecutive over
the components in their order, pieces by first appearance inside their component. The result equals the rule
applied to each component of `ndimage.label` of the hole-filled whole mask. The split pass keeps the write
blocks it touches in memory (components come in order of their first plane, so a block is final once the next
component starts below it) and writes each whole block once: a read-modify-write of each component's crop
would rewrite a block-deep shard per component. Its one marker is `split-done` (with the count in
`split-count`): a resume redoes the split pass whole, and writes the same bytes.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage
from skimage.segmentation import watershed

from emseg_rt.errors import EmsegError
from emseg_rt.io.label_images import INSTANCE_SUFFIX
from emseg_rt.io.ome_zarr import LabelImageSpec, create_ome_group
from emseg_rt.io.pyramid import write_lower_levels
from emseg_rt.runtime.instance_rules import InstanceRule, fill_plane_holes, rule_for, split_component
from emseg_rt.runtime.output import DoneMarkers, OutputStore
from emseg_rt.runtime.prompts import peak_points

MAX_ID = np.iinfo(np.uint32).max


# ---------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class WatershedSeeds:
    """Marker watershed settings: density peaks ≥ `threshold` (the density's 0..1 scale) after max-pool NMS
    with a `kernel`×`kernel` window seed the flooding (`runtime.prompts.peak_points`' rule)."""

    threshold: float
    kernel: int = 5

    def describe(self) -> str:
        return (f"marker watershed on density peaks >= {self.threshold:.4g} (NMS {self.kernel}), per plane, "
                "linked by mutual best overlap")


def peak_markers(density: np.ndarray, mask: np.ndarray, seeds: WatershedSeeds) -> np.ndarray:
    """Markers of one plane: density (H, W) float, mask (H, W) bool → int32 (H, W), 0 where no marker, 1..m
    numbered in scan order; connected (8-neighbour) peak pixels, a plateau, are one marker."""
    peaks = np.zeros(density.shape, bool)
    for x, y in peak_points(density[None, None].astype(np.float32), seeds.threshold, seeds.kernel)[0].astype(int):
        peaks[y, x] = True
    markers, _ = ndimage.label(peaks & mask, structure=np.ones((3, 3), bool))
    return markers.astype(np.int32, copy=False)


def watershed_pieces(mask: np.ndarray, density: np.ndarray, seeds: WatershedSeeds) -> np.ndarray:
    """One plane's mask (H, W) bool split by a marker watershed of -density (H, W) from `peak_markers`, face
    connectivity, inside the mask; mask components no marker reaches are pieces of their own. → int32 (H, W),
    0 outside the mask (piece IDs are arbitrary: only their borders are used)."""
    mask = np.asarray(mask, dtype=bool)
    markers = peak_markers(density, mask, seeds)
    if not markers.any():
        return mask.astype(np.int32)
    pieces = watershed(-density.astype(np.float32), markers, mask=mask).astype(np.int32)
    rest, _ = ndimage.label(mask & (pieces == 0))
    return np.where(rest > 0, rest + int(markers.max()), pieces).astype(np.int32)


def cut_plane(mask: np.ndarray, density: np.ndarray, seeds: WatershedSeeds) -> np.ndarray:
    """The plane's mask (H, W) without its watershed lines: pixels with a face neighbour in another piece
    (`watershed_pieces`) are cut. No two peaks in a component: nothing is cut. → bool (H, W)."""
    pieces = watershed_pieces(mask, density, seeds)
    line = np.zeros(pieces.shape, bool)
    for axis in (0, 1):
        a = np.moveaxis(pieces, axis, 0)
        differ = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        np.moveaxis(line, axis, 0)[1:] |= differ
        np.moveaxis(line, axis, 0)[:-1] |= differ
    return np.asarray(mask, bool) & ~line


def fill_cuts(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give each mask pixel of one plane without an ID (a cut pixel) the ID of the nearest pixel that has one
    (Euclidean, ties by scipy's scan order); ids (H, W) int, mask (H, W) bool. A plane with no ID at all
    stays as it is."""
    missing = mask & (ids == 0)
    if not missing.any() or not (ids > 0).any():
        return ids
    _, (rows, cols) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    return np.where(missing, ids[rows, cols], ids)


def watershed_block(mask: np.ndarray, density: np.ndarray, seeds: WatershedSeeds
                    ) -> tuple[np.ndarray, int, np.ndarray]:
    """Instances of one block, mask (N, H, W) bool and density (N, H, W) float: the 3D face-connected
    components of the mask less each plane's watershed lines (`cut_plane`), then the cut pixels filled from
    their plane's nearest component (`fill_cuts`). → (int32 IDs 1..n by first appearance, planes first; n;
    the cut mask (N, H, W) bool, which alone links across planes).

    The IDs are numbered by first appearance in the filled block, not in the cut mask: a filled cut pixel
    can come before its component's first uncut voxel in scan order. Every component keeps its uncut voxels,
    so the renumbering keeps 1..n, and the equivalence table (smallest provisional ID first) then numbers
    the whole volume by first appearance too."""
    cut = np.stack([cut_plane(m, d, seeds) for m, d in zip(mask, density)])
    ids, count = label_block(cut)
    filled = np.stack([fill_cuts(plane, m) for plane, m in zip(ids, np.asarray(mask, bool))])
    return relabel_by_first_appearance(filled).astype(np.int32), count, cut


def label_block(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of one block's boolean mask (N, H, W), face connectivity → (local IDs int32
    1..n in scan order of first appearance, 0 background; n)."""
    ids, count = ndimage.label(np.asarray(mask, dtype=bool))
    return ids.astype(np.int32, copy=False), int(count)


def boundary_pairs(last_plane: np.ndarray, first_plane: np.ndarray) -> np.ndarray:
    """The (id in `last_plane`, id in `first_plane`) pairs of components that touch across a block boundary:
    both foreground at the same in-plane position (face connectivity). (P, 2) int64, unique, sorted."""
    both = (last_plane > 0) & (first_plane > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs = np.stack([last_plane[both].astype(np.int64), first_plane[both].astype(np.int64)], axis=1)
    return np.unique(pairs, axis=0)


def equivalence_table(counts: Sequence[int], pairs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Final IDs for provisional ones. counts[k]: block k's local IDs 1..counts[k]; pairs[k]: (P, 2) local-ID
    pairs (block k-1, block k) that are one component (pairs[0] is empty).

    Returns (offsets, table): provisional ID of local id j in block k = offsets[k] + j; table[provisional] =
    final uint32 ID (table[0] = 0), consecutive 1..N in order of the smallest provisional ID of each set."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(counts.sum())
    parent = np.arange(total + 1, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for k, block_pairs in enumerate(pairs):
        if k == 0 or len(block_pairs) == 0:
            continue
        for a, b in np.asarray(block_pairs, dtype=np.int64):
            ra, rb = find(int(offsets[k - 1] + a)), find(int(offsets[k] + b))
            if ra != rb:  # keep the smaller ID as root: a set's root is its first appearance
                parent[max(ra, rb)] = min(ra, rb)
    roots = parent
    while True:  # pointer jumping: every ID to its set's root, vectorised
        jumped = roots[roots]
        if np.array_equal(jumped, roots):
            break
        roots = jumped
    is_root = roots == np.arange(total + 1)
    is_root[0] = False
    final_of_root = np.cumsum(is_root)  # the rank of each root among roots, in ID order
    if int(final_of_root[-1]) > MAX_ID:
        raise EmsegError(f"{int(final_of_root[-1])} instances do not fit uint32 IDs")
    table = final_of_root[roots].astype(np.uint32)
    table[0] = 0
    return offsets, table


def relabel_block(local_ids: np.ndarray, offset: int, table: np.ndarray) -> np.ndarray:
    """Final uint32 IDs of one block from its local IDs (0 stays 0)."""
    provisional = np.where(local_ids > 0, local_ids.astype(np.int64) + offset, 0)
    return table[provisional]


def relabel_by_first_appearance(ids: np.ndarray) -> np.ndarray:
    """`ids` with nonzero IDs renumbered 1..N in order of first appearance in C (scan) order → uint32."""
    flat = ids.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values != 0
    values, first = values[keep], first[keep]
    order = values[np.argsort(first, kind="stable")]
    lookup = np.zeros(int(flat.max(initial=0)) + 1, np.uint32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return lookup[ids]


def block_ids(mask: np.ndarray, density: np.ndarray | None = None, seeds: WatershedSeeds | None = None
              ) -> tuple[np.ndarray, int, np.ndarray]:
    """One block's local IDs by the run's method → (IDs, count, the voxels that link across planes): the
    mask's components (all of the mask links), or with `seeds` (and density) `watershed_block` (the cut mask)."""
    if seeds is None:
        ids, count = label_block(mask)
        return ids, count, np.asarray(mask, bool)
    return watershed_block(mask, density, seeds)


def link_pairs(last_ids: np.ndarray, last_links: np.ndarray, first_ids: np.ndarray, first_links: np.ndarray
               ) -> np.ndarray:
    """`boundary_pairs` across a block boundary, over the voxels that link (the cut mask for the watershed)."""
    return boundary_pairs(np.where(last_links, last_ids, 0), np.where(first_links, first_ids, 0))


def blockwise_instances(mask: np.ndarray, block: int, density: np.ndarray | None = None,
                        seeds: WatershedSeeds | None = None) -> np.ndarray:
    """Instances of a (Z, Y, X) mask computed as the runtime does, blocks of `block` planes along axis 0 (one
    block in memory at a time, besides the in-memory input and result of this reference form); with `seeds`,
    the watershed on `density` (Z, Y, X) float."""
    bounds = [(b, min(b + block, mask.shape[0])) for b in range(0, mask.shape[0], block)]

    def ids_of(b0: int, b1: int) -> tuple[np.ndarray, int, np.ndarray]:
        return block_ids(mask[b0:b1], None if density is None else density[b0:b1], seeds)

    counts, pairs, last = [], [], None
    for b0, b1 in bounds:  # provisional pass
        ids, n, links = ids_of(b0, b1)
        pairs.append(link_pairs(*last, ids[0], links[0]) if last is not None else np.zeros((0, 2), np.int64))
        counts.append(n)
        last = (ids[-1], links[-1])
    offsets, table = equivalence_table(counts, pairs)
    out = np.zeros(mask.shape, np.uint32)
    for k, (b0, b1) in enumerate(bounds):  # relabel pass
        out[b0:b1] = relabel_block(ids_of(b0, b1)[0], int(offsets[k]), table)
    return out


# ---------------------------------------------------------------- the runtime stage


def parse_instance_classes(value: str | Iterable[str] | None, classes: Sequence[str]) -> tuple[str, ...]:
    """`--instances a,b` (or a sequence) → class names, checked against the model's classes (one-line
    EmsegError naming them); () for None or empty."""
    if value is None:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = list(dict.fromkeys(n for n in names if n))
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise EmsegError(f"--instances: unknown class {', '.join(map(repr, unknown))}; the model's classes are "
                         f"{', '.join(classes)}")
    return tuple(names)


def instance_label_name(class_name: str) -> str:
    """The name of a class's instance label image: `<class>_instances`."""
    return f"{class_name}{INSTANCE_SUFFIX}"


@dataclass
class InstanceStage:
    """The instance stage of one run for one class; every pass skips what its markers say is done.

    store:     the run's output: this stage's markers and arrays live in its run state, in the group
               `instances-<hash>-<class>/` (`namespace`): markers `provisional` and `relabelled` (one per
               block), `table-done` and `pyramid` (one each); arrays `counts`, `pairs-<k>`, `offsets`, `table`;
               with a `rule`, also `components`, `bbox`, `split-count` and the markers `bbox-done`, `split-done`.
    value:     the class's label value in `semantic`, the run's s0 label array (read only).
    image:     where the instance label image goes; spec: its LabelImageSpec (uint32, the run's levels).
    blocks:    (index, first plane, end plane) write blocks; axis_index: the segmenting axis.
    run_hash:  the run's configuration hash (names the state group, recorded on the instance image).
    density:   the run's stored density (uint8, value/255), read with `seeds` (the marker watershed).
    rule:      holes, minimum size and split of a model without a density head (None with `seeds`);
    sampling:  the voxel size, planes first (the distance transform of `rule.split`).
    """

    store: OutputStore
    class_name: str
    value: int
    semantic: Any
    image: Path
    spec: LabelImageSpec
    blocks: Sequence[tuple[int, int, int]]
    axis_index: int
    run_hash: str
    density: Any = None
    seeds: WatershedSeeds | None = None
    rule: InstanceRule | None = None
    sampling: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def namespace(self) -> str:
        """This stage's group in the run state."""
        return f"instances-{self.run_hash[:16]}-{self.class_name}"

    def _markers(self, name: str) -> DoneMarkers:
        return self.store.markers(f"{self.namespace}/{name}")

    def _array(self, name: str) -> Any:
        return self.store.state_array(f"{self.namespace}/{name}")

    def _new_array(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...]) -> Any:
        return self.store.create_state_array(f"{self.namespace}/{name}", shape, dtype, chunks)

    def _region(self, b0: int, b1: int) -> tuple[slice, ...]:
        return tuple(slice(b0, b1) if i == self.axis_index else slice(None) for i in range(3))

    def _planes(self, array: Any, b0: int, b1: int) -> np.ndarray:
        """Planes b0..b1-1 of a (Z, Y, X) array of the run, segmenting axis first."""
        return np.moveaxis(np.asarray(array[self._region(b0, b1)]), self.axis_index, 0)

    def _local_ids(self, b0: int, b1: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Block planes b0..b1-1 → (local IDs, count, the voxels that link across planes) (`block_ids`)."""
        labels = self._planes(self.semantic, b0, b1)
        mask = labels == self.value
        if self.rule is not None and self.rule.fill_holes:
            mask = fill_plane_holes(mask, labels == 0)
        density = None
        if self.seeds is not None:
            density = self._planes(self.density, b0, b1).astype(np.float32) / 255
        return block_ids(mask, density, self.seeds)

    def _attrs(self, status: str) -> dict:
        method = "connected components" if self.seeds is None else self.seeds.describe()
        attrs = {"status": status, "instances_of": self.class_name, "connectivity": "face",
                 "method": method, "config_hash": self.run_hash}
        if self.rule is not None:
            attrs.update(method="connected components of the hole-filled mask, then per component: minimum size"
                         + (", distance-transform watershed" if self.rule.split else ""), rule=self.rule.to_config())
        return attrs

    # -- passes
    def open(self) -> None:
        """Create the state group and the (incomplete) instance label image, unless a resumed run made them."""
        if self._markers("pyramid").exists():
            return  # everything below was created by an earlier run of this configuration
        self.store.create_state_group(self.namespace)
        create_ome_group(self.image, self.spec, source_image=self.store.source_image,
                         extra_attributes={"emseg_rt": self._attrs("incomplete")})
        blocks = max(len(self.blocks), 1)
        self._new_array("counts", (blocks,), np.int64, (1,))
        if self.rule is not None:
            dims = [int(s) for s in self.semantic.shape]
            shape = (dims.pop(self.axis_index), *dims)  # planes first
            depth = max(b1 - b0 for _, b0, b1 in self.blocks) if self.blocks else 1
            self._new_array("components", shape, np.uint32, (depth, min(shape[1], 1024), min(shape[2], 1024)))
        for name, length in (("provisional", blocks), ("relabelled", blocks), ("table-done", 1), ("bbox-done", 1),
                             ("split-done", 1), ("pyramid", 1)):
            self._markers(name).create(length)  # "pyramid" last: its presence says all exist

    def provisional_pass(self) -> None:
        markers = self._markers("provisional")
        done, counts = markers.done(), self._array("counts")
        previous_last = None
        for index, b0, b1 in self.blocks:
            if index in done:
                previous_last = None
                continue
            ids, count, links = self._local_ids(b0, b1)
            if index > 0 and previous_last is None:  # resumed here: label the previous block again
                _, p0, p1 = self.blocks[index - 1]
                before, _, before_links = self._local_ids(p0, p1)
                previous_last = (before[-1], before_links[-1])
            pairs = link_pairs(*previous_last, ids[0], links[0]) if index > 0 else np.zeros((0, 2), np.int64)
            self._new_array(f"pairs-{index}", pairs.shape, np.int64, (max(len(pairs), 1), 2))[...] = pairs
            counts[index] = count
            markers.mark(index)  # after the block's results: a marker means they are complete
            previous_last = (ids[-1], links[-1])

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._markers("table-done").done():
            return np.asarray(self._array("offsets")[...]), np.asarray(self._array("table")[...])
        counts = np.asarray(self._array("counts")[: len(self.blocks)])
        pairs = [np.asarray(self._array(f"pairs-{index}")[...]) for index, _, _ in self.blocks]
        offsets, table = equivalence_table(counts, pairs)
        self._new_array("offsets", offsets.shape, np.int64, (max(len(offsets), 1),))[...] = offsets
        self._new_array("table", table.shape, np.uint32, (min(len(table), 2**20),))[...] = table
        self._markers("table-done").mark(0)  # after both arrays are completely written
        return offsets, table

    def relabel_pass(self, offsets: np.ndarray, table: np.ndarray) -> None:
        """The components, by block: into the instance image, or with a rule into the `components` state."""
        target = self._array("components") if self.rule is not None else self.store.open_level0(self.image, "r+")
        markers = self._markers("relabelled")
        done = markers.done()
        for index, b0, b1 in self.blocks:
            if index in done:
                continue
            ids = relabel_block(self._local_ids(b0, b1)[0], int(offsets[index]), table)
            if self.rule is not None:
                target[b0:b1] = ids
            else:
                target[self._region(b0, b1)] = np.moveaxis(ids, 0, self.axis_index)
            markers.mark(index)

    def bbox_pass(self, count: int) -> np.ndarray:
        """Each component's bounding box (count, 6) int64: first and end plane, row, column (planes first)."""
        if self._markers("bbox-done").done():
            return np.asarray(self._array("bbox")[...])
        components = self._array("components")
        boxes = component_boxes(((b0, np.asarray(components[b0:b1])) for _, b0, b1 in self.blocks), count)
        self._new_array("bbox", boxes.shape, np.int64, (max(min(count, 2**16), 1), 6))[...] = boxes
        self._markers("bbox-done").mark(0)
        return boxes

    def split_pass(self, boxes: np.ndarray) -> int:
        """Final IDs of every component by the rule (`split_component`), written block by block → their number.
        One marker for the whole pass: a resume after a kill in it redoes it whole (every block it writes is
        written whole, with the same bytes). Memory: the blocks spanned by the largest component, twice."""
        if self._markers("split-done").done():
            return int(self._array("split-count")[0])
        window = BlockWindow(self.blocks, self._array("components"), self._write_block)
        next_id = 1
        for index, box in enumerate(boxes):
            crop = crop_box(box, window.shape)
            window.flush_before(crop[0].start)  # later crops start here or below: blocks above it are final
            pieces, count = split_component(window.components(crop) == index + 1, self.sampling, self.rule)
            if count:
                window.place(crop, np.where(pieces > 0, pieces.astype(np.int64) + next_id - 1, 0))
            next_id += count
        window.flush_before(window.shape[0])
        if next_id - 1 > MAX_ID:
            raise EmsegError(f"{next_id - 1} instances do not fit uint32 IDs")
        self._new_array("split-count", (1,), np.int64, (1,))[...] = next_id - 1
        self._markers("split-done").mark(0)  # after every block is written
        return next_id - 1

    def _write_block(self, b0: int, b1: int, ids: np.ndarray) -> None:
        target = self.store.open_level0(self.image, mode="r+")
        target[self._region(b0, b1)] = np.moveaxis(ids, 0, self.axis_index)

    def finish(self) -> None:
        pyramid = self._markers("pyramid")
        if not pyramid.done():
            write_lower_levels(self.image, self.spec.levels, range(1, len(self.spec.levels)))
            pyramid.mark(0)
        self.store.set_status("complete", self.image)

    def run(self) -> int:
        """Every pass that is not done yet; returns the number of instances."""
        self.open()
        self.provisional_pass()
        offsets, table = self.table()
        self.relabel_pass(offsets, table)
        count = int(table.max(initial=0))
        if self.rule is not None:
            count = self.split_pass(self.bbox_pass(count))
        self.finish()
        return count


def component_boxes(blocks: Iterable[tuple[int, np.ndarray]], count: int) -> np.ndarray:
    """Bounding boxes of components 1..count from their IDs given block by block: (first plane, IDs (n, H, W))
    → (count, 6) int64 rows (p0, p1, y0, y1, x0, x1), ends exclusive."""
    boxes = np.zeros((count, 6), np.int64)
    boxes[:, 0::2] = np.iinfo(np.int64).max
    for b0, ids in blocks:
        present = ids[ids > 0]
        if present.size == 0:
            continue
        low = int(present.min())
        local = np.where(ids > 0, ids.astype(np.int64) - low + 1, 0)
        for offset, found in enumerate(ndimage.find_objects(local)):
            if found is None:
                continue
            row = boxes[low - 1 + offset]
            starts, stops = (found[0].start + b0, found[1].start, found[2].start), (found[0].stop + b0,
                                                                                   found[1].stop, found[2].stop)
            row[0::2] = np.minimum(row[0::2], starts)
            row[1::2] = np.maximum(row[1::2], stops)
    return boxes


def crop_box(box: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A bounding box (p0, p1, y0, y1, x0, x1) grown by one voxel on every side, clipped to `shape`."""
    return tuple(slice(max(int(box[2 * a]) - 1, 0), min(int(box[2 * a + 1]) + 1, shape[a])) for a in range(3))


class BlockWindow:
    """The write blocks the split pass works in, in memory: each block's component IDs (read once) and its
    final instance IDs (written once, by `flush_before`, when no later component can touch it).

    blocks: (index, b0, b1) contiguous write blocks; components: the (depth, H, W) `components` array;
    write(b0, b1, ids): stores one block's final IDs (n, H, W)."""

    def __init__(self, blocks: Sequence[tuple[int, int, int]], components: Any, write: Any) -> None:
        self.blocks, self.source, self.write = list(blocks), components, write
        self.starts = [b0 for _, b0, _ in self.blocks]
        self.shape = tuple(int(s) for s in components.shape)
        self.loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block index → (component IDs, final IDs)

    def _spanned(self, p0: int, p1: int) -> list[int]:
        """Indices (into `blocks`) of the blocks holding planes p0..p1-1, loaded if not yet."""
        spanned = list(range(bisect.bisect_right(self.starts, p0) - 1, bisect.bisect_left(self.starts, p1)))
        for k in spanned:
            if k not in self.loaded:
                _, b0, b1 = self.blocks[k]
                ids = np.asarray(self.source[b0:b1])
                self.loaded[k] = (ids, np.zeros(ids.shape, np.uint32))
        return spanned

    def components(self, crop: tuple[slice, ...]) -> np.ndarray:
        """The component IDs in `crop` (planes, rows, columns)."""
        parts = []
        for k in self._spanned(crop[0].start, crop[0].stop):
            b0, b1 = self.blocks[k][1:]
            lo, hi = max(crop[0].start, b0) - b0, min(crop[0].stop, b1) - b0
            parts.append(self.loaded[k][0][lo:hi, crop[1], crop[2]])
        return np.concatenate(parts)

    def place(self, crop: tuple[slice, ...], ids: np.ndarray) -> None:
        """Set the final IDs of `crop` where `ids` (its shape) is nonzero."""
        for k in self._spanned(crop[0].start, crop[0].stop):
            b0, b1 = self.blocks[k][1:]
            lo, hi = max(crop[0].start, b0), min(crop[0].stop, b1)
            part = ids[lo - crop[0].start:hi - crop[0].start]
            view = self.loaded[k][1][lo - b0:hi - b0, crop[1], crop[2]]
            view[part > 0] = part[part > 0]

    def flush_before(self, plane: int) -> None:
        """Write and drop the loaded blocks that end at or before `plane`."""
        for k in sorted(self.loaded):
            _, b0, b1 = self.blocks[k]
            if b1 <= plane:
                self.write(b0, b1, self.loaded.pop(k)[1])


def _planes_first(values: Sequence[float], axis_index: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values) if len(values) == 3 else (1.0, 1.0, 1.0)
    return (values[axis_index],) + tuple(v for i, v in enumerate(values) if i != axis_index)


def instance_stage(store: OutputStore, class_name: str, blocks: Sequence[tuple[int, int, int]], axis_index: int,
                   run_hash: str, seeds: WatershedSeeds | None = None, rule: InstanceRule | None = None
                   ) -> InstanceStage:
    """The InstanceStage of `class_name` for the run writing `store`: it reads the run's s0 (and, with `seeds`,
    the stored density) and writes `<class>_instances` beside the semantic label image, with its levels.
    Without `seeds`, the class's `rule` (default: `instance_rules.rule_for(class_name)`) applies."""
    layout = store.layout
    spec = dataclasses.replace(layout.label_spec(), name=instance_label_name(class_name), classes=(),
                               dtype=np.dtype(np.uint32), colors=())
    parent = store.root.parent if layout.nested else store.root
    semantic = store.open_level0(store.root)
    density = zarr.open_array(str(store.density_path), mode="r") if seeds is not None else None
    if seeds is None and rule is None:
        rule = rule_for(class_name)
    return InstanceStage(store, class_name, list(layout.classes).index(class_name) + 1, semantic, parent / spec.name,
                         spec, blocks, axis_index, run_hash, density, seeds, None if seeds is not None else rule,
                         _planes_first(layout.voxel_size, axis_index))


def write_instances(store: OutputStore, classes: Sequence[str], blocks: Sequence[tuple[int, int, int]],
                    axis_index: int, run_hash: str, seeds: WatershedSeeds | None = None,
                    rules: Mapping[str, InstanceRule] | None = None) -> dict[str, int]:
    """The instance stage of a run: every requested class's instance label image (`InstanceStage.run`), after
    the semantic blocks and pyramid, before the root is marked complete; resumes from the stage's markers.

    blocks: (index, first plane, end plane) write blocks along `axis_index`, the segmenting axis.
    seeds:  the marker watershed on the stored density (a model with a density head); None: components and
            each class's rule (`rules`, default `instance_rules.rule_for`; they must be the ones the run's
            configuration records: `instance_config`).
    Returns the number of instances per class, in the order of `classes`.
    """
    return {name: instance_stage(store, name, blocks, axis_index, run_hash, seeds, (rules or {}).get(name)).run()
            for name in classes}


def instance_config(classes: Sequence[str], seeds: WatershedSeeds | None) -> dict[str, Any]:
    """The run configuration's `instances` entry (a resume refuses other classes, seeds or rules)."""
    if seeds is not None:  # density models: their watershed and its density store
        return {"classes": list(classes), "method": "marker watershed", "peak_threshold": seeds.threshold,
                "nms_kernel": seeds.kernel, "density_blend": "gaussian"}
    return {"classes": list(classes), "method": "connected components, face; per-class rules",
            "rules": {name: rule_for(name).to_config() for name in classes}}
