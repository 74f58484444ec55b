"""Point prompts and rotation TTA through the volume runtime (Prompt-DAS): reading points, cutting them per
tile, rotating them with their tiles, and `segment` end to end with prompt-das-tiny on the torch backend."""

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
from emseg_rt.runtime.prompts import (
    PointSet,
    load_points,
    read_points_array,
    read_points_csv,
    rotate_points,
    slab_prompts,
    window_prompts,
)
from emseg_rt.runtime.slab import run_tta
from emseg_rt.tiling import plan_tiles

MODEL = "prompt-das-tiny"  # tile 64, P = 4


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    return load_backend(MODEL, "torch")


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(5).integers(0, 256, (3, 100, 100), dtype=np.uint8)
    return write_ome_image(tmp_path / "in.zarr", data), data


# --- reading points ---------------------------------------------------------------------------------------

def test_csv_with_and_without_header_default_label(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("1,20.5,30\n\n# a comment\n2,5,6,0\n")
    points = read_points_csv(plain)
    np.testing.assert_array_equal(points.points, [[1, 20.5, 30], [2, 5, 6]])
    np.testing.assert_array_equal(points.labels, [1, 0])  # label defaults to 1
    header = tmp_path / "header.csv"
    header.write_text("x,label,y,z\n30,1,20.5,1\n6,0,5,2\n")  # a header may reorder the columns
    same = read_points_csv(header)
    np.testing.assert_array_equal(same.points, points.points)
    np.testing.assert_array_equal(same.labels, points.labels)
    assert same.digest == points.digest
    three = tmp_path / "three.csv"
    three.write_text("z,y,x\n1,20.5,30\n")
    assert read_points_csv(three).labels.tolist() == [1]
    empty = tmp_path / "empty.csv"
    empty.write_text("z,y,x,label\n")
    with pytest.raises(EmsegError, match="holds no points"):  # a header alone is a mistake (issue 26), not no prompts
        load_points(empty)


@pytest.mark.parametrize("text, fragment", [
    ("1,2,3\n4,5\n", "line 2"),
    ("1,2,3\n4,five,6\n", "line 2"),
    ("z,y,x\n1,2,3\n1,2,3,1\n", "line 3"),
    ("1,2,3,7\n", "line 1: label 7"),
    ("a,b,c\n", "line 1: header"),
    ("1,nan,3\n", "line 1"),
])
def test_bad_csv_row_is_one_line_naming_it(tmp_path, text, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(EmsegError) as err:
        read_points_csv(path)
    assert fragment in str(err.value) and "\n" not in str(err.value) and "bad.csv" in str(err.value)


def test_points_from_arrays(tmp_path):
    data = np.array([[1, 2, 3, 0], [4, 5, 6, 1]], dtype=np.float32)
    zarr.create_array(str(tmp_path / "p.zarr"), data=data)
    points = load_points(tmp_path / "p.zarr")
    np.testing.assert_array_equal(points.points, data[:, :3])
    np.testing.assert_array_equal(points.labels, [0, 1])
    assert read_points_array(data[:, :3]).labels.tolist() == [1, 1]
    with pytest.raises(EmsegError, match=r"\(N, 3\)"):
        read_points_array(np.zeros((2, 5)))
    with pytest.raises(EmsegError, match="label"):
        read_points_array(np.array([[1, 2, 3, 2]]))


# --- points per window ------------------------------------------------------------------------------------

def test_point_maps_into_every_tile_containing_it_and_no_other():
    plan = plan_tiles((100, 100), 64, 8)  # origins -8, 40, 44 on each axis: tiles overlap a lot
    points = PointSet(np.array([[2.4, 50.0, 5.25], [3.0, 10, 10], [1.6, 99, 99]]), np.array([1, 1, 0]))
    coords, labels = window_prompts(points, 2, "z", plan, 4)
    assert coords.shape == (plan.num_tiles, 4, 2) and coords.dtype == np.float32 and labels.dtype == np.int64
    for i, (y0, x0) in enumerate(plan.origins):
        expected = [(x - x0, y - y0, lab) for (z, y, x), lab in zip(points.points, points.labels)
                    if 0 <= x - x0 < 64 and 0 <= y - y0 < 64
                    and z != 3.0]  # z 2.4 and 1.6 round to plane 2, z 3 does not
        got = [(c[0], c[1], lab) for c, lab in zip(coords[i], labels[i]) if lab >= 0]
        assert got == [(np.float32(x), np.float32(y), lab) for x, y, lab in expected], i
        assert (labels[i, len(expected):] == -1).all()
    assert (labels >= 0).sum() > 2  # the first point sits in several overlapping tiles
    empty_c, empty_l = window_prompts(points, 0, "z", plan, 4)  # no point on plane 0: all padding
    assert (empty_l == -1).all() and (empty_c == 0).all()
    # slicing along y: plane rows are z, columns x
    _, labels_y = window_prompts(PointSet(np.array([[1.0, 7.0, 3.0]]), np.array([1])), 7, "y",
                                 plan_tiles((3, 100), 64, 8), 4)
    assert (labels_y >= 0).sum() == 1


def test_overflow_keeps_the_nearest_to_the_centre():
    plan = plan_tiles((64, 64), 64, 0)  # one tile, origin (0, 0), centre 31.5
    xs = np.array([31.0, 0.0, 33.0, 63.0, 30.0, 35.0])
    points = PointSet(np.stack([np.zeros(6), np.full(6, 31.5), xs], axis=1), np.array([1, 0, 1, 0, 0, 1]))
    counts: dict[str, int] = {}
    coords, labels = window_prompts(points, 0, "z", plan, 4, counts)
    assert sorted(coords[0, :, 0].tolist()) == [30.0, 31.0, 33.0, 35.0]
    assert counts == {"tiles_over": 1, "points_dropped": 2}
    kept = dict(zip(coords[0, :, 0].tolist(), labels[0].tolist()))
    assert kept == {31.0: 1, 33.0: 1, 30.0: 0, 35.0: 1}
    rows = slab_prompts(points, 0, 2, "z", plan, 4)
    assert rows["point_coords"].shape == (2, 4, 2) and (rows["point_labels"][1] == -1).all()


# --- rotation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_points_turn_with_their_tile(k):
    t = 8
    tile = np.zeros((t, t), np.uint8)
    tile[2, 5] = 1  # a single marker at (x, y) = (5, 2)
    turned = np.rot90(tile, k)
    y, x = np.argwhere(turned)[0]
    coords = np.array([[[5.0, 2.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, -1]])
    out = rotate_points(coords, labels, k, t)
    assert out[0, 0].tolist() == [x, y]
    assert out[0, 1].tolist() == [0.0, 0.0]  # padding keeps its coordinates
    if k % 4 == 1:
        assert out[0, 0].tolist() == [2.0, t - 1 - 5.0]  # (x, y) → (y, T − 1 − x)


def test_tta_is_rotation_equivariant_with_prompts(engine):
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (2, 1, 64, 64), dtype=np.uint8)
    coords = np.array([[[10.0, 40.0], [50.0, 7.0], [0, 0], [0, 0]], [[0, 0]] * 4], np.float32)
    labels = np.array([[1, 0, -1, -1], [-1] * 4])
    prompts = {"point_coords": coords, "point_labels": labels}
    base = run_tta(engine, tiles, prompts)
    assert base["logits"].shape == (2, 1, 64, 64) and np.isfinite(base["logits"]).all()
    assert base["labels"].shape == (2, 64, 64) and base["labels"].dtype == np.uint8
    np.testing.assert_array_equal(base["labels"], (base["logits"][:, 0] > engine.spec.threshold).astype(np.uint8))
    turned = run_tta(engine, np.rot90(tiles, 1, axes=(-2, -1)),
                     {"point_coords": rotate_points(coords, labels, 1, 64), "point_labels": labels})
    np.testing.assert_allclose(turned["logits"], np.rot90(base["logits"], 1, axes=(-2, -1)), atol=1e-5)
    # the point matters: without it the first tile's TTA logits differ
    plain = run_tta(engine, tiles, {"point_coords": coords, "point_labels": np.full_like(labels, -1)})
    assert not np.allclose(plain["logits"][0], base["logits"][0])
    # an input invariant under quarter turns (a constant tile) gives quarter-turn-invariant TTA output
    flat = run_tta(engine, np.full((1, 1, 64, 64), 120, np.uint8),
                   {"point_coords": np.zeros((1, 4, 2), np.float32), "point_labels": np.full((1, 4), -1)})
    np.testing.assert_allclose(flat["logits"], np.rot90(flat["logits"], 1, axes=(-2, -1)), atol=1e-5)


# --- the volume runtime ----------------------------------------------------------------------------------

def test_a_point_changes_only_the_tiles_containing_it(tmp_path, volume, engine):
    src, data = volume
    point = PointSet(np.array([[1.0, 20.0, 15.0]]), np.array([1]))
    a = segment_volume(src, tmp_path / "a.zarr", backend=engine, probabilities=True, block=2)
    b = segment_volume(src, tmp_path / "b.zarr", backend=engine, probabilities=True, block=2, prompts=point)
    assert a.complete and b.complete and a.config_hash != b.config_hash
    pa = np.asarray(zarr.open_array(str(tmp_path / "a.zarr" / "probabilities" / "s0"), mode="r"))
    pb = np.asarray(zarr.open_array(str(tmp_path / "b.zarr" / "probabilities" / "s0"), mode="r"))
    np.testing.assert_array_equal(pa[:, [0, 2]], pb[:, [0, 2]])  # other planes: untouched
    plan = plan_tiles((100, 100), 64, 8)
    touched = np.zeros((100, 100), bool)
    for (y0, x0), (c0, c1, c2, c3) in zip(plan.origins, plan.cores):
        if 0 <= 20 - y0 < 64 and 0 <= 15 - x0 < 64:
            touched[c0:c1, c2:c3] = True
    assert 0 < touched.sum() < touched.size
    np.testing.assert_array_equal(pa[:, 1][:, ~touched], pb[:, 1][:, ~touched])  # cores of other tiles
    assert (pa[:, 1][:, touched] != pb[:, 1][:, touched]).any()  # the point does something where it is
    labels = segment_labels(data, backend=engine, block=2, prompts=point)
    np.testing.assert_array_equal(labels, read_volume(tmp_path / "b.zarr"))


def test_tta_end_to_end(tmp_path, volume, engine):
    src, data = volume
    rep = segment_volume(src, tmp_path / "t.zarr", backend=engine, tta=True, block=3)
    assert rep.complete and rep.tiles_computed == 3 * 9
    labels = read_volume(tmp_path / "t.zarr")
    assert labels.shape == data.shape and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, segment_labels(data, backend=engine, tta=True))
    plain = segment_volume(src, tmp_path / "p.zarr", backend=engine, block=3)
    assert plain.config_hash != rep.config_hash


def test_resume_with_other_prompts_is_refused(tmp_path, volume, engine):
    src, _ = volume
    csv_a, csv_b = tmp_path / "a.csv", tmp_path / "b.csv"
    csv_a.write_text("z,y,x\n1,20,15\n")
    csv_b.write_text("z,y,x\n1,20,16\n")
    out = tmp_path / "o.zarr"
    segment_volume(src, out, backend=engine, block=2, prompts=csv_a)
    assert segment_volume(src, out, backend=engine, block=2, prompts=csv_a, resume=True).complete
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(src, out, backend=engine, block=2, prompts=csv_b, resume=True)
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(src, out, backend=engine, block=2, resume=True)
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(src, out, backend=engine, block=2, prompts=csv_a, tta=True, resume=True)


def test_cli_prompt_das_with_and_without_prompts(tmp_path, volume, monkeypatch, capsys, one_torch_thread):
    src, data = volume
    csv = tmp_path / "points.csv"
    csv.write_text("z,y,x,label\n0,50,50,1\n2,10,90,0\n")
    for name, extra in (("none.zarr", ()), ("csv.zarr", ("--prompts", csv)), ("tta.zarr", ("--prompts", csv, "--tta"))):
        code, _, err = run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / name, "--model", MODEL,
                               "--backend", "torch", "--block", "2", "-q", *extra)
        assert code == 0, err
        assert isinstance(open_ome_zarr(zarr.open_group(str(tmp_path / name), mode="r")), ImageLabel05)
        assert read_volume(tmp_path / name).shape == data.shape


def test_cli_refusals(tmp_path, volume, monkeypatch, capsys, one_torch_thread):
    src, _ = volume
    bad = tmp_path / "bad.csv"
    bad.write_text("z,y,x\n1,2,3\n1,two,3\n")
    assert_one_line(run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / "o.zarr", "--model", MODEL,
                            "--backend", "torch", "--prompts", bad), "bad.csv", "line 3")
    good = tmp_path / "good.csv"
    good.write_text("1,2,3\n")
    assert_one_line(run_cli(monkeypatch, capsys, "segment", src, "--out", tmp_path / "o.zarr", "--model",
                            "scsam-tiny", "--backend", "torch", "--prompts", good), "--prompts", "no prompts")
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(EmsegError, match="vanilla-sam|prompt-free"):
        segment_volume(src, tmp_path / "v.zarr", model="vanilla-sam-tiny", backend="torch")


def test_onnxruntime_package_takes_the_same_prompts(volume, engine):
    """P comes from the ONNX graph's input shapes there; the labels agree with torch's (up to ties)."""
    _, data = volume
    onnx = load_backend(MODEL, "onnxruntime")  # exports once per test session (~15 s)
    point = PointSet(np.array([[1.0, 20.0, 15.0]]), np.array([1]))
    a = segment_labels(data[:2], backend=onnx, prompts=point, tta=True)
    b = segment_labels(data[:2], backend=engine, prompts=point, tta=True)
    assert (a == b).mean() > 0.99


def test_the_torch_backend_skips_the_density_head_unless_asked(engine):
    """Labels alone do not run the density head (≈ half a paper-size window's FLOPs); asking for 'density'
    does, and the labels are the same either way."""
    calls = []
    hook = engine.model.head.density_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        tiles = np.random.default_rng(2).integers(0, 256, (2, 1, 64, 64), dtype=np.uint8)
        prompts = {"point_coords": np.zeros((2, 4, 2), np.float32), "point_labels": np.full((2, 4), -1, np.int64)}
        plain = engine.run(tiles, want_logits=True, prompts=prompts)
        assert calls == [] and "density" not in plain
        with_density = engine.run(tiles, want_logits=True, prompts=prompts, outputs=("density",))
        assert calls == [1] and with_density["density"].shape == (2, 1, 64, 64)
        np.testing.assert_array_equal(plain["labels"], with_density["labels"])
        np.testing.assert_array_equal(plain["logits"], with_density["logits"])
    finally:
        hook.remove()
