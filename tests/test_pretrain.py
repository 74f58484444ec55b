"""Masked pretraining (MAESTER / HiS4MAE eqs. 2–6): shapes, EMA, eq. 6, the loss falls, exact resume, the CLI."""

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line, run_cli

from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.models import build
from emseg_rt.models.masked_pretrain import MaskedPretrainer, patchify, random_masking, unpatchify
from emseg_rt.training.pretrain import FovSampler, cosine_lr, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = {"epochs": 4, "samples_per_epoch": 64, "batch": 32, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def volume():
    return generate_phantom((16, 96, 96), seed=11).image


def _pretrainer(name: str) -> MaskedPretrainer:
    pipeline = build(name)
    return MaskedPretrainer(pipeline.config, pipeline.encoders["fov_encoder"])


def _tiles(seed: int, batch: int = 3, side: int = 40) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 1, side, side), dtype=np.uint8))


def test_masking_and_patches():
    generator = torch.Generator().manual_seed(1)
    keep, restore, mask = random_masking(4, 64, 0.5, generator)
    assert keep.shape == (4, 32) and restore.shape == (4, 64) and mask.shape == (4, 64)
    assert torch.equal(mask.sum(1), torch.full((4,), 32.0))
    for row in range(4):  # kept tokens are exactly the unmasked ones
        assert set(keep[row].tolist()) == set(torch.nonzero(mask[row] == 0).flatten().tolist())
    again = random_masking(4, 64, 0.5, torch.Generator().manual_seed(1))[0]
    assert torch.equal(keep, again)  # reproducible from the generator
    pixels = torch.randn(2, 1, 40, 40, generator=generator)
    patches = patchify(pixels, 5)
    assert patches.shape == (2, 64, 25)
    assert torch.equal(patches[1, 8 + 3], pixels[1, 0, 5:10, 15:20].flatten())  # row 1, column 3 of the grid
    assert torch.equal(unpatchify(patches, 5), pixels)


@pytest.mark.parametrize("name", ["his4mae-tiny", "maester-tiny"])
def test_decoder_and_loss_shapes(name):
    pretrainer = _pretrainer(name)
    student = pretrainer.student
    pixels = student.normalise(_tiles(2))
    keep, restore, _ = random_masking(3, 64, 0.5, torch.Generator().manual_seed(0))
    visible = student.encode(pixels, keep=keep)
    assert visible.shape == (3, 32, 64)
    assert pretrainer.decoder(visible, restore).shape == (3, 64, 25)  # (B, g², p²)
    terms = pretrainer(_tiles(2), generator=torch.Generator().manual_seed(0))
    values = terms.as_floats()
    assert all(np.isfinite(v) for v in values.values()) and values["recon"] > 0
    if name == "maester-tiny":
        assert pretrainer.teacher is None and pretrainer.codebook is None
        assert values["tea"] == values["stu"] == 0.0 and values["total"] == values["recon"]
        return
    settings = pretrainer.settings
    assert values["total"] == pytest.approx(values["recon"] + settings.alpha * values["tea"]
                                            + settings.beta * values["stu"], rel=1e-6)
    assert int(pretrainer.code_usage.sum()) == 3 * 64  # every teacher token of the full FOV picked a code
    terms.stu.backward(retain_graph=True)  # L_stu reaches the student only (Z_q detached)
    assert pretrainer.codebook.weight.grad is None and student.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    terms.tea.backward()  # L_tea reaches the codebook only (the teacher has no gradient)
    assert pretrainer.codebook.weight.grad.abs().sum() > 0 and student.vit.blocks[0].attn.qkv.weight.grad is None
    assert all(p.grad is None for p in pretrainer.teacher.parameters())


def _vit_blocks(dim: int, depth: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    per_block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    return depth * per_block


def test_paper_size_pretrainer_builds_on_meta_with_the_expected_parameters():
    with torch.device("meta"):
        pipeline = build("his4mae-fov80")
        pretrainer = MaskedPretrainer(pipeline.config, pipeline.encoders["fov_encoder"])
    assert pretrainer.codebook.weight.shape == (512, 192)  # HiS4MAE Table 1: k × embed_dim
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    parts = [pretrainer.student, pretrainer.teacher, pretrainer.codebook, pretrainer.decoder]
    assert count(pretrainer) == sum(count(part) for part in parts)
    d, p, g, w = 192, 5, 16, 128  # FOV 80, patch 5, embed 192; decoder 128 wide, 7 deep (MAESTER)
    encoder = (p * p * d + d) + g * g * d + _vit_blocks(d, 14, 2.0) + 2 * d
    decoder = (d * w + w) + w + _vit_blocks(w, 7, 2.0) + 2 * w + (w * p * p + p * p)
    assert count(pretrainer.student) == count(pretrainer.teacher) == encoder
    assert count(pretrainer.decoder) == decoder
    assert count(pretrainer) == 2 * encoder + 512 * 192 + decoder


def test_ema_update_is_exact():
    pretrainer = _pretrainer("his4mae-tiny")
    with torch.no_grad():
        for parameter in pretrainer.student.parameters():
            parameter.add_(torch.randn_like(parameter))
    teacher = {k: v.clone() for k, v in pretrainer.teacher.state_dict().items()}
    student = pretrainer.student.state_dict()
    pretrainer.update_teacher()
    m = pretrainer.settings.ema_momentum
    for name, value in pretrainer.teacher.state_dict().items():
        assert torch.equal(value, m * teacher[name] + (1 - m) * student[name]), name
    assert not torch.equal(pretrainer.teacher.state_dict()["vit.pos_embed"], student["vit.pos_embed"])


def test_isolated_codes_move_gamma_of_the_way_to_used_codes():
    pretrainer = _pretrainer("his4mae-tiny")
    codebook = pretrainer.codebook.weight
    before = codebook.detach().clone()
    usage = torch.zeros(64, dtype=torch.int64)
    used = torch.tensor([3, 10, 40])
    usage[used] = torch.tensor([5, 1, 2])
    pretrainer.code_usage.copy_(usage)
    assert pretrainer.refresh_isolated_codes(torch.Generator().manual_seed(0)) == 61
    gamma = pretrainer.settings.gamma
    assert torch.equal(codebook[used], before[used])  # used codes stay
    for code in set(range(64)) - set(used.tolist()):
        # Z_iso ← γ·Z_used + (1 − γ)·Z_iso for exactly one of the used codes
        moved = [torch.equal(codebook[code], gamma * before[u] + (1 - gamma) * before[code]) for u in used]
        assert sum(moved) == 1, code
    assert int(pretrainer.code_usage.sum()) == 0  # counts restart for the next epoch
    assert pretrainer.refresh_isolated_codes() == 0  # no usage recorded: nothing to refresh towards


def test_sampler_draws_fov_crops_of_fitting_planes():
    class Recording:  # an array-like that records which windows were read
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.array[key]

    source = np.random.default_rng(3).integers(0, 256, (48, 56, 64), dtype=np.uint8)
    recorded = Recording(source)
    sampler = FovSampler([recorded], 40, np.random.default_rng(0))
    fovs = sampler.sample(60)
    assert fovs.shape == (60, 1, 40, 40) and fovs.dtype == np.uint8
    axes = [next(i for i, k in enumerate(key) if isinstance(k, int)) for key in recorded.reads]
    assert set(axes) == {0, 1, 2}  # z, y and x planes all fit
    key, fov = recorded.reads[0], fovs[0, 0]
    window = source[key]
    assert window.shape == tuple(min(50, s) for s in np.delete(source.shape, axes[0]))  # 1.25 × FOV where it fits
    crops = [window[r:r + 40, c:c + 40] for r in range(window.shape[0] - 39) for c in range(window.shape[1] - 39)]
    assert any(np.array_equal(np.flip(crop, flips) if flips else crop, fov)
               for crop in crops for flips in ((), (0,), (1,), (0, 1)))
    again = FovSampler([source], 40, np.random.default_rng(0)).sample(60)
    assert np.array_equal(fovs, again)
    thin = FovSampler([source[:, :30]], 40, np.random.default_rng(0))  # only the (Z, Y=30…) planes fail
    assert thin.planes == [[1]]
    with pytest.raises(EmsegError, match="no plane of at least 40×40"):
        FovSampler([source[:30, :30]], 40, np.random.default_rng(0))
    with pytest.raises(EmsegError, match="uint8"):
        FovSampler([source.astype(np.float32)], 40, np.random.default_rng(0))


def test_cosine_schedule():
    lrs = [cosine_lr(s, 10, 2, 1e-3, 1e-5) for s in range(10)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_short_his4mae_run_loss_falls_and_checkpoint_loads(tmp_path, volume):
    torch.manual_seed(0)
    pipeline = build("his4mae-tiny")
    report = pretrain(pipeline, [volume], tmp_path / "enc.pt", epochs=6, samples_per_epoch=128, batch=32,
                      warmup_epochs=1)
    totals = [e["total"] for e in report.losses]
    assert len(totals) == 6 and totals[-1] < 0.5 * totals[0], totals
    assert all(e["tea"] > 0 and e["stu"] > 0 for e in report.losses)
    loaded = build("his4mae-tiny", checkpoint=tmp_path / "enc.pt")
    trained = pipeline.encoders["fov_encoder"].state_dict()
    for key, value in loaded.encoders["fov_encoder"].state_dict().items():
        assert torch.equal(value, trained[key]), key


def _run(out, volume, **kwargs):
    torch.manual_seed(0)
    pipeline = build("his4mae-tiny")
    return pipeline, pretrain(pipeline, [volume], out, **RUN, **kwargs)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, volume):
    _, straight = _run(tmp_path / "a.pt", volume)
    _, first = _run(tmp_path / "b.pt", volume, stop_after=2)
    _, second = _run(tmp_path / "b.pt", volume, resume=True)
    assert (first.end_epoch, second.start_epoch, second.end_epoch) == (2, 2, 4)
    assert second.losses == straight.losses
    weights_a = torch.load(tmp_path / "a.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert weights_a.keys() == weights_b.keys() and all(k.startswith("encoders.fov_encoder.vit.") for k in weights_a)
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key
    full_a = torch.load(tmp_path / "a.pt.state", weights_only=True)
    full_b = torch.load(tmp_path / "b.pt.state", weights_only=True)
    assert full_a["pretrainer"].keys() == full_b["pretrainer"].keys()
    assert any(k.startswith("teacher.") for k in full_a["pretrainer"]) and "codebook.weight" in full_a["pretrainer"]
    for key, value in full_a["pretrainer"].items():  # student, teacher, codebook, decoder, usage counts
        assert torch.equal(value, full_b["pretrainer"][key]), key
    for index, moments in full_a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, full_b["optimizer"]["state"][index][key])
    assert full_a["rng"] == full_b["rng"] and torch.equal(full_a["torch_rng"], full_b["torch_rng"])


def test_resume_refuses_other_settings_data_and_foreign_files(tmp_path, volume):
    out = tmp_path / "c.pt"
    _run(out, volume, stop_after=1)
    with pytest.raises(EmsegError, match="exists; pass --resume"):
        _run(out, volume)
    with pytest.raises(EmsegError, match=r"other settings \(batch 32 → 16\)"):
        pretrain(build("his4mae-tiny"), [volume], out, **{**RUN, "batch": 16}, resume=True)
    with pytest.raises(EmsegError, match="other --data"):
        _run(out, volume[::-1].copy(), resume=True)
    with pytest.raises(EmsegError, match="belongs to model his4mae-tiny"):
        pretrain(build("maester-tiny"), [volume], out, **RUN, resume=True)
    torch.save({"something": torch.zeros(1)}, tmp_path / "d.pt.state")
    (tmp_path / "d.pt").write_bytes(b"")
    with pytest.raises(EmsegError, match="not a pretraining state"):
        _run(tmp_path / "d.pt", volume, resume=True)


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("pretrain") / "p.zarr", generate_phantom((4, 64, 64), seed=5))


def test_cli_writes_a_loadable_checkpoint(tmp_path, monkeypatch, capsys, phantom_path):
    out = tmp_path / "enc.pt"
    code, stdout, err = run_cli(monkeypatch, capsys, "pretrain", "his4mae-tiny", "--data", phantom_path, "--out", out,
                                "--epochs", "2", "--samples-per-epoch", "32", "--batch", "16", "--quiet")
    assert code == 0, err
    assert out.is_file() and (tmp_path / "enc.pt.state").is_file()
    line = stdout.strip()
    assert "\n" not in line and "epochs 0→2 of 2" in line and "recon" in line and " s;" in line
    loaded = build("his4mae-tiny", checkpoint=out)
    for key, value in torch.load(out, weights_only=True).items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_cli_refusals_are_one_line(tmp_path, monkeypatch, capsys, phantom_path):
    base = ("--epochs", "1", "--samples-per-epoch", "16", "--batch", "16", "--quiet")
    assert_one_line(run_cli(monkeypatch, capsys, "pretrain", "scsam-tiny", "--data", phantom_path,
                            "--out", tmp_path / "a.pt", *base), "emseg-rt train")
    assert_one_line(run_cli(monkeypatch, capsys, "pretrain", "his4mae-tiny", "--data", tmp_path / "missing.zarr",
                            "--out", tmp_path / "a.pt", *base), "missing.zarr")
    assert_one_line(run_cli(monkeypatch, capsys, "pretrain", "his4mae-tiny", "--data", phantom_path,
                            "--out", tmp_path / "a.pt", "--resume", *base), "--resume", "a.pt.state")
    assert_one_line(run_cli(monkeypatch, capsys, "pretrain", "his4mae-tiny", "--data", phantom_path,
                            "--out", tmp_path / "no" / "a.pt", *base), "does not exist")
    assert not (tmp_path / "a.pt").exists()


def test_a_pipeline_frozen_for_inference_still_trains(tmp_path, volume):
    """A pipeline a backend has put in inference mode (requires_grad off) is trained, not silently skipped."""
    torch.manual_seed(0)
    pipeline = build("his4mae-tiny").eval().requires_grad_(False)
    before = {k: v.clone() for k, v in pipeline.encoders["fov_encoder"].state_dict().items()}
    pretrain(pipeline, [volume], tmp_path / "enc.pt", **{**RUN, "epochs": 1})
    after = pipeline.encoders["fov_encoder"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
