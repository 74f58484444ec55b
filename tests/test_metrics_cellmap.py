"""The CellMap segmentation challenge's scores (`emseg_rt.metrics`: cellmap_semantic, cellmap_instance) against
small cases computed by hand, and `eval` reporting them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import run_cli

from emseg_rt.metrics import cellmap_instance, cellmap_match, cellmap_semantic, evaluate, full_components


def row(*values) -> np.ndarray:
    return np.array([values], dtype=np.int64)


def test_semantic_iou_and_dice_by_hand():
    pred, truth = row(1, 1, 0, 0) > 0, row(1, 0, 1, 0) > 0  # ∩ 1, ∪ 3, |P| = |G| = 2
    assert cellmap_semantic(pred, truth) == pytest.approx((1 / 3, 2 / 4))
    empty = row(0, 0) > 0
    assert cellmap_semantic(empty, empty) == (1.0, 1.0)  # the challenge scores an absent class 1, not NaN


def test_instance_scores_by_hand():
    truth = row(1, 1, 1, 0, 2, 2, 0, 0, 0, 0)  # T1 {0,1,2}, T2 {4,5}
    pred = row(5, 5, 0, 0, 7, 7, 7, 0, 9, 0)  # P {0,1}, P' {4,5,6}, P'' {8}
    # T1–P IoU 2/3, T2–P' IoU 2/3: both matched; P'' matched to nothing.
    # Accuracy: matched predictions take their truth's ID, P'' never equals one: equal at 0,1,3,4,5,7,9 → 7/10.
    # Hausdorff: T1 vs P: voxel 2 is 1 from P → 1; T2 vs P': voxel 6 is 1 from T2 → 1; mean 1.
    score = cellmap_instance(pred, truth)
    normalized = 1.01 ** (-1 / math.sqrt(2))  # |voxel size (1, 1)| = √2
    assert score.accuracy == pytest.approx(0.7) and score.hausdorff_distance == pytest.approx(1.0)
    assert score.normalized_hausdorff_distance == pytest.approx(normalized)
    assert score.combined_score == pytest.approx(math.sqrt(0.7 * normalized))
    assert score.f1 == pytest.approx(2 * 2 / (3 + 2))  # TP 2, FP 1, FN 0
    # anisotropic voxels: the columns 2 apart → every distance doubles, |voxel| = √5
    wide = cellmap_instance(pred, truth, voxel_size=(1.0, 2.0))
    assert wide.hausdorff_distance == pytest.approx(2.0)
    assert wide.normalized_hausdorff_distance == pytest.approx(1.01 ** (-2 / math.sqrt(5)))


def test_matching_is_optimal_not_greedy():
    truth = np.array([[1] * 10 + [2] * 10])  # T1 {0..9}, T2 {10..19}
    pred = np.array([[2] * 4 + [1] * 8 + [0] * 8])  # P2 {0..3}, P1 {4..11}
    # IoU: T1–P1 6/12 = .5 (the best pair: a greedy match takes it and leaves T2 alone), T1–P2 4/10 = .4,
    # T2–P1 2/16 = .125. Costs: T1–P1 and T2 unmatched .5 + 1.000001; T1–P2 and T2–P1 .6 + .875 = 1.475:
    # the optimum.
    ids, count = full_components(pred)
    assert count == 2 and ids[0, 4] == 1 and ids[0, 0] == 2  # IDs by value, then scan order
    true_ids = truth.astype(np.int32)
    assert cellmap_match(true_ids, 2, ids, 2) == {2: 1, 1: 2}
    score = cellmap_instance(pred, truth)
    # accuracy: 0..3 → 1 (right), 4..11 → 2 (right at 10, 11): 6/20. Hausdorff: T1 vs {0..3}: 9 → 3 is 6;
    # T2 vs {4..11}: 19 → 11 is 8 and 4 → 10 is 6: 8. Mean 7.
    assert score.accuracy == pytest.approx(0.3) and score.hausdorff_distance == pytest.approx(7.0)
    assert score.f1 == 1.0


def test_predictions_split_by_full_connectivity_and_the_ratio_cutoff():
    ids = np.zeros((4, 4, 4), np.int64)
    ids[0, 0, 0] = ids[1, 1, 1] = 4  # corner-touching: one component with 26-neighbours
    ids[3, 3, 3] = 4  # apart: another
    assert full_components(ids)[1] == 2
    truth = np.zeros((1, 40), np.int64)
    truth[0, :3] = 1
    pred = np.zeros((1, 40), np.int64)
    pred[0, ::2] = 1  # 20 separate predictions for one true instance: over the cutoff of 10 per instance
    score = cellmap_instance(pred, truth)
    assert (score.accuracy, score.combined_score, score.f1) == (0.0, 0.0, 0.0)
    assert math.isinf(score.hausdorff_distance)


def test_no_match_at_all_leaves_no_distance_as_the_challenge_does():
    score = cellmap_instance(row(0, 0, 0, 3), row(1, 1, 0, 0))  # no overlap: nothing is matched
    # accuracy: only voxel 2 agrees (background) → 1/4; no matched pair → no distance → mean 0 → normalised 1
    assert score.accuracy == pytest.approx(0.25) and score.hausdorff_distance == 0.0
    assert score.combined_score == pytest.approx(0.5) and score.f1 == 0.0


def test_evaluate_reports_the_cellmap_scores_per_class():
    truth = np.zeros((4, 12, 12), np.uint8)
    truth[1:3, 2:6, 2:6] = 1
    truth[1:3, 8:10, 8:10] = 2
    pred = truth.copy()
    pred[1:3, 8:10, 8:10] = 0  # class 2 missed: semantic 0, instance accuracy the background agreement
    scores = evaluate(pred, truth, ("a", "b", "c"))
    assert scores.cellmap_iou == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert scores.cellmap_instance["a"]["combined_score"] == 1.0
    missed = scores.cellmap_instance["b"]
    assert missed["f1"] == 0.0 and missed["accuracy"] == pytest.approx(1 - 8 / truth.size)
    assert scores.cellmap_semantic_score == pytest.approx(2 / 3)
    assert scores.cellmap_score == pytest.approx(math.sqrt(scores.cellmap_instance_score * 2 / 3))


def test_eval_prints_the_cellmap_scores(tmp_path, monkeypatch, capsys):
    from emseg_rt.data.phantom import generate_phantom, write_phantom

    cell = write_phantom(tmp_path / "cell.zarr", generate_phantom((4, 48, 48), seed=2, anisotropy=2.0))
    code, stdout, _ = run_cli(monkeypatch, capsys, "eval", cell, cell, "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert scores["cellmap_score"] == 1.0 and set(scores["cellmap_instance"]) == set(scores["dice"])
    code, stdout, _ = run_cli(monkeypatch, capsys, "eval", cell, cell)
    assert code == 0 and "CellMap inst" in stdout and "overall 1.000" in stdout
