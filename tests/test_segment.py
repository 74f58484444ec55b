"""`segment` end to end: OME-Zarr output other readers open, normalisation, resume after SIGKILL, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume, read_label_metadata, read_volume, write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.output import done_markers

REPO = Path(__file__).resolve().parents[1]
MODEL = "scsam-tiny"


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(21)
    data = rng.integers(0, 256, (6, 200, 200), dtype=np.uint8)
    return write_ome_image(tmp_path / "in.zarr", data, voxel_size=(30.0, 5.0, 5.0)), data


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "emseg_rt", "segment", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_output_is_an_ome_zarr_label_image(tmp_path, image, engine):
    src, data = image
    out = tmp_path / "out.zarr"
    report = segment_volume(src, out, backend=engine, block=4, probabilities=True, report=tmp_path / "r.json")
    assert report.complete and report.slices_computed == 6 and report.tiles_computed == 6 * 9
    labels_path = out  # the output root is the label image
    vol = open_volume(labels_path)
    assert vol.shape == data.shape and vol.dtype == np.uint8 and vol.chunks == (1, 200, 200)
    assert zarr.open_array(str(out / "s0"), mode="r").shards == (4, 200, 200)  # one shard per write block
    assert vol.voxel_size == (30.0, 5.0, 5.0) and vol.units == ("nanometer",) * 3
    meta = read_label_metadata(labels_path)
    assert [p["class"] for p in meta["properties"]] == list(engine.spec.classes)
    assert len(meta["colors"]) == 3
    assert zarr.open_group(str(out), mode="r").attrs["emseg_rt"]["status"] == "complete"

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = [n for n in Reader(parse_url(str(labels_path)))() if n.specs and isinstance(n.specs[0], Label)]
    assert nodes, "ome-zarr's reader does not see a label image"
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), read_volume(labels_path))

    probs = open_volume(out / "probabilities")
    assert probs.shape == (3,) + data.shape and probs.axes == ("c", "z", "y", "x")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["slices_computed"] == 6 and 0.0 <= saved["backend_idle_fraction"] <= 1.0
    assert saved["compute_seconds"] > 0 and sum(saved["label_counts"].values()) == data.size


def test_slicing_axis_y_equals_transposed_z(tmp_path, engine):
    rng = np.random.default_rng(22)
    data = rng.integers(0, 256, (40, 5, 60), dtype=np.uint8)
    write_ome_image(tmp_path / "a.zarr", data)
    write_ome_image(tmp_path / "b.zarr", np.ascontiguousarray(data.transpose(1, 0, 2)))
    segment_volume(tmp_path / "a.zarr", tmp_path / "oa.zarr", backend=engine, axis="y", block=2)
    segment_volume(tmp_path / "b.zarr", tmp_path / "ob.zarr", backend=engine, axis="z", block=2)
    a = read_volume(tmp_path / "oa.zarr")
    b = read_volume(tmp_path / "ob.zarr")
    np.testing.assert_array_equal(a, b.transpose(1, 0, 2))


def test_uint16_and_float_use_dataset_percentiles(tmp_path, engine):
    rng = np.random.default_rng(23)
    base = rng.integers(0, 256, (3, 60, 50), dtype=np.uint8)
    as_u16 = base.astype(np.uint16) * 100 + 1000
    zarr.save_array(str(tmp_path / "u16.zarr"), as_u16)
    r16 = segment_volume(tmp_path / "u16.zarr", tmp_path / "o16.zarr", backend=engine)
    norm = zarr.open_group(str(tmp_path / "o16.zarr"), mode="r").attrs["emseg_rt"]["normalisation"]
    assert norm["method"] == "percentile" and norm == r16.normalisation
    assert 1000 <= norm["low"] < norm["high"] <= 26500
    as_float = (base.astype(np.float32) - 128) / 7.0
    zarr.save_array(str(tmp_path / "f.zarr"), as_float)
    segment_volume(tmp_path / "f.zarr", tmp_path / "of.zarr", backend=engine)
    a = read_volume(tmp_path / "o16.zarr")
    b = read_volume(tmp_path / "of.zarr")
    assert (a == b).mean() > 0.99  # same image up to an affine intensity map → same normalised tiles


def test_volume_smaller_than_one_tile(tmp_path, engine):
    """A 17×9 plane is one tile: the plane reflect-padded by numpy around it (the halo before it, the rest
    after), run through the backend in one call, cropped back. The output is that crop, voxel for voxel."""
    data = np.random.default_rng(24).integers(0, 255, (2, 17, 9), np.uint8)
    zarr.save_array(str(tmp_path / "small.zarr"), data)
    report = segment_volume(tmp_path / "small.zarr", tmp_path / "o.zarr", backend=engine)
    labels = read_volume(tmp_path / "o.zarr")
    assert labels.shape == (2, 17, 9) and report.tiles_computed == 2
    t, h = engine.spec.tile, report.halo  # 128, 16: pads wider than the plane (numpy reflects periodically)
    tiles = np.stack([np.pad(plane, ((h, t - h - 17), (h, t - h - 9)), mode="reflect") for plane in data])
    expected = engine.run(tiles[:, None])["labels"][:, h:h + 17, h:h + 9]
    # Measured: equal on every voxel whether the two tiles run together, padded to a batch of 4, or alone.
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1  # not a constant answer


def test_existing_output_needs_resume_or_overwrite(tmp_path, image, engine):
    src, _ = image
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=3)
    with pytest.raises(EmsegError, match="--resume .* --overwrite"):
        segment_volume(src, out, backend=engine, block=3)
    again = segment_volume(src, out, backend=engine, block=3, resume=True)
    assert again.blocks_done_before == 2 and again.slices_computed == 0 and again.complete
    with pytest.raises(EmsegError, match="different configuration"):
        segment_volume(src, out, backend=engine, block=3, halo=8, resume=True)
    assert segment_volume(src, out, backend=engine, block=3, halo=8, overwrite=True).complete


def _chunk_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("s*/**/*")) if p.is_file()}


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    rng = np.random.default_rng(25)
    data = rng.integers(0, 256, (40, 384, 384), dtype=np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data, chunks=(1, 384, 384))
    args = ["--model", MODEL, "--backend", "onnxruntime", "--block", "1", "--quiet"]
    reference = tmp_path / "ref.zarr"
    assert run_cli(str(src), "--out", str(reference), *args).returncode == 0

    out = tmp_path / "out.zarr"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "emseg_rt", "segment", str(src), "--out", str(out), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        markers = done_markers(out)
        if len(markers) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            killed_after = len(markers)
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_after is not None, "run finished before it could be killed; make the volume larger"
    assert proc.returncode == -signal.SIGKILL
    assert zarr.open_group(str(out), mode="r").attrs["emseg_rt"]["status"] == "incomplete"
    done = len(done_markers(out))
    assert done < 40

    resumed = run_cli(str(src), "--out", str(out), *args, "--resume", "--report", str(tmp_path / "r.json"))
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["blocks_done_before"] >= killed_after and report["complete"]
    assert report["slices_computed"] == 40 - report["blocks_done_before"]
    assert _chunk_bytes(out) == _chunk_bytes(reference)
    np.testing.assert_array_equal(read_volume(out),
                                  read_volume(reference))


# ---------------------------------------------------------------------------------------------- bad inputs


def _zarr(tmp_path: Path, name: str, data: np.ndarray) -> Path:
    zarr.save_array(str(tmp_path / name), data)
    return tmp_path / name


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.zarr", "does not exist"),
    "not zarr": (lambda p: (p / "plain").mkdir() or p / "plain", "not a zarr"),
    "4D": (lambda p: _zarr(p, "4d.zarr", np.zeros((2, 2, 8, 8), np.uint8)), "4D"),
    "1D": (lambda p: _zarr(p, "1d.zarr", np.zeros((8,), np.uint8)), "1D"),  # 2D images: test_segment_2d.py
    "dtype": (lambda p: _zarr(p, "b.zarr", np.zeros((2, 8, 8), np.int64)), "dtype int64"),
    "empty axis": (lambda p: _zarr(p, "e.zarr", np.zeros((0, 8, 8), np.uint8)), "empty axis"),
    "nan": (lambda p: _zarr(p, "n.zarr", np.where(np.eye(8)[None] > 0, np.nan, 1.0).repeat(3, 0)), "NaN or Inf"),
    "inf": (lambda p: _zarr(p, "i.zarr", np.full((3, 8, 8), np.inf, np.float32)), "NaN or Inf"),
    "group": (lambda p: zarr.open_group(str(p / "g.zarr"), mode="w").create_array("raw", shape=(2, 8, 8),
                                                                                    dtype="uint8") and p / "g.zarr",
              "--key"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_give_one_clear_line(tmp_path, case, engine):
    make, message = BAD_INPUTS[case]
    src = make(tmp_path)
    with pytest.raises(EmsegError, match=message):
        segment_volume(src, tmp_path / "out.zarr", backend=engine)
    assert not (tmp_path / "out.zarr").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    result = run_cli(str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "o.zarr"), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_corrupt_chunk_fails_and_output_stays_incomplete(tmp_path, engine):
    data = np.random.default_rng(26).integers(0, 255, (4, 40, 40), np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data, chunks=(1, 40, 40))
    (src / "s0" / "c" / "2" / "0" / "0").write_bytes(b"this is not zstd")
    out = tmp_path / "out.zarr"
    with pytest.raises(EmsegError, match="corrupt"):
        segment_volume(src, out, backend=engine, block=1)
    assert zarr.open_group(str(out), mode="r").attrs["emseg_rt"]["status"] == "incomplete"
    assert 2 not in done_markers(out)


def test_bad_output_locations(tmp_path, image, engine):
    src, _ = image
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(EmsegError, match="is a file"):
        segment_volume(src, tmp_path / "file.zarr", backend=engine)
    with pytest.raises(EmsegError, match="does not exist"):
        segment_volume(src, tmp_path / "no" / "such" / "out.zarr", backend=engine)
    if os.geteuid() == 0:
        read_only = Path("/proc/emseg-rt-test.zarr")  # root ignores mode bits; /proc refuses new entries
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = tmp_path / "ro" / "out.zarr"
    with pytest.raises(EmsegError, match="cannot write|not writable"):
        segment_volume(src, read_only, backend=engine)


# ---------------------------------------------------------------------------------------------- model packages


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    from emseg_rt.export import export_package

    return export_package(MODEL, tmp_path_factory.mktemp("pkg") / MODEL, batch_max=4, parity_seed=0)


def test_segment_with_a_model_package(tmp_path, image, package_dir):
    src, data = image
    report = segment_volume(src, tmp_path / "o.zarr", model=str(package_dir), backend="auto", block=3)
    assert report.backend == "onnxruntime" and report.complete
    assert read_volume(tmp_path / "o.zarr").shape == data.shape
    with pytest.raises(EmsegError, match="--batch 8 exceeds"):
        segment_volume(src, tmp_path / "o2.zarr", model=str(package_dir), backend="onnxruntime", batch=8)


def test_package_with_bad_hash_or_missing_file_is_refused(tmp_path, image, package_dir):
    import shutil

    src, _ = image
    broken = tmp_path / "broken"
    shutil.copytree(package_dir, broken)
    onnx_file = broken / "full.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(EmsegError, match="full.onnx"):
        segment_volume(src, tmp_path / "o.zarr", model=str(broken), backend="onnxruntime")
    onnx_file.unlink()
    with pytest.raises(EmsegError, match="full.onnx"):
        segment_volume(src, tmp_path / "o.zarr", model=str(broken), backend="onnxruntime")
    assert not done_markers(tmp_path / "o.zarr")
    with pytest.raises(EmsegError, match="does not exist"):
        segment_volume(src, tmp_path / "o.zarr", model=str(tmp_path / "no-package"), backend="onnxruntime")


def test_checkpoint_weights_are_used_and_bad_checkpoints_refused(tmp_path, image):
    import torch

    from emseg_rt.models import build

    src, data = image
    torch.manual_seed(123)  # weights that differ from the fixed-seed default init
    trained = build(MODEL).eval()
    ckpt = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), ckpt)
    out = tmp_path / "out.zarr"
    segment_volume(src, out, model=MODEL, checkpoints=[ckpt], backend="torch", block=6, halo=0)
    expected = np.empty_like(data)
    # halo 0 on a 200-wide plane with 128² tiles: a tile at 0 owns 0..127, the last tile sits flush with the
    # edge (origin 72, no padding) and owns 128..199. (origin, core start, core end) per axis:
    placements = ((0, 0, 128), (72, 128, 200))
    with torch.no_grad():
        for z in range(data.shape[0]):
            for y, y0, y1 in placements:
                for x, x0, x1 in placements:
                    tile = np.ascontiguousarray(data[z, y:y + 128, x:x + 128])
                    labels = trained(torch.from_numpy(tile)[None, None])["labels"][0].numpy()
                    expected[z, y0:y1, x0:x1] = labels[y0 - y:y1 - y, x0 - x:x1 - x]
    agreement = (read_volume(out) == expected).mean()
    assert agreement > 0.999

    bad = tmp_path / "bad.pt"
    torch.save({"head.nonsense": torch.zeros(1)}, bad)
    with pytest.raises(EmsegError, match="unexpected keys head.nonsense"):
        segment_volume(src, tmp_path / "o2.zarr", model=MODEL, checkpoints=[bad], backend="torch")
    result = run_cli(str(src), "--out", str(tmp_path / "o3.zarr"), "--model", MODEL, "--checkpoint",
                     str(tmp_path / "missing.pt"), "--backend", "torch", "--quiet")
    assert result.returncode == 2 and "no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
