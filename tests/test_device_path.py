"""The device path (`runtime.device_path`: tiles cut, stitched and merged on the backend's device by the one
tiler, `emseg_rt.tiling`) gives the labels of the host path, for the torch and ONNX Runtime backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tiling_reference as reference

from emseg_rt.io import write_ome_image
from emseg_rt.runtime import load_backend, segment_array, segment_slab, segment_volume
from emseg_rt.tiling import PlaneAccumulator, extract_tiles, plan_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UINT8 = np.dtype(np.uint8)


class HostPath:
    """A backend without `run_planes`: segment_slab then tiles and stitches on the host, as before."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.spec = backend, backend.name, backend.spec

    def run(self, *args, **kwargs):
        return self.backend.run(*args, **kwargs)

    def close(self) -> None:
        pass


class CountingDevicePath(HostPath):
    """A backend, counting the `run_planes` and `run` calls segment_slab makes."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.calls = {"run": 0, "run_planes": 0}

    def run(self, *args, **kwargs):
        self.calls["run"] += 1
        return self.backend.run(*args, **kwargs)

    def run_planes(self, *args, **kwargs):
        self.calls["run_planes"] += 1
        return self.backend.run_planes(*args, **kwargs)


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def default_backend(request):
    """The default model in both backends with a device path (onnxruntime: IO binding on torch tensors)."""
    return load_backend(None, request.param)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    from emseg_rt.data.phantom import generate_phantom

    return generate_phantom((3, 200, 230), seed=1).image


@pytest.mark.parametrize("batch", [4, 5])  # 27 tiles: the last batch is padded with copies of its last tile
def test_device_path_gives_the_host_paths_labels(default_backend, phantom, batch):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    device_path, host_path = CountingDevicePath(default_backend), HostPath(default_backend)
    for blend in ("center", "gaussian"):
        timings: dict = {}
        labels, probs, tiles = segment_slab(device_path, phantom, plan, batch=batch, blend=blend,
                                            probabilities=False, label_type=UINT8, timings=timings)
        expected, _, expected_tiles = segment_slab(host_path, phantom, plan, batch=batch, blend=blend,
                                                   probabilities=False, label_type=UINT8)
        assert labels.dtype == np.uint8 and labels.shape == phantom.shape and probs is None
        assert tiles == expected_tiles == 3 * plan.num_tiles
        assert timings["compute"] > 0 and timings["stitch"] > 0
        np.testing.assert_array_equal(labels, expected)  # one tiler: the same numbers on a CPU, both blends
        assert len(np.unique(expected)) > 2  # the phantom's organelles, not an all-background answer
    assert device_path.calls == {"run": 0, "run_planes": 2}


def test_probabilities_and_tta_keep_the_host_path(default_backend, phantom):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    device_path = CountingDevicePath(default_backend)
    _, probs, _ = segment_slab(device_path, phantom[:1], plan, batch=4, blend="center", probabilities=True,
                               label_type=UINT8)
    assert probs is not None and device_path.calls["run_planes"] == 0 and device_path.calls["run"] == 3
    segment_slab(device_path, phantom[:1], plan, batch=4, blend="center", probabilities=False, label_type=UINT8,
                 tta=True)
    assert device_path.calls["run_planes"] == 0 and device_path.calls["run"] == 3 + 4 * 3  # 4 turns, 3 batches


def test_wide_labels_through_the_device_path(default_backend, phantom):
    plan = plan_tiles(phantom.shape[1:], default_backend.spec.tile, 16)
    wide = default_backend.run_planes(phantom[:1], plan, batch=4, blend="gaussian", label_type=np.dtype(np.uint16),
                                      threshold=default_backend.spec.threshold)
    narrow = default_backend.run_planes(phantom[:1], plan, batch=4, blend="gaussian", label_type=UINT8,
                                        threshold=default_backend.spec.threshold)
    assert wide.dtype == np.uint16
    np.testing.assert_array_equal(wide, narrow)
    with pytest.raises(ValueError, match="uint8 planes"):
        default_backend.run_planes(phantom[:1].astype(np.float32), plan, batch=4, blend="center",
                                   label_type=UINT8, threshold=0.0)


def test_segment_array_and_volume_report_on_the_device_path(tmp_path, default_backend, phantom):
    expected = segment_array(HostPath(default_backend), phantom)
    np.testing.assert_array_equal(segment_array(default_backend, phantom), expected)
    src = write_ome_image(tmp_path / "in.zarr", phantom)
    report = segment_volume(src, tmp_path / "out.zarr", backend=default_backend, block=2)
    assert report.complete and report.tiles_computed == 3 * plan_tiles(phantom.shape[1:], 128, 16).num_tiles
    assert report.compute_seconds > 0 and report.stitch_seconds > 0
    assert report.compute_seconds + report.stitch_seconds < report.wall_seconds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_device_path_matches_the_numpy_tiler(phantom):
    plan = plan_tiles(phantom.shape[1:], 128, 16)
    plane = torch.from_numpy(phantom[0]).cuda()
    np.testing.assert_array_equal(extract_tiles(plane, plan).cpu().numpy(), reference.extract_tiles(phantom[0], plan))
    logits = np.random.default_rng(3).standard_normal((plan.num_tiles, 3, 128, 128)).astype(np.float32)
    ((_, blended),) = PlaneAccumulator(plan, "gaussian", "cuda").add(torch.from_numpy(logits).cuda())
    np.testing.assert_allclose(blended.cpu().numpy(), reference.blend_gaussian(logits, plan), rtol=1e-6, atol=1e-6)
    tile_labels = torch.randint(0, 4, (plan.num_tiles, 128, 128), dtype=torch.uint8)
    ((_, stitched),) = PlaneAccumulator(plan, "center", "cuda").add(tile_labels.cuda())
    np.testing.assert_array_equal(stitched.cpu().numpy(), reference.stitch_center(tile_labels.numpy(), plan))
    backend = load_backend(None, "torch", device="cuda", precision="fp32")
    labels = segment_slab(backend, phantom, plan, batch=4, blend="center", probabilities=False, label_type=UINT8)[0]
    expected = segment_slab(HostPath(backend), phantom, plan, batch=4, blend="center", probabilities=False,
                            label_type=UINT8)[0]
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("precision, compile", [("fp32", False), ("fp16", False), ("fp16", True)])
def test_cuda_fast_path_keeps_the_cpu_labels(phantom, precision, compile):
    """The CUDA fast path as `segment` runs it (device tiling, fp16 weights, the Triton kernels as operators,
    torch.compile with CUDA graphs) against fp32 eager on the CPU, on the trained default model: issue 17's bar
    of 99.9 % equal labels."""
    from emseg_rt.models.default_model import load_default_model
    from emseg_rt.runtime.backends.torch_backend import TorchBackend

    reference = segment_array(load_backend(None, "torch", "cpu", "fp32", fast=False), phantom)
    fast = TorchBackend(load_default_model(), "cuda", precision, "default", compile=compile)
    assert (segment_array(fast, phantom) == reference).mean() >= 0.999
