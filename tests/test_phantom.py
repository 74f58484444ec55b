"""Phantoms: deterministic, all classes present, statistics a FIB-SEM beta cell would have; OME-Zarr output."""

import json

import numpy as np
import pytest

from emseg_rt.data.phantom import CYTOPLASM, GROUND_TRUTH, generate_phantom, write_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.io import list_label_groups, read_volume

SHAPE = (12, 128, 128)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, seed=11)


def test_same_seed_same_bytes_other_seed_differs(phantom):
    again = generate_phantom(SHAPE, seed=11)
    assert again.image.tobytes() == phantom.image.tobytes()
    assert again.labels.tobytes() == phantom.labels.tobytes()
    other = generate_phantom(SHAPE, seed=12)
    assert other.labels.tobytes() != phantom.labels.tobytes()


def test_every_class_is_present_with_plausible_fractions(phantom):
    assert phantom.image.dtype == np.uint8 and phantom.labels.dtype == np.uint8
    assert phantom.image.shape == SHAPE == phantom.labels.shape
    assert set(np.unique(phantom.labels)) == {0, 1, 2, 3}
    fraction = {k: float((phantom.labels == k).mean()) for k in range(4)}
    assert 0.03 < fraction[1] < 0.5  # nucleus: one large body
    assert 0.005 < fraction[2] < 0.25  # mitochondria
    assert 0.01 < fraction[3] < 0.25  # granules: many small ones
    assert fraction[0] > 0.3


def test_granules_are_many_small_objects_and_objects_are_3d(phantom):
    from scipy import ndimage

    granules, count = ndimage.label(phantom.labels == 3)
    assert count >= 10
    sizes = np.bincount(granules.ravel())[1:]
    assert np.median(sizes) < 4 / 3 * np.pi * 7.5**3  # radius <= 7 px spheres (clipped at the edges)
    # 3D bodies: each slice's labels change along z, but neighbouring slices overlap mostly
    a, b = phantom.labels[5] > 0, phantom.labels[6] > 0
    overlap = (a & b).sum() / max(1, (a | b).sum())
    assert 0.5 < overlap < 1.0


def test_intensity_statistics_in_range(phantom):
    image, labels = phantom.image.astype(np.float32), phantom.labels
    assert 90 < image.mean() < 180
    assert 10 < image.std() < 60
    cytoplasm = image[labels == 0].mean()
    assert abs(cytoplasm - CYTOPLASM) < 25
    assert image[labels == 1].mean() < cytoplasm  # nucleoplasm and chromatin are darker
    assert image[labels == 2].mean() < cytoplasm  # mitochondrial matrix and cristae are darker
    core = np.percentile(image[labels == 3], 10)
    assert core < cytoplasm - 40  # dense cores are very dark


def test_noise_level_and_drift():
    clean = generate_phantom((8, 64, 64), seed=3, noise=0.0).image.astype(np.float32)
    noisy = generate_phantom((8, 64, 64), seed=3, noise=2.0).image.astype(np.float32)
    typical = generate_phantom((8, 64, 64), seed=3, noise=1.0).image.astype(np.float32)
    assert 3 < np.std(typical - clean) < np.std(noisy - clean) < 40
    long = generate_phantom((48, 48, 48), seed=5, noise=0.0).image.astype(np.float32)
    slice_means = long.mean(axis=(1, 2))
    assert slice_means.max() - slice_means.min() > 2  # slow drift along z


def test_anisotropy_shortens_objects_along_z():
    from scipy import ndimage

    def mean_z_extent(anisotropy):
        labels = generate_phantom((24, 96, 96), seed=4, anisotropy=anisotropy).labels == 3
        objects = ndimage.find_objects(ndimage.label(labels)[0])
        return np.mean([s[0].stop - s[0].start for s in objects])

    assert mean_z_extent(3.0) < 0.6 * mean_z_extent(1.0)


def test_bad_parameters_are_user_errors():
    with pytest.raises(EmsegError, match="too small"):
        generate_phantom((4, 8, 8))
    with pytest.raises(EmsegError, match="--noise"):
        generate_phantom((4, 64, 64), noise=-1)


def test_ome_zarr_round_trip_with_label_metadata(tmp_path, phantom):
    path = write_phantom(tmp_path / "cell.zarr", phantom)
    assert np.array_equal(read_volume(path), phantom.image)
    assert np.array_equal(read_volume(path, labels=GROUND_TRUTH), phantom.labels)
    assert list_label_groups(path) == [GROUND_TRUTH]
    meta = json.loads((path / "labels" / GROUND_TRUTH / "zarr.json").read_text())["attributes"]["ome"]
    names = {p["label-value"]: p.get("class") for p in meta["image-label"]["properties"]}
    assert [names[1], names[2], names[3]] == ["nucleus", "mitochondria", "granules"]
    assert meta["version"] == "0.5"
    with pytest.raises(EmsegError, match="exists"):
        write_phantom(path, phantom)
