"""Intensity mapping: `--window` (values or percentiles), the default dataset percentiles, and the model's
reference window they land on for non-uint8 data."""

from __future__ import annotations

import numpy as np
import pytest

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.normalise import (
    IntensityWindow,
    Normalisation,
    check_reference,
    dataset_normalisation,
    parse_window,
    to_uint8,
)


@pytest.mark.parametrize("text, expected", [
    ("100,3000", IntensityWindow("values", 100.0, 3000.0)),
    ("-1200,800", IntensityWindow("values", -1200.0, 800.0)),
    ("0.1,0.9", IntensityWindow("values", 0.1, 0.9)),
    (" 100 , 3000 ", IntensityWindow("values", 100.0, 3000.0)),
    ("1%,99%", IntensityWindow("percentiles", 1.0, 99.0)),
    ("p1,p99", IntensityWindow("percentiles", 1.0, 99.0)),
    ("0%,100%", IntensityWindow("percentiles", 0.0, 100.0)),
    ("p0.5,p99.5", IntensityWindow("percentiles", 0.5, 99.5)),
])
def test_parse_window_forms(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", [
    "100", "", "100,", ",3000", "1,2,3", "3000,100", "5,5", "abc,def", "low,high", "nan,1", "1,nan", "-inf,0",
    "1%,101%", "-1%,50%", "p50,p10", "1%,3000", "p1,99%x", "%1,%99", "1\n,2x",
])
def test_parse_window_refusals_name_the_forms_in_one_line(text):
    with pytest.raises(EmsegError) as info:
        parse_window(text)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--window")
    assert "100,3000" in message and "1%,99%" in message and "p1,p99" in message


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_values_window_maps_low_to_0_high_to_255_and_clips(dtype):
    window = parse_window("10,137.5")  # scale exactly 2: (v − 10)·2, no rounding ties
    volume = np.random.default_rng(31).integers(0, 200, (3, 8, 9)).astype(dtype)
    norm = dataset_normalisation(volume, window=window)
    assert norm.to_dict() == {"method": "window", "low": 10.0, "high": 137.5}
    assert norm.sampled_voxels == 0  # nothing sampled
    probe = np.array([0, 9, 10, 11, 73, 137, 138, 199], dtype=dtype)
    np.testing.assert_array_equal(to_uint8(probe, norm), [0, 0, 0, 2, 126, 254, 255, 255])
    expected = np.clip((volume.astype(np.int64) - 10) * 2, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(volume, norm), expected)


def test_negative_values_window_on_int16():
    norm = dataset_normalisation(np.zeros((2, 4, 4), np.int16), window=parse_window("-1200,800"))
    probe = np.array([-32768, -1200, -199, 800, 32767], np.int16)  # (1001 / 2000)·255 = 127.6
    np.testing.assert_array_equal(to_uint8(probe, norm), [0, 0, 128, 255, 255])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_percentile_window_equals_numpy_percentiles(dtype):
    rng = np.random.default_rng(32)
    volume = rng.integers(0, 250, (5, 12, 10)).astype(dtype)  # small: every voxel of every plane is sampled
    norm = dataset_normalisation(volume, window=parse_window("p2,p90"))
    low, high = np.percentile(volume.astype(np.float64), (2, 90))
    assert norm.method == "percentile" and (norm.low, norm.high) == (low, high)
    assert (norm.low_percentile, norm.high_percentile) == (2.0, 90.0)
    assert norm.sampled_voxels == volume.size and norm.sampled_planes == 5
    assert to_uint8(np.array([low, high], dtype=dtype), norm).tolist() == [0, 255]


def _old_dataset_normalisation(array: np.ndarray) -> Normalisation:
    """The normalisation before `--window` existed (HEAD 77b461b), kept verbatim as the reference."""
    if array.dtype == np.uint8:
        return Normalisation("identity")
    depth = array.shape[0]
    indices = np.unique(np.linspace(0, depth - 1, num=min(16, depth)).round().astype(int))
    rng = np.random.default_rng(0)
    samples = []
    for index in indices:
        plane = np.asarray(array[int(index)]).ravel()
        if plane.size > 65536:
            plane = plane[rng.choice(plane.size, 65536, replace=False)]
        samples.append(plane.astype(np.float64))
    values = np.concatenate(samples)
    low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if not high > low:
        high = low + 1.0
    return Normalisation("percentile", low, high, 0.5, 99.5, int(values.size), len(indices))


def test_default_unchanged_for_uint16_subsampled():
    volume = np.random.default_rng(33).integers(900, 30000, (40, 260, 270), dtype=np.uint16)  # > 65536 / plane
    norm = dataset_normalisation(volume)
    assert norm.to_dict() == _old_dataset_normalisation(volume).to_dict()
    assert list(norm.to_dict()) == ["method", "low", "high", "low_percentile", "high_percentile",
                                    "sampled_voxels", "sampled_planes"]
    assert norm.sampled_planes == 16 and norm.sampled_voxels == 16 * 65536
    slab = volume[:2]
    old = np.rint(np.clip((slab.astype(np.float32) - np.float32(norm.low))
                          * np.float32(255.0 / (norm.high - norm.low)), 0.0, 255.0)).astype(np.uint8)
    assert to_uint8(slab, norm).tobytes() == old.tobytes()


def test_default_is_identity_for_uint8():
    volume = np.random.default_rng(34).integers(0, 256, (3, 7, 5), dtype=np.uint8)
    norm = dataset_normalisation(volume)
    assert norm.to_dict() == Normalisation("identity").to_dict()
    assert to_uint8(volume, norm).tobytes() == volume.tobytes()


def test_int32_near_2_pow_31_maps_exactly():
    top = 2**31 - 1
    volume = np.array([[[top - 1000, top - 500, top]]], dtype=np.int32)
    norm = dataset_normalisation(volume, window=IntensityWindow("values", top - 1000, top))
    np.testing.assert_array_equal(to_uint8(volume, norm)[0, 0], [0, 128, 255])  # float32 would see one value
    rng = np.random.default_rng(35)
    spread = (top - rng.integers(0, 2000, (4, 16, 16))).astype(np.int32)
    default = dataset_normalisation(spread)
    assert top - 2000 <= default.low < default.high <= top
    mapped = to_uint8(spread, default)
    assert mapped.min() == 0 and mapped.max() == 255 and len(np.unique(mapped)) > 200


REFERENCE = (52.0, 185.0)  # a model's reference window (the default model's numbers)


def _rescales(image: np.ndarray) -> dict[str, np.ndarray]:
    """Exact linear rescales of uint8 values to every other supported dtype (float16 holds 0..255 exactly)."""
    return {"int8": (image.astype(np.int16) - 128).astype(np.int8), "uint16": image.astype(np.uint16) * 257,
            "int16": image.astype(np.int16) * 100 - 12800, "uint32": image.astype(np.uint32) * 16_777_216,
            "int32": image.astype(np.int32) * 1_000_000 - 2**27, "float16": image.astype(np.float16),
            "float32": image.astype(np.float32) / 255, "float64": image.astype(np.float64) * 0.37 + 12.5}


def test_default_maps_percentiles_onto_the_reference_window():
    volume = np.random.default_rng(36).normal(1000, 150, (5, 40, 30)).astype(np.float32)
    norm = dataset_normalisation(volume, reference=REFERENCE)
    low, high = np.percentile(volume.astype(np.float64), (0.5, 99.5))
    assert norm.method == "percentile" and (norm.low, norm.high) == (low, high)
    record = norm.to_dict()
    assert record["reference_window"] == list(REFERENCE)
    w_low, w_high = record["window"]
    assert w_low < low < high < w_high  # the reference lies inside 0..255: the values window is wider
    probe = np.array([low, high, w_low, w_high, w_low - 50, w_high + 50], np.float64)
    np.testing.assert_allclose(to_uint8(probe, norm), [52, 185, 0, 255, 0, 255], atol=1)


def test_linear_rescales_give_the_same_model_input():
    """Same image, any dtype, any linear rescale: the same uint8 bytes reach the model, equal to the uint8 image
    wherever its percentiles equal the reference (here a reference measured on the image itself)."""
    image = np.random.default_rng(37).integers(20, 230, (6, 50, 40)).astype(np.uint8)
    own = tuple(float(v) for v in np.percentile(image.astype(np.float64), (0.5, 99.5)))
    for reference in (REFERENCE, own):
        mapped = {name: to_uint8(values, dataset_normalisation(values, reference=reference)).tobytes()
                  for name, values in _rescales(image).items()}
        assert len(set(mapped.values())) == 1, reference
    assert next(iter(mapped.values())) == image.tobytes()  # `own`: identity, the uint8 run's input


def test_recorded_window_reproduces_the_mapping_byte_for_byte():
    """A rerun with `--window LOW,HIGH` from the recorded normalisation (JSON round trip) gives the same bytes."""
    import json

    rng = np.random.default_rng(38)
    for values in (rng.integers(300, 40000, (3, 30, 20)).astype(np.uint16), rng.normal(0, 1, (3, 30, 20)),
                   rng.integers(-2**30, 2**30, (3, 30, 20)).astype(np.int32)):
        norm = dataset_normalisation(values, reference=REFERENCE)
        low, high = json.loads(json.dumps(norm.to_dict()))["window"]
        again = dataset_normalisation(values, window=parse_window(f"{low!r},{high!r}"))
        assert again.method == "window" and to_uint8(values, again).tobytes() == to_uint8(values, norm).tobytes()


def test_uint8_and_percentile_windows_ignore_the_reference():
    """uint8 stays identity and a percentile `--window` stretches onto 0..255 with or without a reference: the
    recorded uint8 outputs (tests/test_output_bytes.py) keep their bytes and their recorded normalisation."""
    volume = np.random.default_rng(39).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    assert dataset_normalisation(volume, reference=REFERENCE) == Normalisation("identity")
    window = parse_window("1%,99%")
    stretched = dataset_normalisation(volume, window=window, reference=REFERENCE)
    assert stretched == dataset_normalisation(volume, window=window)
    assert stretched.window == (stretched.low, stretched.high) and "reference_window" not in stretched.to_dict()
    wide = volume.astype(np.uint16) * 257
    assert dataset_normalisation(wide, window=window, reference=REFERENCE).to_dict() == \
        dataset_normalisation(wide, window=window).to_dict()


@pytest.mark.parametrize("value", [[200, 40], [-1, 100], [0, 256], [5, 5], ["a", 9], [1, 2, 3], "52,185", 52,
                                   [float("nan"), 9]])
def test_malformed_reference_windows_are_refused_in_one_line(value):
    with pytest.raises(EmsegError) as info:
        check_reference(value, "package p")
    assert str(info.value).startswith("package p: reference_window") and "\n" not in str(info.value)
    assert check_reference(None, "x") is None and check_reference([0, 255], "x") == (0.0, 255.0)
