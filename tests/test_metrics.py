"""Every metric against small cases computed by hand (definitions in emseg_rt.metrics)."""

import math

import numpy as np
import pytest

from emseg_rt.errors import EmsegError
from emseg_rt.metrics import aji, dice, evaluate, instances, iou, panoptic_quality


def row(*values):
    return np.array([values], dtype=np.uint8)


def test_dice_and_iou_by_hand():
    pred = np.array([[1, 1, 0], [0, 2, 2]], np.uint8)
    truth = np.array([[1, 0, 0], [0, 2, 2]], np.uint8)
    # class 1: |P| = 2, |G| = 1, |P∩G| = 1, |P∪G| = 2
    assert dice(pred, truth, 1) == pytest.approx(2 / 3)
    assert iou(pred, truth, 1) == pytest.approx(1 / 2)
    assert dice(pred, truth, 2) == 1.0 and iou(pred, truth, 2) == 1.0
    assert math.isnan(dice(pred, truth, 3)) and math.isnan(iou(pred, truth, 3))  # absent from both


def test_mean_iou_skips_absent_classes_and_background():
    pred = np.array([[1, 1, 0], [0, 2, 2]], np.uint8)
    truth = np.array([[1, 0, 0], [0, 2, 2]], np.uint8)
    scores = evaluate(pred, truth)
    assert scores.mean_iou == pytest.approx((0.5 + 1.0) / 2)
    assert scores.mean_dice == pytest.approx((2 / 3 + 1.0) / 2)
    assert math.isnan(scores.iou["granules"])


def test_dice_of_a_missed_class_is_zero():
    pred = np.zeros((4, 4), np.uint8)
    truth = np.zeros((4, 4), np.uint8)
    truth[1, 1] = 3
    assert dice(pred, truth, 3) == 0.0 and iou(pred, truth, 3) == 0.0


def test_aji_merged_prediction():
    # truth: G1 = {0,1}, G2 = {3,4}; prediction: one instance S = {0..4}.
    # G1 pairs S: |∩| 2, |∪| 5; G2 pairs S: |∩| 2, |∪| 5 → AJI = 4 / 10.
    assert aji(row(1, 1, 1, 1, 1) > 0, row(1, 1, 0, 1, 1) > 0) == pytest.approx(0.4)


def test_aji_unmatched_truth_and_unused_prediction():
    # truth G1 = {0,1}, G2 = {4}; pred S = {0,1,2}. G1–S: ∩ 2, ∪ 3; G2 overlaps nothing: +|G2| = 1 → 2 / 4.
    assert aji(row(1, 1, 1, 0, 0, 0) > 0, row(1, 1, 0, 0, 1, 0) > 0) == pytest.approx(0.5)
    # truth G = {0,1,2}; pred S1 = {1,2}, S2 = {4,5}. G–S1: ∩ 2, ∪ 3; S2 unused: +2 → 2 / 5.
    assert aji(row(0, 1, 1, 0, 1, 1) > 0, row(1, 1, 1, 0, 0, 0) > 0) == pytest.approx(0.4)


def test_panoptic_quality_by_hand():
    truth = row(1, 1, 1, 1, 0, 1, 1, 0, 1) > 0  # G1 {0..3}, G2 {5,6}, G3 {8}
    pred = row(1, 1, 1, 0, 0, 1, 0, 0, 0) > 0  # S1 {0,1,2}, S2 {5}
    # G1–S1 IoU 3/4 > 0.5: TP; G2–S2 IoU 1/2 is not > 0.5. TP 1, FP 1, FN 2 → 0.75 / (1 + 0.5 + 1)
    assert panoptic_quality(pred, truth) == pytest.approx(0.3)


def test_perfect_prediction_scores_one_everywhere():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, size=(6, 20, 20)).astype(np.uint8)
    scores = evaluate(truth.copy(), truth)
    for table in (scores.dice, scores.iou, scores.aji, scores.pq):
        assert all(v == pytest.approx(1.0) for v in table.values())


def test_instances_use_face_connectivity_in_3d():
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touch only at a corner
    assert instances(mask)[1] == 2
    mask[0, 0, 1] = mask[0, 1, 1] = True  # now a face-connected chain to (1,1,1)
    assert instances(mask)[1] == 1


def test_instance_metrics_empty_both_is_nan():
    empty = np.zeros((3, 3), bool)
    assert math.isnan(aji(empty, empty)) and math.isnan(panoptic_quality(empty, empty))


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(EmsegError, match="shape"):
        evaluate(np.zeros((2, 2), np.uint8), np.zeros((3, 3), np.uint8))


def test_json_writes_nan_as_null():
    scores = evaluate(row(1, 0), row(1, 0))
    assert '"granules": null' in scores.to_json()
