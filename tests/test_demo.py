"""`emseg-rt demo`: phantom → default model → scores → PNG, well within the two-minute budget."""

import re
import sys
import time

import numpy as np
import pytest
from PIL import Image

from emseg_rt.demo import overlay, run_demo
from emseg_rt.io import read_label_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_overlay_colours_only_labelled_pixels_each_nearest_its_own_colour():
    colours = {1: (230, 159, 0), 2: (86, 180, 233), 3: (0, 158, 115)}
    image = np.full((4, 4), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, :3] = [1, 2, 3]
    rgb = overlay(image, labels, colours).astype(float)
    assert rgb.shape == (4, 4, 3) and (rgb[1:] == 100).all() and (rgb[0, 3] == 100).all()
    for x, value in enumerate((1, 2, 3)):
        distances = {v: np.linalg.norm(rgb[0, x] - c) for v, c in colours.items()}
        assert min(distances, key=distances.get) == value


def metadata_colours(label_path) -> dict[str, tuple[int, int, int]]:
    """Class name → RGB as the label image's `image-label` metadata gives them (what napari shows)."""
    meta = read_label_metadata(label_path)
    names = {p["label-value"]: p["class"] for p in meta["properties"]}
    return {names[c["label-value"]]: tuple(c["rgba"][:3]) for c in meta["colors"]}


def test_demo_runs_and_writes_its_files(tmp_path):
    start = time.perf_counter()
    report = run_demo(tmp_path / "demo", shape=(4, 256, 256))
    assert time.perf_counter() - start < 120
    assert report.phantom.is_dir() and report.segmentation.is_dir()
    picture = Image.open(report.preview)
    assert picture.width > 3 * 256 and picture.height > 256
    # The legend shows each class in the colour the segmentation's metadata gives it (a 12 × 12 swatch), and
    # the ground truth's metadata gives the same classes the same colours.
    colours = metadata_colours(report.segmentation)
    assert set(colours) == {"nucleus", "mitochondria", "granules"}
    assert metadata_colours(report.phantom / "labels" / "ground_truth") == colours
    pixels = np.asarray(picture.convert("RGB"))
    for name, rgb in colours.items():
        assert (pixels == rgb).all(axis=2).sum() >= 144, name
    assert set(report.scores.dice) == {"nucleus", "mitochondria", "granules"}
    assert report.scores.mean_dice > 0.85
    again = run_demo(tmp_path / "demo", shape=(4, 256, 256))  # repeatable into the same folder
    assert again.scores.dice == report.scores.dice


def run_demo_cli(monkeypatch, capsys, *args):
    from emseg_rt.cli import main

    monkeypatch.setattr(sys, "argv", ["emseg-rt", "demo", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_cli_prints_dice_and_time(tmp_path, monkeypatch, capsys):
    from emseg_rt.data.phantom import GROUND_TRUTH
    from emseg_rt.io import read_volume
    from emseg_rt.metrics import evaluate

    start = time.perf_counter()
    code, out, err = run_demo_cli(monkeypatch, capsys, "--out", tmp_path / "demo", "--shape", "2,128,128")
    wall = time.perf_counter() - start
    assert code == 0, err
    dice_line = re.search(r"^Dice per class: nucleus (\S+), mitochondria (\S+), granules (\S+) \(mean (\S+)\)$",
                          out, re.MULTILINE)
    time_line = re.search(r"^model scsam-phantom, backend torch; time (\S+) s \(phantom (\S+) s, segment (\S+) s, "
                          r"eval (\S+) s\)$", out, re.MULTILINE)
    assert dice_line and time_line, out
    # The printed Dice is the Dice of the files the demo wrote, to the 3 printed decimals.
    prediction = read_volume(tmp_path / "demo" / "segmentation.zarr")
    truth = read_volume(tmp_path / "demo" / "phantom.zarr", labels=GROUND_TRUTH)
    assert prediction.shape == (2, 128, 128)
    scores = evaluate(prediction, truth)
    printed = [float(v) for v in dice_line.groups()]
    expected = [scores.dice["nucleus"], scores.dice["mitochondria"], scores.dice["granules"], scores.mean_dice]
    assert printed == pytest.approx(expected, abs=5e-4)
    # The printed time is the sum of its parts (each rounded to 0.1 s) and no more than the command took.
    total, *parts = (float(v) for v in time_line.groups())
    assert 0 < total <= wall + 0.05 and total == pytest.approx(sum(parts), abs=0.2 + 1e-9)


def test_demo_cli_refuses_a_file_as_out_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_demo_cli(monkeypatch, capsys, "--out", tmp_path / "file")
    assert code == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]


def test_demo_cli_refuses_a_bad_shape(tmp_path, monkeypatch, capsys):
    code, _, err = run_demo_cli(monkeypatch, capsys, "--out", tmp_path / "demo", "--shape", "2,128")
    assert code == 2 and "--shape" in err and not (tmp_path / "demo").exists()
