"""`segment --planes xy,xz,yz` (issue 27.1): orthoplane fusion through the one block driver.

The reference is built from three ordinary runs, one per `--axis`, each writing its uint8 probabilities
(`--probabilities`): their mean, merged by hand here (class k + 1 of the largest mean probability, 0 where none
is above sigmoid(0)·255 = 127.5), is what the fused run must write. A kill in a pass or in the fused blocks,
then `--resume`, gives the bytes of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from cli_helpers import assert_one_line, run_cli
from emseg_rt.io import write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime import planes as planes_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (20, 36, 44)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = np.random.default_rng(27).integers(0, 255, SHAPE).astype(np.uint8)
    return write_ome_image(tmp_path_factory.mktemp("planes") / "in.zarr", data, voxel_size=(4.0, 4.0, 4.0))


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fused(engine, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "out.zarr"
    report = segment_volume(source, out, backend=engine, block=8, planes="xy,xz,yz")
    return out, report


def test_fused_labels_are_the_class_merge_of_the_three_axes_mean_probability(engine, source, fused, tmp_path):
    out, report = fused
    assert report.complete and set(report.plane_seconds) == {"xz", "yz"}
    probabilities = []
    for axis in "zyx":
        one = tmp_path / f"{axis}.zarr"
        segment_volume(source, one, backend=engine, block=8, axis=axis, probabilities=True)
        probabilities.append(np.asarray(zarr.open_array(str(one / "probabilities" / "s0"))).astype(np.float32))
    mean = sum(probabilities) / 3
    expected = np.where(mean.max(axis=0) > 127.5, mean.argmax(axis=0) + 1, 0)
    labels = np.asarray(zarr.open_array(str(out / "s0")))
    assert np.array_equal(labels, expected)
    assert not np.array_equal(labels, np.asarray(zarr.open_array(str(tmp_path / "z.zarr" / "s0"))))  # it changed
    assert not (out / ".emseg-rt" / f"planes-{report.config_hash[:16]}" / "y").exists()  # passes removed at the end


@pytest.mark.parametrize("where", ["pass", "fused"])
def test_a_kill_then_resume_gives_the_same_bytes(engine, source, fused, tmp_path, monkeypatch, where):
    out = tmp_path / "out.zarr"
    calls = {"n": 0}
    if where == "pass":
        real = planes_module.PlanePass.write

        def die(self, *args, **kwargs):
            calls["n"] += 1
            if self.axis == "x" and calls["n"] > 4:  # the yz pass, after its first blocks
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)
        monkeypatch.setattr(planes_module.PlanePass, "write", die)
    else:
        from emseg_rt.runtime import output as output_module
        real = output_module.OutputStore.mark_done

        def die(self, index, digest):
            if index == 1:
                raise KeyboardInterrupt
            return real(self, index, digest)
        monkeypatch.setattr(output_module.OutputStore, "mark_done", die)
    with pytest.raises(KeyboardInterrupt):
        segment_volume(source, out, backend=engine, block=8, planes="xy,xz,yz")
    monkeypatch.undo()
    report = segment_volume(source, out, backend=engine, block=8, planes="xy,xz,yz", resume=True)
    assert report.complete
    assert tree(out / "s0") == tree(fused[0] / "s0")


def test_anisotropic_voxels_and_bad_planes_are_one_line(tmp_path, monkeypatch, capsys):
    src = write_ome_image(tmp_path / "aniso.zarr", np.ones((4, 40, 40), np.uint8), voxel_size=(30.0, 4.0, 4.0))
    base = ("segment", src, "--out", tmp_path / "o.zarr", "--model", "scsam-tiny", "--backend", "torch")
    assert_one_line(run_cli(monkeypatch, capsys, *base, "--planes", "xy,xz"), "anisotropic voxels", "resample")
    assert_one_line(run_cli(monkeypatch, capsys, *base, "--planes", "xy,zz"), "--planes", "xy, xz, yz")
    assert_one_line(run_cli(monkeypatch, capsys, *base, "--planes", "xy,xz", "--axis", "x"), "drop --axis")
    assert not (tmp_path / "o.zarr").exists()
    image = tmp_path / "section.zarr"
    zarr.save_array(str(image), np.ones((40, 40), np.uint8))
    result = run_cli(monkeypatch, capsys, "segment", image, "--out", tmp_path / "o2.zarr", "--model", "scsam-tiny",
                     "--backend", "torch", "--planes", "xy,xz")
    assert_one_line(result, "a 2D image has only its xy plane")
    assert not (tmp_path / "o2.zarr").exists()
