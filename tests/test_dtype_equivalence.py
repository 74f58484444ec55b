"""A linear rescale of the same image segments the same (issue 25): a uint8 phantom and its exact rescales to
uint16, int16, int32, uint32, int8, float32 and float64, run through `segment_labels` with the embedded default
model, and where the model's reference window is recorded (config, backend spec, package manifest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.export.writer import normalisation_record
from emseg_rt.metrics import evaluate
from emseg_rt.models import get_config
from emseg_rt.models.default_model import default_model_name, load_default_model
from emseg_rt.package import FORMAT_VERSION, PACKAGE_FORMAT, write_manifest
from emseg_rt.runtime import segment_labels
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.reference import reference_window

REPO = Path(__file__).resolve().parents[1]
PHANTOM_SHAPE, PHANTOM_SEED = (4, 160, 160), 0  # the benchmark's first test-size phantom (seeds 0-99: never trained on)
DEFAULT_REFERENCE = (52.0, 185.0)  # the default model's config (recomputed by benchmarks/dtype_equivalence.py)


def _rescales() -> dict:
    """The exact linear rescales the benchmark measures (`benchmarks/dtype_equivalence.py` RESCALES)."""
    spec = importlib.util.spec_from_file_location("dtype_equivalence", REPO / "benchmarks" / "dtype_equivalence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RESCALES


RESCALES = _rescales()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine():
    return TorchBackend(load_default_model())  # what `segment --backend torch` runs


@pytest.fixture(scope="module")
def uint8_run(engine):
    phantom = generate_phantom(PHANTOM_SHAPE, seed=PHANTOM_SEED)
    return phantom, segment_labels(phantom.image, backend=engine)


def test_rescales_cover_six_dtypes_and_are_exact():
    phantom = generate_phantom((4, 32, 32), seed=PHANTOM_SEED)
    assert len(RESCALES) >= 6 and "uint8" not in RESCALES
    for name, rescale in RESCALES.items():
        values = rescale(phantom.image)
        assert values.dtype.name == name
        pairs = set(zip(phantom.image.ravel().tolist(), values.ravel().tolist()))
        assert len(pairs) == len({u for u, _ in pairs}) == len({v for _, v in pairs}), name  # one-to-one


@pytest.mark.parametrize("dtype", sorted(RESCALES))
def test_rescaled_phantom_segments_as_the_uint8_one(dtype, engine, uint8_run):
    phantom, uint8_labels = uint8_run
    labels = segment_labels(RESCALES[dtype](phantom.image), backend=engine)
    agreement = (labels == uint8_labels).mean()
    assert agreement >= 0.995, f"{dtype}: {100 * agreement:.2f} % of voxels as in uint8"
    if dtype == "uint16":
        rescaled = evaluate(labels, phantom.labels, instance_metrics=False)
        original = evaluate(uint8_labels, phantom.labels, instance_metrics=False)
        assert abs(rescaled.mean_dice - original.mean_dice) <= 0.005, (rescaled.dice, original.dice)
        for name, value in original.dice.items():
            assert abs(rescaled.dice[name] - value) <= 0.005, (name, rescaled.dice, original.dice)


def test_a_contrast_stretch_fails_the_same_bar(engine, uint8_run):
    """The mapping before reference windows (the percentiles stretched onto 0..255, now `--window p0.5,p99.5`)
    misses the bar: the test above measures the mapping, not a model that ignores intensities. (The retrained
    default model saw contrast augmentation: 97.3 % agreement here, where the first one had under 95 %.)"""
    phantom, uint8_labels = uint8_run
    labels = segment_labels(RESCALES["uint16"](phantom.image), backend=engine, window="p0.5,p99.5")
    assert (labels == uint8_labels).mean() < 0.99


def test_the_default_model_records_its_reference_window(engine):
    assert get_config(default_model_name()).reference_window == DEFAULT_REFERENCE
    assert engine.spec.reference_window == DEFAULT_REFERENCE
    assert reference_window(None, "torch") == reference_window(None, engine) == DEFAULT_REFERENCE
    assert reference_window("scsam-tiny", "auto") is None  # random weights: no training data, no reference
    assert normalisation_record(get_config(default_model_name()))["reference_window"] == list(DEFAULT_REFERENCE)
    assert "reference_window" not in normalisation_record(get_config("scsam-tiny"))


def _package(root: Path, normalisation: dict) -> str:
    root.mkdir()
    write_manifest(root, {"format": PACKAGE_FORMAT, "format_version": FORMAT_VERSION,
                          "input": {"name": "tiles", "normalisation": normalisation}})
    return str(root)


def test_a_package_manifest_carries_the_reference_window(tmp_path):
    package = _package(tmp_path / "p", {"inside_graph": True, "reference_window": [40, 200.5]})
    assert reference_window(package, "onnxruntime") == (40.0, 200.5)
    assert reference_window(_package(tmp_path / "old", {"inside_graph": True}), "auto") is None
    assert reference_window(str(tmp_path / "missing/"), "auto") is None  # the loader refuses it in its own words
    for bad in ([200, 40], [0, 300], ["a", 1], [1, 2, 3], "52,185"):
        package = _package(tmp_path / f"bad{len(list(tmp_path.iterdir()))}", {"reference_window": bad})
        with pytest.raises(EmsegError) as info:
            reference_window(package, "auto")
        assert str(info.value).startswith(f"package {package}: reference_window") and "\n" not in str(info.value)
