"""CLI: phantom, eval and train work end to end; bad inputs give one clear line on stderr and exit code 2."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from emseg_rt.io import read_volume, write_ome_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emseg-rt: error:"), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_phantom_then_eval_scores_a_known_prediction(tmp_path, monkeypatch, capsys):
    vol = tmp_path / "cell.zarr"
    code, out, _ = run_cli(monkeypatch, capsys, "phantom", vol, "--shape", "4,64,64", "--seed", "3")
    assert code == 0 and "labels/ground_truth" in out
    assert read_volume(vol).shape == (4, 64, 64)
    truth = read_volume(vol, labels="ground_truth")
    assert set(np.unique(truth)) == {0, 1, 2, 3}
    # A prediction that finds every mitochondrion exactly, misses every granule and adds one background
    # voxel to the nucleus: its Dice by hand.
    guess = truth.copy()
    guess[guess == 3] = 0
    spot = tuple(np.argwhere(truth == 0)[0])
    guess[spot] = 1
    write_ome_labels(vol, "guess", guess, ["nucleus", "mitochondria", "granules"])
    n_nucleus = int((truth == 1).sum())
    expected = {"nucleus": 2 * n_nucleus / (2 * n_nucleus + 1), "mitochondria": 1.0, "granules": 0.0}

    code, out, _ = run_cli(monkeypatch, capsys, "eval", vol / "labels" / "guess", vol / "labels" / "ground_truth",
                           "--json")
    assert code == 0
    assert json.loads(out)["dice"] == pytest.approx(expected)
    # The same groups named with --pred-labels / --gt-labels inside the image (not the image itself).
    code, out, _ = run_cli(monkeypatch, capsys, "eval", vol, vol, "--pred-labels", "guess",
                           "--gt-labels", "ground_truth", "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["dice"] == pytest.approx(expected)
    assert scores["mean_dice"] == pytest.approx(sum(expected.values()) / 3)
    code, out, _ = run_cli(monkeypatch, capsys, "eval", vol, vol, "--pred-labels", "guess",
                           "--gt-labels", "ground_truth")
    assert code == 0 and "granules" in out and "mean" in out  # the table form


def test_phantom_bad_inputs(tmp_path, monkeypatch, capsys):
    assert_one_line_error(*run_cli(monkeypatch, capsys, "phantom", tmp_path / "a.zarr", "--shape", "4,64")[::2],
                          "--shape")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "phantom", tmp_path / "a.zarr", "--noise", "-2")[::2],
                          "--noise")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "phantom", tmp_path / "no" / "a.zarr")[::2], "does not exist")


def test_eval_bad_inputs(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "missing.zarr", tmp_path / "missing.zarr")
    assert_one_line_error(code, err, "missing.zarr")
    run_cli(monkeypatch, capsys, "phantom", tmp_path / "a.zarr", "--shape", "2,64,64")
    run_cli(monkeypatch, capsys, "phantom", tmp_path / "b.zarr", "--shape", "2,48,64")
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "a.zarr/labels/ground_truth",
                           tmp_path / "b.zarr/labels/ground_truth")
    assert_one_line_error(code, err, "shape")
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "a.zarr", tmp_path / "a.zarr", "--gt-labels", "nope")
    assert_one_line_error(code, err, "nope")


def test_train_cli_writes_checkpoint_and_refuses_bad_inputs(tmp_path, monkeypatch, capsys):
    vol = tmp_path / "cell.zarr"
    run_cli(monkeypatch, capsys, "phantom", vol, "--shape", "2,128,128")
    ckpt = tmp_path / "head.pt"
    code, _, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--out", ckpt,
                             "--steps", "3", "--batch", "2", "--checkpoint-every", "2", "--quiet")
    assert code == 0, err
    assert ckpt.exists() and (tmp_path / "head.pt.state").exists()
    state = torch.load(ckpt, weights_only=True)
    assert all(key.startswith("head.") for key in state)
    code, _, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--out", ckpt, "--quiet")
    assert_one_line_error(code, err, "--resume")
    code, _, err = run_cli(monkeypatch, capsys, "train", "no-such-model", "--data", vol, "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "no-such-model")
    code, _, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--labels", "nope",
                           "--out", tmp_path / "y.pt")
    assert_one_line_error(code, err, "--labels")
    code, _, err = run_cli(monkeypatch, capsys, "train", "sam-star-tiny", "--data", vol, "--out", tmp_path / "z.pt")
    assert_one_line_error(code, err, "FAFM")
    code, _, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--out", tmp_path / "w.pt",
                           "--steps", "0")
    assert_one_line_error(code, err, "--steps")


def test_train_reports_progress_on_stderr_and_the_summary_on_stdout(tmp_path, monkeypatch, capsys):
    """Without --quiet, in a log (stderr not a terminal) `train` says the cache's and the run's final progress
    lines on stderr (`emseg_rt.progress`), and its one summary line on stdout; with --quiet neither."""
    vol = tmp_path / "cell.zarr"
    run_cli(monkeypatch, capsys, "phantom", vol, "--shape", "2,128,128")
    code, out, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--out", tmp_path / "a.pt",
                             "--steps", "2", "--batch", "1")
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("embedding cache: 2/2 tiles in ") for line in lines), err
    assert any(line.startswith("training: 2/2 steps in ") and "; loss " in line for line in lines), err
    assert out.count("\n") == 1 and "steps 0→2 on 2 cached tiles" in out
    code, out, err = run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", vol, "--out", tmp_path / "a.pt",
                             "--steps", "3", "--batch", "1", "--resume", "--quiet")
    assert (code, out, err) == (0, "", "")
