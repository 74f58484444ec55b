"""`emseg-rt demo`: phantom → default model → scores → PNG, well within the two-minute budget."""

import sys
import time

import numpy as np
import pytest
from PIL import Image

from emseg_rt.demo import overlay, run_demo


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_overlay_colours_only_labelled_pixels():
    image = np.full((4, 4), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 3
    rgb = overlay(image, labels)
    assert rgb.shape == (4, 4, 3) and (rgb[1:, 1:] == 100).all() and not (rgb[0, 0] == 100).all()


def test_demo_runs_and_writes_its_files(tmp_path):
    start = time.perf_counter()
    report = run_demo(tmp_path / "demo", shape=(4, 256, 256))
    assert time.perf_counter() - start < 120
    assert report.phantom.is_dir() and report.segmentation.is_dir()
    picture = Image.open(report.preview)
    assert picture.width > 3 * 256 and picture.height > 256
    assert set(report.scores.dice) == {"nucleus", "mitochondria", "granules"}
    assert report.scores.mean_dice > 0.85
    again = run_demo(tmp_path / "demo", shape=(4, 256, 256))  # repeatable into the same folder
    assert again.scores.dice == report.scores.dice


def test_demo_cli_prints_dice_and_time(tmp_path, monkeypatch, capsys):
    from emseg_rt.cli import main

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(sys, "argv", ["emseg-rt", "demo", "--out", str(tmp_path / "file")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]
