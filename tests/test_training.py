"""Head training over cached embeddings: the loss falls, checkpoints load, resume continues exactly."""

import dataclasses

import numpy as np
import pytest
import torch

from emseg_rt.data.phantom import generate_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.training import build_cache, dice_loss, train_head
from emseg_rt.training.loop import Schedule, run_loop, state_path_for
from emseg_rt.training.losses import one_hot_classes

MODEL = "scsam-tiny"  # 128² tiles


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def volume():
    p = generate_phantom((3, 128, 128), seed=21)
    return p.image, p.labels


def test_dice_loss_by_hand():
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # one class, one positive pixel
    perfect = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert float(dice_loss(perfect, masks, eps=0.0)) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere: 1 − 2·0.5 / (2 + 1)
    assert float(dice_loss(half, masks, eps=0.0)) == pytest.approx(1 - 1 / 3)
    labels = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8)
    assert one_hot_classes(labels, 3)[0, :, 1, 1].tolist() == [0.0, 0.0, 1.0]


def test_cache_is_built_once_and_matches_the_encoders(tmp_path, volume):
    image, labels = volume
    model = build(MODEL).eval()
    cache = build_cache(tmp_path / "c.zarr", model, image, labels, ["v"])
    assert len(cache) == 3 and cache.labels.shape == (3, 128, 128)
    embeddings, truth = cache.batch(np.array([1]))
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(image[1:2, None].copy()))
    for name, value in direct.items():
        torch.testing.assert_close(embeddings[name], value, atol=2e-2, rtol=1e-2)  # stored as float16
    assert np.array_equal(truth.numpy()[0], labels[1])
    mtime = (tmp_path / "c.zarr" / "zarr.json").stat().st_mtime_ns
    again = build_cache(tmp_path / "c.zarr", model, image, labels, ["v"])
    assert again.key == cache.key and (tmp_path / "c.zarr" / "zarr.json").stat().st_mtime_ns == mtime


def test_short_training_run_loss_falls_and_checkpoint_loads(tmp_path, volume):
    image, labels = volume
    model = build(MODEL)
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    totals = []
    report = train_head(model, image, labels, tmp_path / "head.pt", steps=30, batch=3, checkpoint_every=10,
                        on_step=lambda step, total, terms: totals.append(float(terms.total.detach())))
    assert len(totals) == 30 and [e["step"] for e in report.losses] == [10, 20, 30]
    assert np.mean(totals[-5:]) < 0.8 * np.mean(totals[:5])
    for k, v in model.encoders.state_dict().items():  # encoders stay frozen
        assert torch.equal(v, before[k])
    loaded = build(MODEL, checkpoint=tmp_path / "head.pt")
    for k, v in model.head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[k], v)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, volume):
    image, labels = volume
    torch.manual_seed(0)
    straight = build(MODEL)
    train_head(straight, image, labels, tmp_path / "a.pt", steps=8, batch=2, checkpoint_every=4,
               cache_path=tmp_path / "cache.zarr")
    torch.manual_seed(0)
    first = build(MODEL)
    train_head(first, image, labels, tmp_path / "b.pt", steps=4, batch=2, checkpoint_every=4,
               cache_path=tmp_path / "cache.zarr")
    torch.manual_seed(0)
    second = build(MODEL)
    report = train_head(second, image, labels, tmp_path / "b.pt", steps=8, batch=2, checkpoint_every=4,
                        resume=True, cache_path=tmp_path / "cache.zarr")
    assert report.start_step == 4
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_training_refuses_to_overwrite_and_non_scsam_models(tmp_path, volume):
    image, labels = volume
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(EmsegError, match="--resume"):
        train_head(build(MODEL), image, labels, tmp_path / "x.pt", steps=1)
    with pytest.raises(EmsegError, match="FAFM"):
        train_head(build("sam-star-tiny"), image, labels, tmp_path / "y.pt", steps=1)
    with pytest.raises(EmsegError, match="classes"):
        train_head(build(MODEL), image, labels * 2, tmp_path / "z.pt", steps=1)


def test_cache_from_an_exported_package_matches_the_torch_encoders(tmp_path, volume):
    from emseg_rt.export import export_package
    from emseg_rt.training.cache import package_embedder

    image, labels = volume
    model = build(MODEL).eval()
    package = export_package(model, tmp_path / "pkg")
    embed, identity = package_embedder(package, MODEL)
    via_onnx = build_cache(tmp_path / "onnx.zarr", model, image, labels, ["v"], embed_fn=embed,
                           embed_identity=identity)
    via_torch = build_cache(tmp_path / "torch.zarr", model, image, labels, ["v"])
    assert via_onnx.key != via_torch.key
    for name, array in via_torch.embeddings.items():
        np.testing.assert_allclose(via_onnx.embeddings[name].astype(np.float32), array.astype(np.float32),
                                   atol=2e-2, rtol=1e-2)
    with pytest.raises(EmsegError, match="not sam-star-tiny"):
        package_embedder(package, "sam-star-tiny")


class _CountingRecipe:
    """A stand-in recipe for the loop: unit `at` has loss `at`, its weights are [at]."""

    def __init__(self):
        self.at = 0

    def step(self, at):
        self.at = at
        return {"total": float(at)}

    def record(self, terms):
        return terms

    def status(self, record):
        return f"loss {record['total']:g}"

    def weights(self):
        return {"w": torch.tensor([float(self.at)])}

    def state(self, at, losses):
        return {"step": at, "losses": losses}


def test_the_loop_records_saves_resumes_and_reports(tmp_path, capsys):
    """Loss records are interval means, CKPT and CKPT.state follow the checkpoint interval and the stop, a resume
    continues after the state's step, and progress says a final line through `say` (nothing when quiet)."""
    out, lines = tmp_path / "fake.pt", []
    schedule = Schedule("fake", total=6, stop=5, checkpoint_every=2, record_every=2)
    first = run_loop(_CountingRecipe(), schedule, out, None, say=lines.append, quiet=False)
    assert (first.start, first.end) == (0, 5)
    assert first.losses == [{"step": 2, "total": 1.5}, {"step": 4, "total": 3.5}, {"step": 5, "total": 5.0}]
    assert torch.load(out, weights_only=True)["w"].item() == 5.0
    assert lines and lines[-1].startswith("fake: 5/6 steps in ") and lines[-1].endswith("; loss 5")
    state = torch.load(state_path_for(out), weights_only=True)
    seen, quiet_lines = [], []
    second = run_loop(_CountingRecipe(), dataclasses.replace(schedule, stop=6), out, state,
                      on_step=lambda at, total, terms: seen.append((at, total)), say=quiet_lines.append)
    assert (second.start, second.end, seen, quiet_lines) == (5, 6, [(6, 6)], [])
    assert second.losses[-1] == {"step": 6, "total": 6.0} and torch.load(out, weights_only=True)["w"].item() == 6.0


def test_runtime_tile_is_the_tilers_cut_of_any_axis():
    """An xz plane (20×150) of a thin volume is smaller than a tile: the training tile is that plane
    reflect-padded as the runtime pads it (brute force: np.pad around the plan's tile origins), labels alike."""
    from emseg_rt.tiling import plan_tiles
    from emseg_rt.training.sampling import runtime_tile

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 40, 150), dtype=np.uint8)
    labels = (image // 64).astype(np.uint8)
    for axis, index in ((1, 7), (0, 3), (2, 100)):
        plane, plane_labels = np.take(image, index, axis), np.take(labels, index, axis)
        origins = plan_tiles(plane.shape, 64, 8).origins.tolist()
        seen = set()
        for seed in range(12):
            tile, tile_labels = runtime_tile(image, labels, axis, index, 64, np.random.default_rng(seed))
            matches = [(y, x) for y, x in origins if np.array_equal(tile, _reflect_crop(plane, y, x, 64))]
            assert len(matches) == 1, (axis, seed)
            assert np.array_equal(tile_labels, _reflect_crop(plane_labels, *matches[0], 64))
            seen.add(matches[0])
        assert len(seen) >= min(2, len(origins))


def _reflect_crop(plane: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    """The tile at origin (y, x) of `plane` padded by numpy's 'reflect' (repeated for pads wider than it)."""
    pad = 2 * tile
    return np.pad(plane, pad, mode="reflect")[y + pad:y + pad + tile, x + pad:x + pad + tile]
