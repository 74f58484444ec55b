"""`emseg-rt eval` finds label images the way OME-Zarr lays them out, matches classes by name, and refuses
inputs that are no label image in one line with exit code 2."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.constants import GROUND_TRUTH
from emseg_rt.errors import EmsegError
from emseg_rt.io.label_images import open_label_image
from emseg_rt.io.ome_zarr import write_ome_image, write_ome_labels
from emseg_rt.metrics import evaluate_labels, remap_labels

SHAPE = (2, 16, 24)
AXES = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]


def random_labels(seed: int, num_classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes + 1, SHAPE, dtype=np.uint8)


def properties(class_names: dict[int, str], key: str = "class") -> list[dict]:
    return [{"label-value": v, key: n} for v, n in class_names.items()]


def multiscale(paths: list[str]) -> dict:
    return {"axes": AXES, "datasets": [{"path": p, "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 2.0 ** i, 2.0 ** i]}]} for i, p in enumerate(paths)]}


def write_root_label_image(path: Path, labels: np.ndarray, class_names: dict[int, str],
                           status: str = "complete") -> Path:
    """The layout `emseg-rt segment` writes: a label image at the root (s0, s1), probabilities/ and .emseg-rt/."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("s0", data=labels, chunks=(1, 16, 16))
    root.create_array("s1", data=labels[:, ::2, ::2])
    probabilities = root.create_group("probabilities")
    probabilities.create_array("s0", data=np.zeros((len(class_names), *labels.shape), np.uint8))
    probabilities.attrs.update({"ome": {"version": "0.5", "multiscales": [
        {"axes": [{"name": "c", "type": "channel"}, *AXES], "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]}]}]}})
    root.create_group(".emseg-rt").attrs.update({"emseg_rt_run": {"hash": "0"}})
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale(["s0", "s1"])], "image-label": {
        "version": "0.5", "colors": [{"label-value": v, "rgba": [255, 0, 0, 255]} for v in class_names],
        "properties": properties(class_names)}}, "emseg_rt": {"status": status}})
    return path


def write_v2_image_with_labels(path: Path, image: np.ndarray, labels: dict[str, np.ndarray],
                               class_names: dict[int, str]) -> Path:
    """OME-Zarr 0.4 on zarr v2: attributes at the top level, class names under the properties' "name" key."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=image, chunk_key_encoding={"name": "v2", "separator": "/"})
    root.attrs.update({"multiscales": [{"version": "0.4", **multiscale(["0"])}]})
    labels_group = root.create_group("labels")
    labels_group.attrs.update({"labels": list(labels)})
    for name, values in labels.items():
        group = labels_group.create_group(name)
        group.create_array("0", data=values, chunk_key_encoding={"name": "v2", "separator": "/"})
        group.attrs.update({"multiscales": [{"version": "0.4", **multiscale(["0"])}], "image-label": {
            "version": "0.4", "properties": properties(class_names, key="name")}})
    return path


@pytest.fixture
def phantom(tmp_path) -> tuple[Path, np.ndarray]:
    """A small `emseg-rt phantom` volume (image + labels/ground_truth) and its ground truth."""
    from emseg_rt.data.phantom import generate_phantom, write_phantom

    made = generate_phantom((2, 32, 32), seed=5)
    return write_phantom(tmp_path / "cell.zarr", made), made.labels


def dice_of(result: tuple[int, str, str]) -> dict:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)["dice"]


def test_root_label_image_scored_against_a_phantom(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    out = write_root_label_image(tmp_path / "OUT.zarr", truth, {1: "nucleus", 2: "mitochondria", 3: "granules"})
    image = open_label_image(out, role="prediction")
    assert image.path == out and image.name is None and image.volume.shape == truth.shape
    assert image.class_names == {1: "nucleus", 2: "mitochondria", 3: "granules"}
    assert GROUND_TRUTH == open_label_image(vol, role="truth").name
    dice = dice_of(run_cli(monkeypatch, capsys, "eval", out, vol, "--json"))
    present = {name for value, name in enumerate(("nucleus", "mitochondria", "granules"), 1) if (truth == value).any()}
    assert present and all(dice[name] == 1.0 for name in present)


def test_image_with_labels_picks_the_prediction_and_the_ground_truth(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    guess = truth.copy()
    guess[guess == 2] = 0  # every mitochondrion missed
    write_ome_labels(vol, "organelles", guess, ["nucleus", "mitochondria", "granules"])
    prediction = open_label_image(vol, role="prediction")
    assert (prediction.name, prediction.path) == ("organelles", vol / "labels" / "organelles")
    assert open_label_image(vol, role="truth").name == GROUND_TRUTH
    dice = dice_of(run_cli(monkeypatch, capsys, "eval", vol, vol, "--json"))
    assert dice["mitochondria"] == 0.0 and dice["nucleus"] == 1.0
    # A label group named directly gives the same scores.
    assert dice_of(run_cli(monkeypatch, capsys, "eval", vol / "labels" / "organelles",
                           vol / "labels" / GROUND_TRUTH, "--json")) == dice


def test_plain_integer_array_is_scored_by_value(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    zarr.create_array(str(tmp_path / "pred.zarr"), data=truth.astype(np.int32))
    image = open_label_image(tmp_path / "pred.zarr", role="prediction")
    assert image.class_names is None and image.name is None
    dice = dice_of(run_cli(monkeypatch, capsys, "eval", tmp_path / "pred.zarr", vol, "--json"))
    assert {n for n, d in dice.items() if d is not None} <= {"nucleus", "mitochondria", "granules"}
    assert all(d == 1.0 for d in dice.values() if d is not None)


def test_ome_zarr_04_on_zarr_v2_is_read_like_05(tmp_path, monkeypatch, capsys):
    truth = random_labels(1, 2)
    names = {1: "mitochondria", 2: "er"}
    v2 = write_v2_image_with_labels(tmp_path / "old.zarr", np.zeros(SHAPE, np.uint8), {"cells": truth}, names)
    image = open_label_image(v2, role="truth")
    assert image.name == "cells" and image.class_names == names
    assert np.array_equal(image.read(), truth)
    out = write_root_label_image(tmp_path / "OUT.zarr", truth, names)
    assert dice_of(run_cli(monkeypatch, capsys, "eval", out, v2, "--json")) == {"mitochondria": 1.0, "er": 1.0}


def test_classes_match_by_name_whatever_their_values(tmp_path, monkeypatch, capsys):
    truth = random_labels(2, 2)  # 1 er, 2 mitochondria
    swapped = np.choose(truth, [0, 2, 1]).astype(np.uint8)  # the same masks, values swapped
    out = write_root_label_image(tmp_path / "OUT.zarr", swapped, {1: "mitochondria", 2: "er"})
    cell = write_ome_image(tmp_path / "cell.zarr", np.zeros(SHAPE, np.uint8))
    write_ome_labels(cell, GROUND_TRUTH, truth, ["er", "mitochondria"])
    code, out_text, err = run_cli(monkeypatch, capsys, "eval", out, cell, "--json")
    assert code == 0, err
    scores = json.loads(out_text)
    assert scores["dice"] == {"er": 1.0, "mitochondria": 1.0} and scores["mean_iou"] == 1.0
    assert scores["pq"] == {"er": 1.0, "mitochondria": 1.0} and scores["skipped"] == {}
    # Compared by value (the prediction as a bare array) the same masks score zero: why names matter.
    zarr.create_array(str(tmp_path / "bare.zarr"), data=swapped)
    assert dice_of(run_cli(monkeypatch, capsys, "eval", tmp_path / "bare.zarr", cell, "--json")) == \
        {"er": 0.0, "mitochondria": 0.0}


def test_classes_named_on_one_side_only_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    truth = random_labels(3, 3)  # 1 nucleus, 2 mitochondria, 3 granules
    pred = np.where(truth == 3, 0, truth).astype(np.uint8)
    pred[0, 0, :4] = 3  # "golgi", which the ground truth does not know
    out = write_root_label_image(tmp_path / "OUT.zarr", pred, {1: "nucleus", 2: "mitochondria", 3: "golgi"})
    cell = write_ome_image(tmp_path / "cell.zarr", np.zeros(SHAPE, np.uint8))
    write_ome_labels(cell, GROUND_TRUTH, np.where(pred == 3, 0, truth).astype(np.uint8),
                     ["nucleus", "mitochondria", "granules"])
    code, out_text, err = run_cli(monkeypatch, capsys, "eval", out, cell, "--json")
    assert code == 0, err
    scores = json.loads(out_text)
    assert set(scores["dice"]) == {"nucleus", "mitochondria"} and min(scores["dice"].values()) == 1.0
    assert scores["skipped"] == {"golgi": "prediction only", "granules": "ground truth only"}
    notes = [line for line in err.splitlines() if line.strip()]
    assert len(notes) == 1 and "golgi" in notes[0] and "granules" in notes[0]


def test_image_without_labels_is_refused_in_one_line(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    image = write_ome_image(tmp_path / "raw.zarr", np.zeros(truth.shape, np.uint8))
    assert_one_line(run_cli(monkeypatch, capsys, "eval", vol, image),
                   str(image), "is an image, not a label image, and has no labels/ group")


def test_float_array_and_group_without_labels_are_refused(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    zarr.create_array(str(tmp_path / "float.zarr"), data=truth.astype(np.float32))
    assert_one_line(run_cli(monkeypatch, capsys, "eval", tmp_path / "float.zarr", vol),
                   "float.zarr", "float32", "not integer labels")
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("data", data=truth)
    assert_one_line(run_cli(monkeypatch, capsys, "eval", tmp_path / "plain.zarr", vol),
                   "plain.zarr", "neither a label image", "labels/ group")


def test_ambiguous_label_images_name_the_option_that_picks_one(tmp_path, monkeypatch, capsys):
    cell = write_ome_image(tmp_path / "cell.zarr", np.zeros(SHAPE, np.uint8))
    for name, seed in (("manual", 4), ("auto", 5)):
        write_ome_labels(cell, name, random_labels(seed), ["nucleus", "mitochondria", "granules"])
    assert_one_line(run_cli(monkeypatch, capsys, "eval", cell, cell, "--pred-labels", "auto"),
                   "several label images", "manual, auto", "--gt-labels")
    write_ome_labels(cell, GROUND_TRUTH, random_labels(6), ["nucleus", "mitochondria", "granules"])
    assert_one_line(run_cli(monkeypatch, capsys, "eval", cell, cell), "--pred-labels", "ground_truth")
    assert_one_line(run_cli(monkeypatch, capsys, "eval", cell, cell, "--pred-labels", "nope"),
                   "--pred-labels nope", "manual, auto, ground_truth")
    code, out, err = run_cli(monkeypatch, capsys, "eval", cell, cell, "--pred-labels", "auto", "--json")
    assert code == 0, err
    assert json.loads(out)["dice"]["nucleus"] < 1.0  # auto (seed 5) against ground_truth (seed 6)


def test_shapes_that_differ_and_unfinished_outputs_are_refused(tmp_path, monkeypatch, capsys, phantom):
    vol, truth = phantom
    out = write_root_label_image(tmp_path / "OUT.zarr", random_labels(7), {1: "nucleus"})
    assert_one_line(run_cli(monkeypatch, capsys, "eval", out, vol), str(SHAPE), str(truth.shape))
    unfinished = write_root_label_image(tmp_path / "RUN.zarr", truth, {1: "nucleus"}, status="incomplete")
    assert_one_line(run_cli(monkeypatch, capsys, "eval", unfinished, vol), "RUN.zarr", "unfinished")
    assert_one_line(run_cli(monkeypatch, capsys, "eval", out, vol, "--pred-labels", "organelles"),
                   "--pred-labels organelles", "label image itself")


def test_metrics_remap_refuses_values_the_names_do_not_cover():
    truth = random_labels(8, 2)
    with pytest.raises(EmsegError, match="prediction holds label 3, which its image-label properties do not name"):
        remap_labels(np.where(truth == 2, 3, truth), {1: 1, 2: 2}, "prediction")
    # Names on one side only: classes by value, named by that side.
    scores = evaluate_labels(truth, truth, None, {1: "er", 2: "mitochondria"}, instance_metrics=False)
    assert scores.dice == {"er": 1.0, "mitochondria": 1.0}
