"""Per-class instance rules (`runtime.instance_rules`): holes filled per plane, specks removed, touching round
objects split by a distance-transform watershed, block by block in the run's output exactly as a whole-volume
computation (`ndimage.label` of the hole-filled mask, the rule per component), and resumable after a kill."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from instance_helpers import first_appearance, rule_reference
from scipy import ndimage

from emseg_rt.io.pyramid import Level
from emseg_rt.runtime import instances as stage_module
from emseg_rt.runtime.instance_rules import (
    GENERIC_RULE,
    InstanceRule,
    component_distance,
    fill_plane_holes,
    rule_for,
    split_component,
)
from emseg_rt.runtime.instances import write_instances
from emseg_rt.runtime.output import OutputLayout, OutputStore, marker_indices

NUCLEUS = InstanceRule(min_size=50, fill_holes=True, split=False)
GRANULES = InstanceRule(min_size=20, fill_holes=True, split=True, min_distance=3.0, sigma=1.0)
SHAPE = (14, 40, 48)


def ball(shape, centre, radius, sampling=(1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, sampling)) <= radius ** 2


def synthetic_labels() -> np.ndarray:
    """Class 1: a big ball with a 4 × 4 square tunnel along z (a hole in every plane it crosses, open in 3D)
    holding one voxel of class 2; class 2: two pairs of touching balls, a lone ball and specks."""
    labels = np.zeros(SHAPE, np.uint8)
    big = ball(SHAPE, (7, 14, 14), 9)
    big[:, 12:16, 12:16] = False
    labels[big] = 1
    labels[7, 13, 13] = 2  # another class inside the hole: never filled, a speck of its own
    for centre in ((4, 8, 34), (4, 8, 42), (9, 27, 33), (11, 33, 38)):  # two touching pairs
        labels[ball(SHAPE, centre, 4.2) & (labels == 0)] = 2
    labels[ball(SHAPE, (6, 34, 10), 3.5)] = 2  # a lone ball
    labels[0, 0, 47] = labels[13, 39, 0] = labels[5, 20, 28] = 2  # specks, one at a corner of the volume
    labels[2:4, 30, 20:22] = 2
    return labels


def make_store(tmp_path: Path, labels: np.ndarray, block: int, voxel_size=(1.0, 1.0, 1.0)) -> OutputStore:
    """A run's output with `labels` as its s0 (what the semantic blocks would have written)."""
    blocks = -(-labels.shape[0] // block)
    layout = OutputLayout(shape=labels.shape, chunks=(1, 32, 32), classes=("nucleus", "granules"),
                          label_dtype=np.dtype(np.uint8), label_name="organelles", voxel_size=voxel_size,
                          units=(None, None, None), axes="zyx", probabilities=False,
                          levels=(Level("s0", labels.shape, voxel_size, (0.0, 0.0, 0.0)),), blocks=blocks,
                          shards=(block, 64, 64))
    store = OutputStore(tmp_path / "out.zarr", layout, "0" * 64)
    store.create({"test": True}, {"status": "incomplete"}, "fingerprint")
    store.labels[...] = labels
    return store


def blocks_of(depth: int, block: int) -> list[tuple[int, int, int]]:
    return [(k, b0, min(b0 + block, depth)) for k, b0 in enumerate(range(0, depth, block))]


def run_stage(tmp_path: Path, labels: np.ndarray, block: int, voxel_size=(1.0, 1.0, 1.0)) -> tuple[dict, Path]:
    store = make_store(tmp_path, labels, block, voxel_size)
    counts = write_instances(store, ("nucleus", "granules"), blocks_of(labels.shape[0], block), 0, "0" * 64,
                             rules={"nucleus": NUCLEUS, "granules": GRANULES})
    return counts, store.root


def read_ids(root: Path, name: str) -> np.ndarray:
    return zarr.open_array(str(root / f"{name}_instances" / "s0"), mode="r")[...]


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return h.hexdigest()


def test_holes_are_filled_per_plane_with_background_only():
    labels = np.zeros((2, 9, 9), np.uint8)
    labels[:, 1:8, 1:8] = 1
    labels[:, 3:6, 3:6] = 0  # a 3 × 3 hole in both planes
    labels[1, 4, 4] = 2  # the second plane's hole holds a voxel of another class
    labels[0, 0:3, 0:3] = 0  # and a notch open to the border is no hole
    filled = fill_plane_holes(labels == 1, labels == 0)
    assert filled[0, 3:6, 3:6].all() and not filled[0, 0:3, 0:3].any()
    assert filled[1].sum() == 7 * 7 - 1 and not filled[1, 4, 4]  # every hole voxel but the other class's


def test_touching_balls_split_and_specks_go():
    sampling = (2.0, 1.0, 1.0)  # z voxels twice as deep: the balls are round in physical space
    shape = (12, 24, 40)
    pair = ball(shape, (6, 12, 12), 7, sampling) | ball(shape, (6, 12, 24), 7, sampling)
    assert ndimage.label(pair)[1] == 1
    pieces, count = split_component(pair, sampling, GRANULES)
    assert count == 2 and pieces[6, 12, 12] == 1 and pieces[6, 12, 24] == 2  # numbered by first appearance
    np.testing.assert_array_equal(pieces > 0, pair)
    assert abs(int((pieces == 1).sum()) - int((pieces == 2).sum())) < 0.1 * pair.sum()  # cut near the neck
    speck = np.zeros((3, 3, 3), bool)
    speck[1, 1, 1] = True
    assert split_component(speck, sampling, GRANULES)[1] == 0
    assert split_component(pair, sampling, NUCLEUS)[1] == 1  # no split without `split`


def test_the_distance_transform_of_a_component_alone_is_the_whole_masks_inside_it():
    rng = np.random.default_rng(7)
    mask = ndimage.gaussian_filter(rng.random((10, 30, 30)), 1.2) > 0.5
    sampling = (3.0, 1.0, 1.5)
    whole = ndimage.distance_transform_edt(mask, sampling=sampling)
    components, n = ndimage.label(mask)
    assert n > 3
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, d)) for s, d in zip(box, mask.shape))
        alone = components[crop] == component
        np.testing.assert_array_equal(component_distance(alone, sampling)[alone], whole[crop][alone])


@pytest.mark.parametrize("block", [1, 3, 5, 14])
def test_blockwise_rules_equal_the_whole_volume(tmp_path, block):
    labels = synthetic_labels()
    counts, root = run_stage(tmp_path, labels, block)
    nucleus, granules = read_ids(root, "nucleus"), read_ids(root, "granules")
    np.testing.assert_array_equal(nucleus, rule_reference(labels, 1, NUCLEUS))
    np.testing.assert_array_equal(granules, rule_reference(labels, 2, GRANULES))
    # what the rules did, checked against the synthetic volume itself
    assert counts == {"nucleus": 1, "granules": 5} == {"nucleus": int(nucleus.max()), "granules": int(granules.max())}
    assert (labels[:, 12:16, 12:16] == 1).sum() == 0  # a tunnel through the ball, open at both ends in 3D ...
    assert (nucleus[:, 12:16, 12:16] == 1).sum() == 14 * 16 - 1 and nucleus[7, 13, 13] == 0  # ... filled per plane
    centres = [granules[4, 8, 34], granules[4, 8, 42], granules[9, 27, 33], granules[11, 33, 38], granules[6, 34, 10]]
    assert sorted(map(int, centres)) == [1, 2, 3, 4, 5]  # each ball its own instance: the pairs were split
    assert granules[0, 0, 47] == granules[13, 39, 0] == granules[2, 30, 20] == granules[7, 13, 13] == 0  # specks
    np.testing.assert_array_equal(granules, first_appearance(granules))  # IDs by first appearance


def test_anisotropic_voxels_reach_the_distance_transform(tmp_path):
    labels = synthetic_labels()
    _, root = run_stage(tmp_path, labels, 4, voxel_size=(2.5, 1.0, 1.0))
    np.testing.assert_array_equal(read_ids(root, "granules"), rule_reference(labels, 2, GRANULES, (2.5, 1.0, 1.0)))


def test_segmenting_along_y_fills_and_splits_in_y_planes(tmp_path):
    labels = synthetic_labels()
    store = make_store(tmp_path, labels, 5, voxel_size=(2.0, 1.0, 1.0))
    counts = write_instances(store, ("granules",), blocks_of(labels.shape[1], 6), 1, "0" * 64,
                             rules={"granules": GRANULES})
    planes_first = np.moveaxis(labels, 1, 0)  # the reference fills holes per plane of its first axis
    expected = np.moveaxis(rule_reference(planes_first, 2, GRANULES, (1.0, 2.0, 1.0)), 0, 1)
    np.testing.assert_array_equal(read_ids(store.root, "granules"), expected)
    assert counts["granules"] == int(expected.max()) > 0


@pytest.mark.parametrize("kill_at", [1, 4])
def test_a_kill_in_the_split_pass_resumes_to_identical_bytes(tmp_path, monkeypatch, kill_at):
    labels = synthetic_labels()
    _, reference_root = run_stage(tmp_path / "ref", labels, 3)
    store = make_store(tmp_path / "run", labels, 3)
    real, calls = stage_module.split_component, []

    def killed(*args):
        calls.append(1)
        if len(calls) == kill_at:
            raise RuntimeError("killed in the split pass")
        return real(*args)

    monkeypatch.setattr(stage_module, "split_component", killed)
    arguments = (store, ("granules",), blocks_of(SHAPE[0], 3), 0, "0" * 64)
    with pytest.raises(RuntimeError, match="split pass"):
        write_instances(*arguments, rules={"granules": GRANULES})
    state = next((store.root / ".emseg-rt").glob("instances-*-granules"))
    assert marker_indices(state / "bbox-done") == {0} and marker_indices(state / "split-done") == set()
    assert dict(zarr.open_group(str(store.root / "granules_instances")).attrs)["emseg_rt"]["status"] == "incomplete"
    monkeypatch.setattr(stage_module, "split_component", real)
    assert write_instances(*arguments, rules={"granules": GRANULES}) == {"granules": 5}
    assert digest(store.root / "granules_instances") == digest(reference_root / "granules_instances")


def test_default_rules_by_class_name():
    assert rule_for("Insulin_Granules") == rule_for("granules") and rule_for("granules").split
    assert rule_for("nucleus").min_size > rule_for("mitochondria").min_size > rule_for("granules").min_size
    assert not rule_for("mitochondria").split and rule_for("golgi") == GENERIC_RULE
