"""Nearest-centroid labels of upsampled tokens (emseg_rt.kernels): the score identity against the research
code's way, and the fused Triton kernel (run by the Triton interpreter on this CPU) against the torch reference."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from triton_helpers import kernel_outputs

from emseg_rt.kernels import (
    nearest_centroid,
    nearest_centroid_naive,
    nearest_centroid_reference,
    nearest_centroid_triton,
    token_scores,
)
from emseg_rt.kernels.nearest_centroid import labels_from_scores_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
NEAR_TIE = 1e-4  # relative gap of two squared distances (or scores) below which either label is right
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _inputs(seed: int, batch: int, channels: int, clusters: int, token_hw: tuple[int, int]):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, channels, *token_hw, generator=generator)
    centres = torch.randn(clusters, channels, generator=generator)
    return tokens, centres


def _assert_differ_only_at_near_ties(labels, expected, values):
    """labels, expected: (B, H, W) integer; values: (B, K, H, W) float64, what the argmin is taken over.
    Where the labels differ, the two labels' values must be equal up to NEAR_TIE (relative)."""
    differ = labels.long() != expected.long()
    if not differ.any():
        return
    chosen = values.gather(1, labels.long()[:, None])[:, 0][differ]
    wanted = values.gather(1, expected.long()[:, None])[:, 0][differ]
    scale = values.abs().amax(dim=1)[differ].clamp_min(1.0)
    gap = ((chosen - wanted).abs() / scale).max().item()
    assert gap < NEAR_TIE, f"{int(differ.sum())} labels differ, relative gap up to {gap:.2e} (not a tie)"
    assert differ.float().mean().item() < 0.01


def _squared_distances64(tokens, centres, out_hw):
    """(B, K, H, W) float64 exact squared distances of the upsampled features to every centre."""
    features = F.interpolate(tokens.double(), size=out_hw, mode="bilinear", align_corners=False)
    return ((features[:, None] - centres.double()[None, :, :, None, None]) ** 2).sum(dim=2)


def test_token_scores_are_squared_distance_minus_token_norm():
    tokens, centres = _inputs(1, batch=2, channels=24, clusters=7, token_hw=(5, 6))
    scores = token_scores(tokens, centres)
    assert scores.shape == (2, 7, 5, 6) and scores.dtype == torch.float32
    t64, c64 = tokens.double(), centres.double()
    distances = ((t64[:, None] - c64[None, :, :, None, None]) ** 2).sum(dim=2)
    expected = distances - (t64 ** 2).sum(dim=1, keepdim=True)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "seed, batch, channels, clusters, token_hw, out_hw",
    [
        (2, 2, 24, 8, (6, 5), (23, 17)),        # non-integer scale factors
        (3, 1, 32, 16, (16, 16), (80, 80)),     # one 80-pixel FOV of patch-5 tokens
        (4, 1, 16, 12, (7, 9), (7, 9)),         # same size: identity
        (5, 1, 16, 12, (10, 12), (4, 5)),       # downsampling
        (6, 3, 8, 1, (5, 5), (33, 29)),         # K = 1
        (7, 1, 32, 512, (4, 4), (13, 11)),      # K = 512, several reference chunks
    ],
)
def test_reference_matches_naive_except_at_near_ties(seed, batch, channels, clusters, token_hw, out_hw):
    tokens, centres = _inputs(seed, batch, channels, clusters, token_hw)
    naive = nearest_centroid_naive(tokens, centres, out_hw)
    reference = nearest_centroid_reference(tokens, centres, out_hw)
    assert naive.shape == reference.shape == (batch, *out_hw)
    assert naive.dtype == reference.dtype == torch.int64
    assert int(reference.min()) >= 0 and int(reference.max()) < clusters
    _assert_differ_only_at_near_ties(reference, naive, _squared_distances64(tokens, centres, out_hw))
    if clusters == 1:
        assert not reference.any()


def test_reference_picks_the_lowest_index_of_duplicate_centres():
    tokens, centres = _inputs(8, batch=1, channels=16, clusters=40, token_hw=(6, 5))
    twice = torch.cat([centres, centres])  # 80 centres; centre i and i + 40 are identical
    once = nearest_centroid_reference(tokens, centres, (23, 17))
    assert torch.equal(nearest_centroid_reference(tokens, twice, (23, 17), chunk=16), once)
    assert torch.equal(nearest_centroid_naive(tokens, twice, (23, 17)), nearest_centroid_naive(tokens, centres, (23, 17)))


def test_auto_on_cpu_is_the_torch_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tokens, centres = _inputs(9, batch=1, channels=16, clusters=6, token_hw=(6, 5))
    expected = nearest_centroid_reference(tokens, centres, (23, 17))
    assert torch.equal(nearest_centroid(tokens, centres, (23, 17)), expected)
    labels8 = nearest_centroid(tokens, centres, (23, 17), impl="torch", labels_dtype=torch.uint8)
    assert labels8.dtype == torch.uint8 and torch.equal(labels8.long(), expected)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        nearest_centroid(tokens, centres, (23, 17), impl="triton")
    with pytest.raises(ValueError, match="do not fit"):
        nearest_centroid(tokens, torch.randn(300, 16), (23, 17), labels_dtype=torch.uint8)


def test_package_imports_and_falls_back_without_triton():
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        import torch
        import emseg_rt.kernels as kernels
        import emseg_rt.kernels._nearest_centroid_triton as fused
        assert not kernels.triton_available()
        labels = kernels.nearest_centroid(torch.randn(1, 8, 4, 4), torch.randn(3, 8), (9, 9))
        assert labels.shape == (1, 9, 9)
        try:
            fused.launch(torch.zeros(1, 3, 4, 4), 9, 9, torch.int32)
        except ImportError as error:
            assert "triton" in str(error)
        else:
            raise AssertionError("launch ran without triton")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


TRITON_CASES = {  # name: (seed, batch, clusters, token_hw, out_hw, labels dtype, duplicate the centres)
    "k8": (10, 1, 8, (6, 5), (23, 17), torch.int32, False),
    "k64_b2": (11, 2, 64, (6, 5), (23, 17), torch.int32, False),
    "downsample_uint8": (12, 1, 5, (10, 12), (4, 7), torch.uint8, False),
    "duplicates_int16": (13, 1, 12, (4, 3), (11, 10), torch.int16, True),
}

INTERPRETER_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from emseg_rt.kernels import nearest_centroid_triton
cases = torch.load(sys.argv[1])
torch.save({name: nearest_centroid_triton(scores, out_hw, labels_dtype=dtype)
            for name, (scores, out_hw, dtype) in cases.items()}, sys.argv[2])
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'emseg-rt[kernels]', Linux only)")
def test_triton_kernel_matches_reference_under_the_interpreter(tmp_path):
    """The fused kernel on CPU tensors under TRITON_INTERPRET=1 (no GPU here: correctness only, no timing).
    A subprocess, because the interpreter must be chosen before triton is first imported."""
    cases, scores_of = {}, {}
    for name, (seed, batch, clusters, token_hw, out_hw, dtype, duplicate) in TRITON_CASES.items():
        tokens, centres = _inputs(seed, batch, 16, clusters, token_hw)
        if duplicate:
            centres = torch.cat([centres, centres])
        scores_of[name] = token_scores(tokens, centres)
        cases[name] = (scores_of[name], out_hw, dtype)
    fused = kernel_outputs(INTERPRETER_SCRIPT, cases, tmp_path)
    for name, (scores, out_hw, dtype) in cases.items():
        labels = fused[name]
        assert labels.shape == (scores.shape[0], *out_hw) and labels.dtype == dtype, name
        expected = labels_from_scores_reference(scores, out_hw)
        interpolated = F.interpolate(scores.double(), size=out_hw, mode="bilinear", align_corners=False)
        _assert_differ_only_at_near_ties(labels, expected, interpolated)
        if TRITON_CASES[name][-1]:
            assert int(labels.max()) < scores.shape[1] // 2, "lowest index must win exact ties"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_triton_kernel_matches_reference_on_cuda():
    tokens, centres = _inputs(14, batch=2, channels=192, clusters=512, token_hw=(41, 37))
    tokens, centres = tokens.cuda(), centres.cuda()
    scores = token_scores(tokens, centres)
    labels = nearest_centroid_triton(scores, (203, 181))
    expected = labels_from_scores_reference(scores, (203, 181))
    interpolated = F.interpolate(scores.double(), size=(203, 181), mode="bilinear", align_corners=False)
    _assert_differ_only_at_near_ties(labels, expected, interpolated)
    assert torch.equal(nearest_centroid(tokens, centres, (203, 181)), labels.long())
