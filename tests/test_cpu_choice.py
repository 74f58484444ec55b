"""`--precision auto` (issue 30.1): on a CPU with native bf16 the faster of ONNX Runtime fp32 and torch bf16 that
keeps >= 99.5 % of fp32's labels, measured once and cached; fp32 on every other CPU and for every named
precision; a package's own precision."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.runtime import cpu_choice, loader
from emseg_rt.runtime.cpu_choice import AGREEMENT_BAR, SPEED_MARGIN, Candidate, choose
from emseg_rt.runtime.devices import cpu_has_bf16
from emseg_rt.runtime.loader import load_backend
from emseg_rt.runtime.slab import segment_array

native_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (nothing to choose)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMSEG_RT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / cpu_choice.CHOICE_DIR


def records(cache_dir) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(cache_dir.glob("*.json"))]


def test_bf16_is_chosen_only_when_it_keeps_the_labels_and_is_clearly_faster():
    fp32 = Candidate("onnxruntime", "fp32", 1.0)
    assert choose([fp32, Candidate("torch", "bf16", 0.5, agreement=0.999)]).precision == "bf16"
    assert choose([fp32, Candidate("torch", "bf16", 0.5, agreement=AGREEMENT_BAR - 1e-4)]).precision == "fp32"
    assert choose([fp32, Candidate("torch", "bf16", 1 / SPEED_MARGIN + 0.02, agreement=1.0)]).precision == "fp32"
    assert choose([fp32, Candidate("torch", "bf16", 0.5, agreement=None)]).precision == "fp32"


@native_bf16
def test_default_model_choice_is_measured_once_and_bf16_keeps_its_labels(cache):
    notes: list[str] = []
    first = load_backend(None, "auto", "cpu", say=notes.append)
    assert len(notes) == 1 and notes[0].startswith(f"backend: {first.name} {first.spec.precision} (auto: ")
    assert "measured now" in notes[0]
    (record,) = records(cache)
    fp32, bf16 = record["candidates"]
    assert (fp32["backend"], fp32["precision"], bf16["backend"], bf16["precision"]) == \
        ("onnxruntime", "fp32", "torch", "bf16")
    # the trained default model in bf16 keeps the labels on the phantom tiles (measured 99.96 %)
    assert bf16["agreement"] >= AGREEMENT_BAR, bf16
    assert record["chosen"] == asdict(choose([Candidate(**fp32), Candidate(**bf16)]))
    assert (first.name, first.spec.precision) == (record["chosen"]["backend"], record["chosen"]["precision"])
    first.close()
    notes.clear()
    again = load_backend(None, "auto", "cpu", say=notes.append)  # read back, not measured again
    assert "cached" in notes[0] and "measured now" not in notes[0]
    assert (again.name, again.spec.precision) == (first.name, first.spec.precision)
    assert len(records(cache)) == 1


@native_bf16
def test_random_weights_keep_fp32_because_bf16_changes_their_labels(cache):
    engine = load_backend("scsam-tiny", "auto", "cpu")
    (record,) = records(cache)
    assert record["candidates"][1]["agreement"] < AGREEMENT_BAR  # nearly tied logits: measured ~72 %
    assert (engine.name, engine.spec.precision) == ("onnxruntime", "fp32")


@native_bf16
def test_a_record_that_does_not_match_or_does_not_parse_is_measured_again(cache):
    load_backend("scsam-tiny", "auto", "cpu", batch=2).close()
    (path,) = sorted(cache.glob("*.json"))
    path.write_text("{not json")
    load_backend("scsam-tiny", "auto", "cpu", batch=2).close()
    assert records(cache)[0]["key"]["batch"] == 2
    load_backend("scsam-tiny", "auto", "cpu", batch=3).close()  # another batch: its own measurement
    assert sorted(r["key"]["batch"] for r in records(cache)) == [2, 3]


def test_without_native_bf16_or_with_a_named_precision_nothing_is_measured(cache, monkeypatch):
    notes: list[str] = []
    assert load_backend("scsam-tiny", "auto", "cpu", precision="fp32", say=notes.append).spec.precision == "fp32"
    assert load_backend("scsam-tiny", "torch", "cpu").spec.precision == "fp32"  # auto with a named backend: fp32
    monkeypatch.setattr(loader, "cpu_has_bf16", lambda: False)
    engine = load_backend("scsam-tiny", "auto", "cpu", say=notes.append)
    assert (engine.name, engine.spec.precision) == ("onnxruntime", "fp32")
    assert not cache.exists()


def test_auto_precision_of_a_package_is_its_own(tmp_path, cache):
    from emseg_rt.export.cache import cached_package

    package = cached_package("scsam-tiny", "fp16", batch_max=2)
    assert load_backend(str(package), "auto", "cpu").spec.precision == "fp16"
    assert not cache.exists()


@native_bf16
def test_segment_with_auto_runs_the_chosen_path(cache):
    """The labels of a default run equal those of the path the record names, run by name."""
    image = generate_phantom((3, 256, 256), seed=7).image
    auto = load_backend(None, "auto", "cpu")
    chosen = records(cache)[0]["chosen"]
    named = load_backend(None, "auto", "cpu", precision=chosen["precision"])
    assert named.name == auto.name
    np.testing.assert_array_equal(segment_array(auto, image), segment_array(named, image))
