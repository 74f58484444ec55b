"""Backends: torch and onnxruntime agree, results do not depend on the batch size, TensorRT refusals are clear."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("EMSEG_RT_CACHE", str(Path(tempfile.gettempdir()) / "emseg-rt-test-cache"))

from emseg_rt.errors import EmsegError  # noqa: E402
from emseg_rt.io import read_volume, write_ome_image  # noqa: E402
from emseg_rt.runtime import load_backend, segment_slab, segment_volume  # noqa: E402
from emseg_rt.runtime.backends.tensorrt_backend import gpu_target, select_engine  # noqa: E402
from emseg_rt.runtime.tiling import plan_tiles  # noqa: E402

MODEL = "scsam-tiny"


@pytest.fixture(scope="module")
def torch_backend():
    return load_backend(MODEL, "torch")


@pytest.fixture(scope="module")
def ort_backend():
    return load_backend(MODEL, "onnxruntime")


def test_torch_and_onnxruntime_agree_on_a_volume(tmp_path, torch_backend, ort_backend):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (6, 200, 200), dtype=np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", image)
    labels = {}
    for engine in (torch_backend, ort_backend):
        out = tmp_path / f"{engine.name}.zarr"
        report = segment_volume(src, out, backend=engine, block=2)
        assert report.complete and report.backend == engine.name
        labels[engine.name] = read_volume(out / "labels" / "organelles")
    agreement = (labels["torch"] == labels["onnxruntime"]).mean()
    assert labels["torch"].shape == image.shape
    assert agreement >= 0.999, agreement
    assert len(np.unique(labels["torch"])) > 1  # not a degenerate all-background answer


def test_results_do_not_depend_on_batch_size(torch_backend):
    """Tiles are independent: the batch size changes only float rounding inside the BLAS (logits differ by
    ~1e-7), which can flip a label only where two class logits tie to that precision."""
    rng = np.random.default_rng(12)
    slab = rng.integers(0, 256, (2, 150, 170), dtype=np.uint8)
    plan = plan_tiles(slab.shape[1:], torch_backend.spec.tile, 16)
    for blend in ("center", "gaussian"):
        runs = [segment_slab(torch_backend, slab, plan, batch=b, blend=blend, probabilities=True,
                             label_type=np.dtype(np.uint8)) for b in (1, 3, 8)]
        labels0, probs0, tiles0 = runs[0]
        assert tiles0 == 2 * plan.num_tiles
        for labels, probs, _ in runs[1:]:
            assert (labels == labels0).mean() >= 0.9995
            assert np.abs(probs.astype(int) - probs0).max() <= 1


def test_gaussian_blend_agrees_mostly_with_center(torch_backend):
    rng = np.random.default_rng(13)
    slab = rng.integers(0, 256, (1, 160, 160), dtype=np.uint8)
    plan = plan_tiles(slab.shape[1:], torch_backend.spec.tile, 16)
    center = segment_slab(torch_backend, slab, plan, batch=4, blend="center", probabilities=False,
                          label_type=np.dtype(np.uint8))[0]
    gauss, probs, _ = segment_slab(torch_backend, slab, plan, batch=4, blend="gaussian", probabilities=True,
                                   label_type=np.dtype(np.uint8))
    assert probs.shape == (3, 1, 160, 160) and probs.dtype == np.uint8
    assert (center == gauss).mean() > 0.5


def test_unknown_model_and_prompted_models_are_refused():
    with pytest.raises(EmsegError, match="unknown model"):
        load_backend("no-such-model", "torch")
    with pytest.raises(EmsegError, match="prompts"):
        load_backend("vanilla-sam-tiny", "torch")
    with pytest.raises(EmsegError, match="--backend"):
        load_backend(MODEL, "jax")


def test_engine_for_another_gpu_or_version_is_refused():
    record = SimpleNamespace(file="engines/full.sm86.engine", flavour="tensorrt-rtx", trt_version="0.0.1",
                             target="sm86")
    package = SimpleNamespace(root=Path("pkg"), engines={"full": {"sm86": record}})
    with pytest.raises(EmsegError, match=r"no full engine for this GPU \(sm89; engines for: sm86\)"):
        select_engine(package, "sm89")
    with pytest.raises(EmsegError, match="needs a CUDA GPU"):
        select_engine(package, None)
    with pytest.raises(EmsegError, match="0.0.1"):  # not installed here, or another version
        select_engine(package, "sm86")


@pytest.mark.rtx
@pytest.mark.skipif(gpu_target() is None, reason="needs an NVIDIA GPU with TensorRT; this machine has none")
def test_tensorrt_backend_runs():  # pragma: no cover - hardware not here
    pytest.skip("needs a model package with an engine built for this GPU")
