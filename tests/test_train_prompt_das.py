"""Prompt-DAS training: targets, prompt subsets, source loss, mean teacher + contrastive loss, resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line, run_cli

from emseg_rt.data.phantom import MITOCHONDRIA, generate_phantom, write_phantom
from emseg_rt.models import build
from emseg_rt.training.prompt_das import (
    MeanTeacher,
    density_target,
    pcl_loss,
    peak_points,
    sample_prompts,
    train_prompt_das,
    window_centres,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source():
    return generate_phantom((8, 96, 96), seed=1)


@pytest.fixture(scope="module")
def target():
    return generate_phantom((8, 96, 96), seed=2, noise=1.5)


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build("prompt-das-tiny")


def test_centres_and_density_peak_at_each_object():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:10, 5:12] = True  # a rectangle: centroid (x 8, y 7)
    mask[25:35, 20:23] = True  # a bar: centroid (x 21, y 29.5)
    mask[20:23, 2:20] = True  # an L whose centroid falls outside it → snapped onto it
    mask[20:38, 2:5] = True
    centres = window_centres(mask)
    assert centres.shape == (3, 2) and centres.dtype == np.float32
    np.testing.assert_allclose(centres[0], [8.0, 7.0])
    np.testing.assert_allclose(centres[2], [21.0, 29.5])  # components in raster order: rectangle, L, bar
    x, y = np.rint(centres[1]).astype(int)
    assert mask[y, x], "the L's centre is snapped onto the L"
    density = density_target(centres, mask.shape, sigma=2.0)
    assert density.dtype == np.float32 and density.min() >= 0.0 and density.max() <= 1.0
    for cx, cy in np.rint(centres).astype(int):
        assert density[cy, cx] == pytest.approx(1.0)  # peak-normalised: exactly 1 at every centre
        assert density[cy, cx + 2] == pytest.approx(np.exp(-4 / 8), rel=1e-5)  # a Gaussian of σ 2 px
    assert density[0, 39] < 1e-6  # ~0 far from all centres
    found = peak_points(torch.from_numpy(density)[None, None], threshold=0.5, kernel=5)[0]
    assert sorted(map(tuple, found.astype(int))) == sorted(map(tuple, np.rint(centres).astype(int)))
    assert not density_target(np.zeros((0, 2), np.float32), (8, 8), 2.0).any()
    assert window_centres(np.zeros((8, 8), bool)).shape == (0, 2)


def test_prompt_subsets_take_the_fraction_and_pad():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 64, (10, 2)).astype(np.float32)
    coords, labels = sample_prompts(centres, max_points=8, fraction=0.5, rng=rng)
    assert coords.shape == (8, 2) and labels.shape == (8,) and labels.dtype == np.int64
    assert (labels == 1).sum() == 5 and (labels[5:] == -1).all() and not coords[5:].any()
    assert {tuple(c) for c in coords[:5]} <= {tuple(c) for c in centres}  # distinct centres of this window
    assert len({tuple(c) for c in coords[:5]}) == 5
    coords, labels = sample_prompts(centres, max_points=4, fraction=1.0, rng=rng)
    assert (labels == 1).all()  # capped at P
    coords, labels = sample_prompts(centres[:2], 4, 1.0, rng, negatives=np.array([[1.0, 2.0]], np.float32))
    assert labels.tolist() == [1, 1, 0, -1] and coords[2].tolist() == [1.0, 2.0]
    counts = {int((sample_prompts(centres, 16, None, rng)[1] == 1).sum()) for _ in range(40)}
    assert len(counts) > 3  # fraction None: a random share per window (the paper's random n_s)
    assert (sample_prompts(centres, 4, 0.0, rng)[1] == -1).all()


def test_queries_do_not_change_forward_and_pcl_matches_equation():
    pipeline = tiny().eval()
    inputs = pipeline.example_inputs(batch=2, seed=4)
    with torch.no_grad():
        plain = pipeline(inputs["tiles"], point_coords=inputs["point_coords"], point_labels=inputs["point_labels"])
        embedding = pipeline.embed(inputs["tiles"])["dino_embedding"]
        query_coords = torch.rand(2, 5, 2) * 64
        query_valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
        with_queries = pipeline.head.forward_with_queries(embedding, inputs["point_coords"], inputs["point_labels"],
                                                          query_coords, query_valid)
        moved = pipeline.head.forward_with_queries(embedding, inputs["point_coords"], inputs["point_labels"],
                                                   query_coords.flip(1), query_valid)
    for name in ("logits", "density"):  # the query tokens leak into nothing (DN-DETR attention mask)
        torch.testing.assert_close(with_queries[name], plain[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(moved[name], plain[name], atol=1e-5, rtol=1e-5)
    assert with_queries["query_tokens"].shape == (2, 5, 32) and with_queries["prompt_tokens"].shape == (2, 4, 32)
    assert not torch.allclose(with_queries["query_tokens"][0, 0], with_queries["query_tokens"][0, 1])

    gen = torch.Generator().manual_seed(5)
    prompts, queries, background = (torch.randn(n, 8, generator=gen) for n in (3, 4, 6))
    loss = pcl_loss(prompts, queries, background, temperature=0.5)
    mu_f = torch.nn.functional.normalize(prompts.mean(0), dim=0)
    expected = []
    for z in torch.nn.functional.normalize(queries, dim=1):
        pos = torch.exp(mu_f @ z / 0.5)
        neg = torch.exp(torch.nn.functional.normalize(background, dim=1) @ z / 0.5).sum()
        expected.append(-torch.log(pos / (pos + neg)))
    assert float(loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_source_loss_falls(source, tmp_path):
    pipeline = tiny()
    report = train_prompt_das(pipeline, [source.image], [source.labels], tmp_path / "pd.pt", steps=40, batch=4,
                              lr=1e-3, prompt_fraction=0.5, checkpoint_every=10)
    totals = [record["total"] for record in report.losses]
    assert [record["step"] for record in report.losses] == [10, 20, 30, 40]
    # measured 1.72 → 1.62 → 1.57 → 1.51 (BCE 0.68 → 0.54, density 0.073 → 0.011), the same on timm 1.0.22
    # and 1.0.31 (the ViT's initial weights are drawn by models.vit, not timm)
    assert totals[-1] < 0.9 * totals[0], totals
    assert all(np.isfinite(totals))
    loaded = build("prompt-das-tiny", checkpoint=tmp_path / "pd.pt")
    for key, value in pipeline.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mean_teacher_and_contrastive_terms(source, target, tmp_path):
    pipeline = tiny()
    start = {k: v.clone() for k, v in pipeline.state_dict().items()}
    # A random model is ~0.5 confident everywhere: thresholds that give it foreground queries and background points.
    settings = MeanTeacher(targets=[target.image], ema_decay=0.9, foreground_confidence=0.505,
                           background_confidence=0.505, background_points=24)
    seen = []
    report = train_prompt_das(pipeline, [source.image], [source.labels], tmp_path / "mt.pt", steps=1, batch=2,
                              lr=1e-3, mean_teacher=settings, contrastive_weight=0.5,
                              on_step=lambda step, steps, terms: seen.append(terms.as_floats()))
    terms = seen[0]
    assert report.losses[0]["total"] == pytest.approx(terms["total"])
    for name in ("dice", "bce", "density", "target_dice", "target_bce", "target_density", "pcl"):
        assert np.isfinite(terms[name]), name
    assert terms["pcl"] > 0 and terms["target_bce"] > 0
    state = torch.load(tmp_path / "mt.pt.state", weights_only=True)
    for key, value in pipeline.state_dict().items():  # teacher = 0.9·θ0 + 0.1·θ1 after one step
        if value.is_floating_point():
            torch.testing.assert_close(state["teacher"][key], 0.9 * start[key] + 0.1 * value, atol=1e-6, rtol=1e-5)
    assert state["projection"], "the contrastive MLP φ is saved for resume"
    moved = pipeline.state_dict()["head.mask_token.weight"]
    assert not torch.equal(moved, start["head.mask_token.weight"])  # the step trained the decoder


def test_resume_is_bit_identical(source, target, tmp_path):
    common = dict(steps=4, batch=2, lr=1e-3, checkpoint_every=1,
                  mean_teacher=MeanTeacher(targets=[target.image], foreground_confidence=0.505,
                                           background_confidence=0.505, background_points=16),
                  contrastive_weight=0.2)
    train_prompt_das(tiny(), [source.image], [source.labels], tmp_path / "full.pt", **common)
    train_prompt_das(tiny(), [source.image], [source.labels], tmp_path / "part.pt", stop_after=2, **common)
    resumed = tiny(seed=7)  # other initial weights: everything must come from the state
    report = train_prompt_das(resumed, [source.image], [source.labels], tmp_path / "part.pt", resume=True, **common)
    assert report.start_step == 2 and report.end_step == 4
    full, part = (torch.load(tmp_path / name, weights_only=True) for name in ("full.pt", "part.pt"))
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    full_state, part_state = (torch.load(tmp_path / f"{n}.pt.state", weights_only=True) for n in ("full", "part"))
    assert all(torch.equal(full_state["teacher"][k], part_state["teacher"][k]) for k in full_state["teacher"])
    assert full_state["losses"] == part_state["losses"]
    with pytest.raises(Exception, match="other settings"):
        train_prompt_das(tiny(), [source.image], [source.labels], tmp_path / "part.pt", resume=True,
                         **{**common, "lr": 2e-3})


def test_cli_trains_prompt_das_and_refuses_bad_options(tmp_path, monkeypatch, capsys):
    volume = write_phantom(tmp_path / "ph.zarr", generate_phantom((4, 96, 96), seed=3))
    ckpt = tmp_path / "ckpt.pt"
    code, _, err = run_cli(monkeypatch, capsys, "train", "prompt-das-tiny", "--data", volume, "--out", ckpt,
                           "--steps", "2", "--lr", "1e-3", "--quiet")
    assert code == 0, err
    assert (tmp_path / "ckpt.pt.state").exists()
    pipeline = build("prompt-das-tiny", checkpoint=ckpt).eval()
    out = pipeline(**pipeline.example_inputs())
    assert out["logits"].shape == (1, 1, 64, 64) and out["density"].min() >= 0
    assert_one_line(run_cli(monkeypatch, capsys, "train", "prompt-das-tiny", "--data", volume, "--out",
                            tmp_path / "a.pt", "--prompt-fraction", "1.5"), "--prompt-fraction")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "prompt-das-tiny", "--data", volume, "--out",
                            tmp_path / "b.pt", "--contrastive-weight", "0.1"), "--target")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "prompt-das-tiny", "--data", volume, "--out",
                            tmp_path / "c.pt", "--cos-weight", "0.5"), "--cos-weight")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "scsam-tiny", "--data", volume, "--out",
                            tmp_path / "d.pt", "--target", volume), "--target")
    assert_one_line(run_cli(monkeypatch, capsys, "train", "prompt-das-tiny", "--data", volume, "--out", ckpt,
                            "--steps", "2", "--quiet"), "--resume")
    assert MITOCHONDRIA == 2  # the default --class-id


def test_a_class_id_no_label_holds_is_refused(tmp_path):
    """--class-id naming a class absent from every label volume would train on empty masks: one line instead."""
    from emseg_rt.errors import EmsegError
    from emseg_rt.models import build
    from emseg_rt.training import train_prompt_das

    image = np.zeros((2, 64, 64), np.uint8)
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[:, 10:20, 10:20] = 2
    with pytest.raises(EmsegError, match="no voxel of the labels has class id 9"):
        train_prompt_das(build("prompt-das-tiny"), [image], [labels], tmp_path / "p.pt", steps=1, batch=1,
                         class_id=9)
    assert not (tmp_path / "p.pt").exists()
