"""bioimage.io packages: `emseg-rt export MODEL --bioimageio OUT.zip` passes bioimageio.core's own test, its
prediction is our segmentation, and `emseg-rt segment --model OUT.zip` runs it as the source package runs."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
from bioimageio.core import load_model_description, predict
from bioimageio.core import test_model as bioimageio_test_model  # (a name pytest would collect as a test)

from emseg_rt.cli import main
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.io import read_volume
from emseg_rt.runtime import segment_labels
from cli_helpers import assert_one_line, run_cli

MODEL = "scsam-phantom"  # the embedded default model (trained weights, tile 128), fp32


@pytest.fixture(scope="module")
def package_zip(tmp_path_factory, one_torch_thread):
    """`emseg-rt export scsam-phantom --bioimageio scsam-phantom.zip`, run once for the module."""
    out = tmp_path_factory.mktemp("bioimageio") / f"{MODEL}.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["emseg-rt", "export", MODEL, "--bioimageio", str(out)])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"export exited with {exc.code}"
    return out


def test_bioimageio_core_validates_and_reproduces_the_package(package_zip):
    summary = bioimageio_test_model(package_zip)  # format validation, then the weights reproduce the test outputs
    assert summary.status == "passed", summary.display() or summary
    assert any("Reproduce test outputs" in d.name and d.status == "passed" for d in summary.details)
    descr = load_model_description(package_zip)
    tiles, = descr.inputs
    assert [str(a.id) for a in tiles.axes] == ["batch", "channel", "y", "x"]
    assert [getattr(a, "size", None) for a in tiles.axes[2:]] == [128, 128] and tiles.data.type == "uint8"
    assert {str(o.id): [str(a.id) for a in o.axes] for o in descr.outputs} == {
        "logits": ["batch", "channel", "y", "x"], "labels": ["batch", "y", "x"]}
    assert descr.outputs[0].axes[1].channel_names == ["nucleus", "mitochondria", "granules"]
    assert not tiles.preprocessing[:-1] and not descr.outputs[1].postprocessing[:-1]  # only the spec's ensure_dtype
    assert descr.weights.onnx is not None and descr.weights.pytorch_state_dict is None
    assert str(descr.cite[0].url) == "https://arxiv.org/abs/2507.17149" and descr.authors[0].name == "Bo Fang"
    with zipfile.ZipFile(package_zip) as archive:
        names = set(archive.namelist())
        card = archive.read("README.md").decode()
    assert {"full.onnx", "tiles.npy", "logits.npy", "labels.npy", "cover.png", "rdf.yaml"} <= names
    assert "## Validation" in card and "# Model card: `scsam-phantom`" in card  # models/scsam-phantom.md


def test_bioimageio_prediction_is_segment_labels_on_the_same_tile(package_zip):
    descr = load_model_description(package_zip)
    tile = np.load(descr.inputs[0].test_tensor.get_reader())  # (1, 1, 128, 128) uint8: a phantom plane
    sample = predict(model=descr, inputs={descr.inputs[0].id: tile})
    predicted = np.asarray(sample.members["labels"].data)  # (1, 128, 128): batch, y, x
    # the tile as a one-plane volume, in one tile (halo 0: no overlapping tiles stitched)
    ours = segment_labels(tile[0], model=MODEL, backend="onnxruntime", halo=0)
    assert predicted.shape == ours.shape == (1, 128, 128)
    assert len(np.unique(ours)) >= 3  # a real segmentation, not one class everywhere
    np.testing.assert_array_equal(predicted, ours)
    np.testing.assert_array_equal(segment_labels(tile[0], model=str(package_zip), halo=0), ours)  # the zip itself


def test_segment_with_the_zip_labels_as_the_source_package(package_zip, tmp_path, monkeypatch, capsys):
    phantom = generate_phantom((3, 160, 176), seed=11)  # not a tile multiple: tiles overlap and get stitched
    volume = write_phantom(tmp_path / "cell.zarr", phantom)
    code, _, err = run_cli(monkeypatch, capsys, "segment", volume, "--model", package_zip,
                           "--out", tmp_path / "seg.zarr")
    assert code == 0, err
    source = segment_labels(phantom.image, model=MODEL, backend="onnxruntime")
    np.testing.assert_array_equal(read_volume(tmp_path / "seg.zarr"), source)


def test_a_corrupt_or_foreign_zip_is_refused_in_one_line(package_zip, tmp_path, monkeypatch, capsys):
    volume = write_phantom(tmp_path / "cell.zarr", generate_phantom((2, 64, 64), seed=5))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(package_zip.read_bytes()[:-4096])
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    for bad in (truncated, foreign):
        result = run_cli(monkeypatch, capsys, "segment", volume, "--model", bad, "--out", tmp_path / f"{bad.stem}.zarr")
        assert_one_line(result, str(bad), "not a bioimage.io model package")
        assert not (tmp_path / f"{bad.stem}.zarr").exists()


def test_export_refusals_are_one_line(package_zip, tmp_path, monkeypatch, capsys):
    assert_one_line(run_cli(monkeypatch, capsys, "export", MODEL), "--out", "--bioimageio")
    assert_one_line(run_cli(monkeypatch, capsys, "export", MODEL, "--bioimageio", package_zip), "exists", "--overwrite")
    assert_one_line(run_cli(monkeypatch, capsys, "export", MODEL, "--bioimageio", tmp_path / "p.zip", "--component",
                            "full"), "--component")
    assert not (tmp_path / "p.zip").exists()
