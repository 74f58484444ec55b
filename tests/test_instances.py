"""`segment --instances`: connected components block by block (`runtime.instances`) equal the whole-volume
`ndimage.label`, IDs stay unique and consistent across block boundaries and resumed runs, and the instance
label images validate as OME-Zarr."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli
from instance_helpers import default_reference, first_appearance
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05 import ImageLabel as ImageLabel05
from scipy import ndimage

from emseg_rt.errors import EmsegError
from emseg_rt.io import write_ome_image
from emseg_rt.runtime import load_backend, segment_volume
from emseg_rt.runtime.instance_rules import InstanceRule, rule_for
from emseg_rt.runtime.instances import (
    WatershedSeeds,
    blockwise_instances,
    boundary_pairs,
    cut_plane,
    equivalence_table,
    fill_cuts,
    label_block,
    relabel_by_first_appearance,
    watershed_block,
)
from emseg_rt.runtime.output import marker_indices

MODEL = "scsam-tiny"


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    return load_backend(MODEL, "torch")


def reference(mask: np.ndarray) -> np.ndarray:
    """Whole-volume connected components (scipy's `ndimage.label`, 3D, face connectivity), IDs by first
    appearance in scan order."""
    return first_appearance(ndimage.label(mask)[0])


def watershed_reference(mask: np.ndarray, density: np.ndarray, threshold: float, kernel: int = 5) -> np.ndarray:
    """The documented density watershed on the whole volume at once, from scipy and scikit-image: per plane,
    markers at the density peaks (equal to the max of their kernel² window, ≥ threshold, > 0; 8-connected
    peaks one marker) in the mask, a marker watershed of −density inside the mask (mask components no marker
    reaches are pieces of their own), the pixels beside another piece cut; the cut mask's 3D face-connected
    components (`ndimage.label`); each cut pixel then takes its plane's nearest labelled pixel's ID."""
    from skimage.segmentation import watershed

    cut = np.zeros(mask.shape, bool)
    for z, (m, d) in enumerate(zip(mask, density)):
        peaks = (d == ndimage.maximum_filter(d, kernel, mode="constant", cval=-np.inf)) & (d >= threshold) & (d > 0)
        markers = ndimage.label(peaks & m, structure=np.ones((3, 3)))[0]
        pieces = m.astype(np.int64)
        if markers.any():
            pieces = watershed(-d, markers, mask=m).astype(np.int64)
            rest = ndimage.label(m & (pieces == 0))[0]
            pieces = np.where(rest > 0, rest + markers.max(), pieces)
        padded = np.pad(pieces, 1)
        beside = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]  # 4 neighbours
        line = np.any([(n > 0) & (n != pieces) for n in beside], axis=0) & (pieces > 0)
        cut[z] = m & ~line
    ids = ndimage.label(cut)[0]
    for z in range(len(ids)):
        missing = mask[z] & (ids[z] == 0)
        if missing.any() and (ids[z] > 0).any():
            rows, cols = ndimage.distance_transform_edt(ids[z] == 0, return_indices=True)[1]
            ids[z] = np.where(missing, ids[z][rows, cols], ids[z])
    return first_appearance(ids)


def random_blobs(seed: int, shape=(13, 24, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_opening(ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [1, 2, 3, 5, 8, 13, 40])
def test_blockwise_components_equal_whole_volume_label(seed, block):
    mask = random_blobs(seed) if seed % 2 else np.random.default_rng(seed).random((9, 10, 11)) > 0.55
    expected = reference(mask)
    assert expected.max() > 1
    np.testing.assert_array_equal(blockwise_instances(mask, block), expected)


def test_a_u_shape_joined_only_in_a_later_block_is_one_instance():
    mask = np.zeros((6, 5, 7), bool)
    mask[0:5, 2, 1] = True  # left arm, planes 0..4
    mask[0:5, 2, 5] = True  # right arm, planes 0..4
    mask[5, 2, 1:6] = True  # the bottom joins them in plane 5 only
    mask[0, 4, 3] = True  # a separate dot, after the U in scan order
    for block in (1, 2, 4):
        ids = blockwise_instances(mask, block)
        assert ids[0, 2, 1] == ids[0, 2, 5] == ids[5, 2, 3] == 1 and ids[0, 4, 3] == 2
        np.testing.assert_array_equal(ids, reference(mask))


def test_ids_are_unique_and_consistent_across_a_block_boundary():
    mask = np.zeros((4, 6, 6), bool)
    mask[0:4, 1, 1] = True  # crosses the boundary between planes 1 and 2
    mask[0:2, 4, 4] = True  # ends at the boundary
    mask[2:4, 4, 3] = True  # starts after it, diagonal to the one above: not face-connected
    ids = blockwise_instances(mask, 2)
    assert len({int(v) for v in ids[:, 1, 1]}) == 1  # one ID on both sides of the boundary
    assert len({int(ids[0, 1, 1]), int(ids[0, 4, 4]), int(ids[2, 4, 3])}) == 3  # distinct objects stay apart
    assert sorted(np.unique(ids[ids > 0]).tolist()) == [1, 2, 3]  # consecutive, no gaps from provisional IDs


def test_pure_steps():
    first, n1 = label_block(np.array([[[1, 0, 1]]], bool))
    second, n2 = label_block(np.array([[[1, 1, 1]]], bool))
    pairs = boundary_pairs(first[-1], second[0])
    assert (n1, n2) == (2, 1) and pairs.tolist() == [[1, 1], [2, 1]]
    offsets, table = equivalence_table([n1, n2], [np.zeros((0, 2)), pairs])
    assert offsets.tolist() == [0, 2] and table.tolist() == [0, 1, 1, 1] and table.dtype == np.uint32
    offsets, table = equivalence_table([0, 0], [np.zeros((0, 2)), np.zeros((0, 2))])
    assert table.tolist() == [0]
    ids = np.random.default_rng(0).integers(0, 9, (3, 5, 7)) * 10  # gaps and a non-scan order of values
    np.testing.assert_array_equal(relabel_by_first_appearance(ids), first_appearance(ids))


# --- marker watershed seeded by density peaks (models with a density head) ------------------------------------


def two_touching_discs(shape=(40, 60)) -> tuple[np.ndarray, np.ndarray]:
    """A mask of two overlapping discs (one connected component) and a density peaking at their centres."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    centres = [(20, 20), (20, 38)]
    mask = np.zeros(shape, bool)
    density = np.zeros(shape, np.float32)
    for cy, cx in centres:
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask |= r2 <= 11 ** 2
        density = np.maximum(density, np.exp(-r2 / (2 * 4.0 ** 2)))
    return mask, density


def test_watershed_splits_touching_objects_at_their_density_peaks():
    mask, density = two_touching_discs()
    assert label_block(mask[None])[1] == 1  # components: one object
    ids, n, cut = watershed_block(mask[None], density[None], WatershedSeeds(0.5))
    assert n == 2 and ids[0, 20, 20] != ids[0, 20, 38] and {int(ids[0, 20, 20]), int(ids[0, 20, 38])} == {1, 2}
    np.testing.assert_array_equal(ids[0] > 0, mask)  # every mask pixel gets an instance, cut ones too
    line = mask & ~cut[0]
    assert 0 < line.sum() < 2 * 25 and line[:, :29].sum() == 0  # a thin line between the two centres
    np.testing.assert_array_equal(cut_plane(mask, density, WatershedSeeds(1.5)), mask)  # no peak: no cut
    lone = mask.copy()
    lone[2:6, 50:55] = True  # a component with no peak stays an instance of its own
    assert watershed_block(lone[None], density[None], WatershedSeeds(0.5))[1] == 3


def test_touching_columns_stay_two_instances_through_every_plane_and_block():
    mask, density = two_touching_discs()
    mask, density = np.repeat(mask[None], 6, axis=0), np.repeat(density[None], 6, axis=0)
    mask[3, :, :] = False  # a gap: the columns' halves above and below are separate objects
    for block in (1, 2, 4, 6):
        ids = blockwise_instances(mask, block, density, WatershedSeeds(0.5))
        assert ids.max() == 4 and len({int(v) for v in ids[:3, 20, 20]}) == 1
        assert len({int(ids[0, 20, 20]), int(ids[0, 20, 38]), int(ids[4, 20, 20]), int(ids[4, 20, 38])}) == 4


def test_without_two_peaks_in_a_component_the_watershed_is_the_components():
    mask = random_blobs(4, (6, 24, 20))
    density = np.zeros(mask.shape, np.float32)
    ids, n, cut = watershed_block(mask, density, WatershedSeeds(0.5))
    np.testing.assert_array_equal(cut, mask)
    np.testing.assert_array_equal(ids, reference(mask))


@pytest.mark.parametrize("seed", range(3))
def test_blockwise_watershed_equals_the_whole_volume_at_once(seed):
    rng = np.random.default_rng(seed)
    mask = random_blobs(seed, (9, 30, 28))
    density = ndimage.gaussian_filter(rng.random(mask.shape), (0, 2, 2)).astype(np.float32)
    density = (density - density.min()) / np.ptp(density)
    seeds = WatershedSeeds(0.3, 5)
    whole, n, cut = watershed_block(mask, density, seeds)
    assert n >= int(ndimage.label(mask)[1]) and (cut != mask).any()  # cuts (3D paths may join them again)
    np.testing.assert_array_equal(whole > 0, mask)
    for block in (1, 2, 3, 4, 9):
        np.testing.assert_array_equal(blockwise_instances(mask, block, density, seeds), whole)


def test_watershed_ids_follow_first_appearance_where_a_filled_cut_pixel_comes_first():
    """A cut pixel takes its nearest component's ID, and that can come before the component's first uncut
    pixel in scan order (here the plane's top-left pixels lie on a watershed line and take the ID of a
    component that starts two rows lower). The written IDs still follow first appearance in C order, block
    by block and across blocks, as the whole-volume reference numbers them."""
    rng = np.random.default_rng(13)
    plane = ndimage.gaussian_filter(rng.random((10, 12)), 1) > 0.45
    density = ndimage.gaussian_filter(rng.random((10, 12)), 1.5).astype(np.float32)
    density = (density - density.min()) / np.ptp(density)
    mask, density = np.stack([np.zeros_like(plane), plane, plane]), np.stack([density] * 3)
    seeds = WatershedSeeds(0.3, 3)
    cut = np.stack([cut_plane(m, d, seeds) for m, d in zip(mask, density)])
    in_cut_order = np.stack([fill_cuts(p, m) for p, m in zip(label_block(cut)[0], mask)])
    assert not cut[1, 0, 0] and not np.array_equal(in_cut_order, first_appearance(in_cut_order))  # the case
    expected = watershed_reference(mask, density, 0.3, 3)
    assert expected.max() > 2
    np.testing.assert_array_equal(watershed_block(mask, density, seeds)[0], expected)
    for block in (1, 2, 3):
        np.testing.assert_array_equal(blockwise_instances(mask, block, density, seeds), expected)


def test_segment_instances_of_a_density_model_use_the_watershed(tmp_path):
    """prompt-das-tiny (random weights) through segment_volume: the instance image is the blockwise watershed
    of the written labels on the stored density, and the run says so."""
    engine = load_backend("prompt-das-tiny", "torch")
    data = np.random.default_rng(4).integers(0, 256, (4, 90, 90), dtype=np.uint8)
    cell = write_ome_image(tmp_path / "in.zarr", ndimage.uniform_filter(data, 5))
    out = tmp_path / "out.zarr"
    report = segment_volume(cell, out, backend=engine, block=3, instances="mitochondria", peak_threshold=0.05)
    record = json.loads((out / ".emseg-rt" / "zarr.json").read_text())["attributes"]["emseg_rt_run"]
    assert record["config"]["instances"]["method"] == "marker watershed"
    density_dirs = list((out / ".emseg-rt").glob("density-*"))
    assert len(density_dirs) == 1
    density = zarr.open_array(str(density_dirs[0]), mode="r")[...].astype(np.float32) / 255
    mask = zarr.open_array(str(out / "s0"), mode="r")[...] == 1
    ids = zarr.open_array(str(out / "mitochondria_instances" / "s0"), mode="r")[...]
    # Against scipy on the whole volume: every mask voxel has an instance, each instance lies inside one of
    # ndimage.label's components, and there are more instances than components (the watershed split some).
    components, n_components = ndimage.label(mask)
    np.testing.assert_array_equal(ids > 0, mask)
    inside = np.unique(np.stack([ids[mask], components[mask]]), axis=1)
    assert len(np.unique(inside[0])) == inside.shape[1], "an instance spans two connected components"
    assert report.instances["mitochondria"] == int(ids.max()) > n_components
    # ... and equal to the watershed written out with scipy and scikit-image on the whole volume at once
    # (the run cut it into blocks of 3 planes), IDs by first appearance.
    np.testing.assert_array_equal(ids, watershed_reference(mask, density, 0.05))
    attrs = zarr.open_group(str(out / "mitochondria_instances"), mode="r").attrs["emseg_rt"]
    assert attrs["method"].startswith("marker watershed")
    with pytest.raises(EmsegError, match="density output"):
        segment_volume(cell, tmp_path / "o2.zarr", model="scsam-tiny", backend="torch", instances="granules",
                       peak_threshold=0.5)


def digest(path: Path) -> str:
    """Hash of the instance label image's files (metadata and chunks)."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return h.hexdigest()


def phantom(tmp_path: Path) -> Path:
    from emseg_rt.data.phantom import generate_phantom, write_phantom

    return write_phantom(tmp_path / "cell.zarr", generate_phantom((5, 64, 64), seed=3))


def test_segment_writes_instance_label_images_equal_to_the_whole_volume_rules(tmp_path, engine, monkeypatch):
    cell = phantom(tmp_path)
    out = tmp_path / "out.zarr"
    classes = ("mitochondria", "granules")
    report = segment_volume(cell, out, backend=engine, block=2, levels=2, instances=classes)
    assert report.complete and set(report.instances) == set(classes)
    semantic = zarr.open_array(str(out / "s0"), mode="r")[...]
    for name in classes:
        group = zarr.open_group(str(out / f"{name}_instances"), mode="r")
        assert isinstance(open_ome_zarr(group), ImageLabel05)
        ome = dict(group.attrs)["ome"]
        assert ome["image-label"] == {} and dict(group.attrs)["emseg_rt"]["status"] == "complete"
        ids = group["s0"][...]
        assert ids.dtype == np.uint32 and group["s0"].shards[0] == 2  # one shard per block
        # the class's default rule (holes, min size, split) on each whole-volume component, IDs in order
        expected = default_reference(semantic, engine.spec.classes.index(name) + 1, name)
        np.testing.assert_array_equal(ids, expected)
        assert report.instances[name] == int(expected.max()) > 0
        np.testing.assert_array_equal(group["s1"][...], ids[:, ::2, ::2])
    assert not (out / "nucleus_instances").exists()
    record = json.loads((out / ".emseg-rt" / "zarr.json").read_text())["attributes"]["emseg_rt_run"]
    assert record["config"]["instances"]["classes"] == list(classes)
    assert record["config"]["instances"]["rules"] == {name: rule_for(name).to_config() for name in classes}
    with pytest.raises(EmsegError, match="different configuration"):  # other --instances: another run
        segment_volume(cell, out, backend=engine, block=2, levels=2, instances=("granules",), resume=True)
    from emseg_rt.runtime import instance_rules

    changed = dict(instance_rules.DEFAULT_RULES, granules=InstanceRule(min_size=5, split=False))
    monkeypatch.setattr(instance_rules, "DEFAULT_RULES", changed)
    with pytest.raises(EmsegError, match="different configuration"):  # other rules: another run
        segment_volume(cell, out, backend=engine, block=2, levels=2, instances=classes, resume=True)


def test_a_crash_in_the_relabel_pass_is_resumed_to_identical_bytes(tmp_path, engine, monkeypatch):
    cell = phantom(tmp_path)
    segment_volume(cell, tmp_path / "ref.zarr", backend=engine, block=2, instances="mitochondria")
    from emseg_rt.runtime import instances as stage_module

    real_relabel, calls = stage_module.relabel_block, []

    def killed_at_the_second_block(*args):
        calls.append(1)
        if len(calls) == 2:  # block 0 written and marked, block 1 not
            raise RuntimeError("killed in the relabel pass")
        return real_relabel(*args)

    monkeypatch.setattr(stage_module, "relabel_block", killed_at_the_second_block)
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="relabel pass"):
        segment_volume(cell, out, backend=engine, block=2, instances="mitochondria")
    root = dict(zarr.open_group(str(out), mode="r").attrs)
    assert root["emseg_rt"]["status"] == "incomplete"
    assert dict(zarr.open_group(str(out / "mitochondria_instances"), mode="r").attrs)["emseg_rt"]["status"] \
        == "incomplete"
    assert len(marker_indices(next((out / ".emseg-rt").glob("instances-*")) / "relabelled")) == 1
    monkeypatch.setattr(stage_module, "relabel_block", real_relabel)
    report = segment_volume(cell, out, backend=engine, block=2, instances="mitochondria", resume=True)
    assert report.complete and report.blocks_computed == 0
    assert digest(out / "mitochondria_instances") == digest(tmp_path / "ref.zarr" / "mitochondria_instances")


def test_into_input_registers_the_instance_label_image(tmp_path, engine):
    data = np.random.default_rng(5).integers(0, 256, (3, 64, 64), np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data, levels=2)
    report = segment_volume(src, None, into_input=True, backend=engine, block=2, instances=("granules",))
    assert report.complete
    labels = zarr.open_group(str(src / "labels"), mode="r")
    assert dict(labels.attrs)["ome"]["labels"] == ["organelles", "granules_instances"]
    group = labels["granules_instances"]
    assert isinstance(open_ome_zarr(group), ImageLabel05)
    assert dict(group.attrs)["ome"]["image-label"]["source"] == {"image": "../../"}
    semantic = labels["organelles"]["s0"][...]
    np.testing.assert_array_equal(group["s0"][...], default_reference(semantic, 3, "granules"))


def test_unknown_instance_class_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    data = np.random.default_rng(6).integers(0, 256, (2, 32, 32), np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data)
    line = assert_one_line(run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / "o.zarr", "--model",
                                   MODEL, "--backend", "torch", "--instances", "mitochondria,nosuch", "-q"),
                           "--instances", "'nosuch'", "mitochondria, granules")
    assert "nucleus" in line
    assert not (tmp_path / "o.zarr").exists() or not any((tmp_path / "o.zarr").iterdir())


def test_eval_uses_the_instance_label_images_and_says_so(tmp_path, engine, monkeypatch, capsys):
    from emseg_rt.io.label_images import open_label_image
    from emseg_rt.metrics import evaluate_labels

    cell = phantom(tmp_path)
    out = tmp_path / "seg.zarr"
    segment_volume(cell, out, backend=engine, block=2, instances=("mitochondria",))
    code, stdout, _ = run_cli(monkeypatch, capsys, "eval", out, cell, "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert scores["instance_source"] == {"nucleus": "connected components", "mitochondria": "instance label image",
                                         "granules": "connected components"}
    pred, truth = open_label_image(out, role="prediction"), open_label_image(cell, role="truth")
    value = {n: v for v, n in pred.class_names.items()}["mitochondria"]
    ruled = default_reference(pred.read(), value, "mitochondria")  # what the instance image must hold
    expected = evaluate_labels(pred.read(), truth.read(), pred.class_names, truth.class_names,
                               pred_instances={"mitochondria": ruled})
    assert scores["pq"]["mitochondria"] == pytest.approx(expected.pq["mitochondria"], nan_ok=True)
    assert scores["aji"]["mitochondria"] == pytest.approx(expected.aji["mitochondria"], nan_ok=True)
    # the instance image is what is scored: the ground truth's own mitochondria as instances score 1
    value = {n: v for v, n in truth.class_names.items()}["mitochondria"]
    zarr.open_array(str(out / "mitochondria_instances" / "s0"), mode="r+")[...] = ndimage.label(
        truth.read() == value)[0].astype(np.uint32)
    code, stdout, _ = run_cli(monkeypatch, capsys, "eval", out, cell, "--json")
    assert json.loads(stdout)["pq"]["mitochondria"] == json.loads(stdout)["aji"]["mitochondria"] == 1.0
