"""The embedded default model: shipped, small, registered, and accurate on a phantom never used in training."""

import pytest

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.metrics import evaluate
from emseg_rt.models import get_config, list_models
from emseg_rt.models.default_model import default_model_name, default_weights_path, load_default_model
from emseg_rt.runtime import segment_labels
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.slab import segment_array
from emseg_rt.tiling import plan_tiles

HELD_OUT_SEED = 42  # training uses seeds >= 900


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_model_is_registered_and_small():
    name = default_model_name()
    assert name in list_models()
    config = get_config(name)
    assert config.family == "scsam" and config.classes == ("nucleus", "mitochondria", "granules")
    assert config.sam_encoder.patch_size == 8  # logits at half the tile resolution keep small granules
    weights = default_weights_path()
    assert weights.is_file() and weights.stat().st_size <= 30 * 1024 * 1024


def test_default_model_segments_a_held_out_phantom():
    backend = TorchBackend(load_default_model())  # what `segment --backend torch` runs
    phantom = generate_phantom((4, 256, 256), seed=HELD_OUT_SEED)
    pred = segment_array(backend, phantom.image)
    scores = evaluate(pred, phantom.labels, instance_metrics=False)
    # Measured (torch 2.x, CPU, fast and reference attention alike): nucleus 0.997, mitochondria 0.923,
    # granules 0.905, mean 0.942. Bars sit about 0.01 below; the project's target is a mean of 0.85.
    assert scores.mean_dice >= 0.93, scores.dice
    floors = {"nucleus": 0.985, "mitochondria": 0.91, "granules": 0.895}
    for name, value in scores.dice.items():
        assert value >= floors[name], (name, scores.dice)


def test_runtime_uses_the_default_model_when_none_is_given():
    from emseg_rt.runtime.loader import default_model_name as runtime_default

    assert runtime_default() == default_model_name()


def test_a_tile_core_inside_a_large_nucleus_is_nucleus():
    """Issue 27's square hole: the first default model called a tile whose whole window lay inside a nucleus
    background (on this phantom: 29 % and 34 % nucleus in two of the three such cores). The retrained model was
    shown such tiles (scripts/train_default.py, nucleus-centred crops); the runtime's defaults (128² tiles, halo
    16) are unchanged, as benchmarks/results/quality_3d.md measured larger halos to cost 2-8x for nothing."""
    phantom = generate_phantom((4, 512, 512), seed=3)
    nucleus = phantom.labels == 1
    plan = plan_tiles((512, 512), 128, 16)
    inside = [(y0, y1, x0, x1) for y0, y1, x0, x1 in plan.cores.tolist() if nucleus[:, y0:y1, x0:x1].all()]
    assert len(inside) >= 2  # the phantom has cores the nucleus fills
    labels = segment_labels(phantom.image, backend="torch")
    for y0, y1, x0, x1 in inside:
        assert (labels[:, y0:y1, x0:x1] == 1).mean() >= 0.99, (y0, x0)
