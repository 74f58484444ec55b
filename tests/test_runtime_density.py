"""Prompt-DAS's density through the runtime: backends return it, `segment_slab` blends it per plane, its peaks
become point prompts (`--prompts auto`), and the auto mode is part of a run's identity."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05 import ImageLabel as ImageLabel05

from emseg_rt.errors import EmsegError
from emseg_rt.io import read_volume, write_ome_image
from emseg_rt.runtime import load_backend, segment_labels, segment_volume
from emseg_rt.runtime.prompts import PEAK_THRESHOLD, peak_points, peaks_to_points, slab_prompts
from emseg_rt.runtime.slab import SlabSettings, run_tta, segment_slab, segment_slab_auto
from emseg_rt.tiling import extract_tiles, gaussian_weights, plan_tiles

MODEL = "prompt-das-tiny"  # tile 64, P = 4


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    return load_backend(MODEL, "torch")


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(5).integers(0, 256, (3, 100, 100), dtype=np.uint8)


@pytest.fixture
def volume(tmp_path, data):
    return write_ome_image(tmp_path / "in.zarr", data)


def _no_prompts(n: int, p: int = 4) -> dict[str, np.ndarray]:
    return {"point_coords": np.zeros((n, p, 2), np.float32), "point_labels": np.full((n, p), -1, np.int64)}


def _plane_density(engine, data, plane: int = 1) -> np.ndarray:
    plan = plan_tiles((100, 100), 64, 8)
    out = np.empty((1, 100, 100), np.float32)
    segment_slab(engine, data[plane:plane + 1], plan, batch=4, blend="center", probabilities=False,
                 label_type=np.dtype(np.uint8), prompts=_no_prompts(plan.num_tiles), density_out=out)
    return out[0]


# --- backends ---------------------------------------------------------------------------------------------

def test_backends_return_density_when_asked(engine):
    tiles = np.random.default_rng(1).integers(0, 256, (2, 1, 64, 64), dtype=np.uint8)
    prompts = _no_prompts(2)
    prompts["point_coords"][0, 0], prompts["point_labels"][0, 0] = (20.0, 30.0), 1
    assert engine.spec.extra_outputs == ("density",)
    plain = engine.run(tiles, prompts=prompts)
    assert set(plain) == {"labels"}  # nothing changes unless asked
    got = engine.run(tiles, want_logits=True, prompts=prompts, outputs=("density",))
    assert got["density"].shape == (2, 1, 64, 64) and got["density"].dtype == np.float32
    assert (got["density"] >= 0).all() and got["logits"].shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(got["labels"], plain["labels"])
    onnx = load_backend(MODEL, "onnxruntime")  # exports once per test session
    assert onnx.spec.extra_outputs == ("density",)
    other = onnx.run(tiles, prompts=prompts, outputs=("density",))
    assert other["density"].shape == (2, 1, 64, 64) and other["density"].dtype == np.float32
    scale = max(1.0, float(np.abs(got["density"]).max()))
    np.testing.assert_allclose(other["density"], got["density"], atol=1e-4 * scale)
    with pytest.raises(EmsegError, match="no output"):
        engine.run(tiles, prompts=prompts, outputs=("heatmap",))


def test_prompt_free_family_offers_no_extras(one_torch_thread):
    scsam = load_backend("scsam-tiny", "torch")
    assert scsam.spec.extra_outputs == ()
    with pytest.raises(EmsegError, match="no output density"):
        scsam.run(np.zeros((1, 1, scsam.spec.tile, scsam.spec.tile), np.uint8), outputs=("density",))


# --- blending ---------------------------------------------------------------------------------------------

def test_blended_density_is_the_gaussian_mean_of_its_tiles(engine, data):
    plan = plan_tiles((100, 100), 64, 8)
    blended = _plane_density(engine, data)
    tiles = extract_tiles(data[1], plan)[:, None]
    per_tile = np.concatenate([engine.run(t[None], prompts=_no_prompts(1), outputs=("density",))["density"]
                               for t in tiles])[:, 0]
    weights = gaussian_weights(64).astype(np.float64)
    reference = np.zeros((100, 100))
    for y in range(100):  # brute force: every pixel, every tile covering it
        for x in range(100):
            num = den = 0.0
            for (y0, x0), tile_density in zip(plan.origins, per_tile):
                if 0 <= y - y0 < 64 and 0 <= x - x0 < 64:
                    w = weights[y - y0, x - x0]
                    num += w * tile_density[y - y0, x - x0]
                    den += w
            reference[y, x] = num / den
    scale = max(1.0, float(reference.max()))
    np.testing.assert_allclose(blended, reference, atol=1e-4 * scale)


def test_tta_density_is_the_mean_of_the_turned_back_runs(engine):
    tiles = np.random.default_rng(2).integers(0, 256, (1, 1, 64, 64), dtype=np.uint8)
    prompts = _no_prompts(1)
    out = run_tta(engine, tiles, prompts, outputs=("density",))
    manual = np.mean([np.rot90(engine.run(np.ascontiguousarray(np.rot90(tiles, k, axes=(-2, -1))), prompts=prompts,
                                          outputs=("density",))["density"], -k, axes=(-2, -1)) for k in range(4)],
                     axis=0)
    np.testing.assert_allclose(out["density"], manual, atol=1e-5 * max(1.0, float(manual.max())))


# --- peaks ------------------------------------------------------------------------------------------------

def test_peaks_are_blob_centres_and_nms_suppresses_neighbours():
    ys, xs = np.mgrid[0:60, 0:80]
    centres = [(12, 15, 1.0), (40, 60, 0.8), (45, 20, 0.6)]  # (y, x, height)
    density = sum(h * np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * 3.0 ** 2)) for y, x, h in centres)
    density = density.astype(np.float32)
    found = peak_points(density[None, None], threshold=0.5)[0]
    assert found.tolist() == [[15, 12], [60, 40], [20, 45]]  # (x, y), strongest first
    assert peak_points(density[None, None], threshold=0.7)[0].tolist() == [[15, 12], [60, 40]]
    spikes = np.zeros((1, 1, 30, 30), np.float32)
    spikes[0, 0, 10, 10], spikes[0, 0, 11, 12] = 0.9, 0.8  # within the 5×5 kernel of a stronger one
    spikes[0, 0, 10, 16] = 0.7  # 6 px away: a peak of its own
    assert peak_points(spikes, threshold=0.5)[0].tolist() == [[10, 10], [16, 10]]
    assert peak_points(spikes, threshold=0.5, kernel=3)[0].tolist() == [[10, 10], [12, 11], [16, 10]]
    assert peak_points(np.zeros((1, 1, 8, 8), np.float32), threshold=0.0)[0].shape == (0, 2)  # > 0 needed
    # plane coordinates → volume coordinates: plane n of a slab starting at 7 along y; rows z, columns x
    points = peaks_to_points(np.stack([np.zeros_like(density), density]), 7, "y", 0.7)
    np.testing.assert_array_equal(points.points, [[12, 8, 15], [40, 8, 60]])
    assert points.labels.tolist() == [1, 1]
    assert PEAK_THRESHOLD == pytest.approx(0.49, abs=0.001)


# --- --prompts auto end to end ----------------------------------------------------------------------------

def test_auto_prompts_are_the_density_peaks(engine, data):
    plan = plan_tiles((100, 100), 64, 8)
    density = np.stack([_plane_density(engine, data, p) for p in range(2)])
    threshold = float(np.quantile(density, 0.999))
    assert threshold > 0
    labels, _, n_tiles, points = segment_slab_auto(
        engine, data[:2], SlabSettings(plan, batch=4, blend="center", label_type=np.dtype(np.uint8)), start=0,
        axis="z", max_points=4, peak_threshold=threshold)
    expected = peaks_to_points(density, 0, "z", threshold)
    assert len(points) > 0 and n_tiles == 2 * 2 * plan.num_tiles
    np.testing.assert_array_equal(points.points, expected.points)
    prompted, _, _ = segment_slab(engine, data[:2], plan, batch=4, blend="center", probabilities=False,
                                  label_type=np.dtype(np.uint8),
                                  prompts=slab_prompts(points, 0, 2, "z", plan, 4))
    np.testing.assert_array_equal(labels, prompted)


def test_cli_auto_differs_where_peaks_exist_and_not_where_none(tmp_path, volume, data, engine, monkeypatch,
                                                               capsys):
    density = _plane_density(engine, data)
    high = float(density.max()) * 2 + 1.0  # above every density: no peak, no prompt
    low = float(np.quantile(density, 0.999))
    plain = segment_volume(volume, tmp_path / "plain.zarr", backend=engine, block=2, probabilities=True)
    code, _, err = run_cli(monkeypatch, capsys, "segment", volume, "--out", tmp_path / "auto.zarr", "--model", MODEL,
                           "--backend", "torch", "--block", "2", "--probabilities", "--prompts", "auto",
                           "--peak-threshold", repr(low))
    assert code == 0, err
    assert "prompts auto:" in err and "density peaks" in err
    assert isinstance(open_ome_zarr(zarr.open_group(str(tmp_path / "auto.zarr"), mode="r")), ImageLabel05)
    auto = read_volume(tmp_path / "auto.zarr")
    assert auto.shape == data.shape
    probs = {name: np.asarray(zarr.open_array(str(tmp_path / name / "probabilities" / "s0"), mode="r"))
             for name in ("plain.zarr", "auto.zarr")}
    assert (probs["plain.zarr"] != probs["auto.zarr"]).any()  # the peaks prompted something
    assert (auto != read_volume(tmp_path / "plain.zarr")).any()
    in_memory = segment_labels(data, backend=engine, block=2, prompts="auto", peak_threshold=low)
    np.testing.assert_array_equal(in_memory, auto)  # the library's in-memory path runs the same two passes
    none = segment_volume(volume, tmp_path / "none.zarr", backend=engine, block=2, prompts="auto",
                          peak_threshold=high, probabilities=True)
    assert none.complete and none.config_hash not in (plain.config_hash,)
    np.testing.assert_array_equal(read_volume(tmp_path / "none.zarr"), read_volume(tmp_path / "plain.zarr"))
    np.testing.assert_array_equal(
        np.asarray(zarr.open_array(str(tmp_path / "none.zarr" / "probabilities" / "s0"), mode="r")),
        probs["plain.zarr"])


def test_resume_with_another_threshold_is_refused(tmp_path, volume, engine):
    out = tmp_path / "o.zarr"
    first = segment_volume(volume, out, backend=engine, block=2, prompts="auto")
    assert first.complete
    again = segment_volume(volume, out, backend=engine, block=2, prompts="auto", resume=True)
    assert again.complete and again.config_hash == first.config_hash
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(volume, out, backend=engine, block=2, prompts="auto", peak_threshold=0.3, resume=True)
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(volume, out, backend=engine, block=2, resume=True)


def test_auto_refusals(tmp_path, volume, monkeypatch, capsys, one_torch_thread):
    assert_one_line(run_cli(monkeypatch, capsys, "segment", volume, "--out", tmp_path / "o.zarr", "--model",
                            "scsam-tiny", "--backend", "torch", "--prompts", "auto"), "--prompts auto", "density")
    assert_one_line(run_cli(monkeypatch, capsys, "segment", volume, "--out", tmp_path / "o.zarr", "--model", MODEL,
                            "--backend", "torch", "--peak-threshold", "0.3"), "--peak-threshold")
    assert not (tmp_path / "o.zarr").exists()
