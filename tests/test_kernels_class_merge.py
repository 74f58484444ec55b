"""Class merge without tile-size logits (emseg_rt.kernels.class_merge): the torch reference is ClassMerge's
rule bit for bit, the fused Triton kernel (run by the Triton interpreter on this CPU) equals it, and heads
asked for labels only (want_logits=False) give the labels of the full forward."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from triton_helpers import kernel_outputs

from emseg_rt.kernels import class_merge_labels, class_merge_reference, class_merge_triton
from emseg_rt.models import build
from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.runtime import load_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
NEAR_TIE = 1e-5  # on a GPU (fused multiply-adds) labels may differ where two values are this close


def old_class_merge(low_res_logits: torch.Tensor, tile: int, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """ClassMerge.forward's labels as written before the kernel existed (the rule the runtime always used)."""
    logits = F.interpolate(low_res_logits.float(), size=(tile, tile), mode="bilinear", align_corners=False)
    best, best_class = logits.max(dim=1)
    labels = torch.where(best > threshold, best_class + 1, torch.zeros_like(best_class))
    return labels.to(dtype)


def _logits(seed: int, batch: int, classes: int, hw: tuple[int, int], dtype=torch.float32,
            duplicate: bool = False) -> torch.Tensor:
    """(B, K, h, w) random logits; duplicate=True appends a copy of every class (K → 2K), exact ties."""
    low_res = torch.randn(batch, classes, *hw, generator=torch.Generator().manual_seed(seed))
    if duplicate:
        low_res = torch.cat([low_res, low_res], dim=1)
    return low_res.to(dtype)


MERGE_CASES = {  # name: (seed, batch, classes, low-res hw, tile, threshold, input dtype, duplicate classes)
    "up4x_k3": (1, 2, 3, (8, 8), 32, 0.0, torch.float32, False),
    "non_integer_k3": (2, 1, 3, (7, 6), 23, 0.0, torch.float32, False),
    "identity_k3": (3, 2, 3, (9, 9), 9, 0.0, torch.float32, False),
    "k1_threshold": (4, 3, 1, (5, 5), 17, 0.3, torch.float32, False),
    "downsample_k4": (5, 1, 4, (12, 10), 5, -0.2, torch.float32, False),
    "ties_k3_twice": (6, 1, 3, (6, 6), 20, 0.0, torch.float32, True),
    "fp16_k3": (7, 2, 3, (8, 8), 29, 0.1, torch.float16, False),
}


@pytest.mark.parametrize("name", list(MERGE_CASES))
def test_reference_is_class_merge_rule_bit_for_bit(name):
    seed, batch, classes, hw, tile, threshold, dtype, duplicate = MERGE_CASES[name]
    low_res = _logits(seed, batch, classes, hw, dtype, duplicate)
    expected = old_class_merge(low_res, tile, threshold, torch.uint8)
    labels = class_merge_reference(low_res, tile, threshold, torch.uint8)
    assert labels.shape == (batch, tile, tile) and labels.dtype == torch.uint8
    assert torch.equal(labels, expected)
    assert 0 < int((labels == 0).sum()) < labels.numel(), "the case must exercise background and classes"
    if duplicate:  # class k and k + K are identical: the lowest index (labels 1..K) must win
        assert int(labels.max()) <= low_res.shape[1] // 2
        assert torch.equal(labels, class_merge_reference(low_res[:, : low_res.shape[1] // 2], tile, threshold))
    merge = ClassMerge(tile, low_res.shape[1], threshold)
    full, labels_only = merge(low_res), merge(low_res, want_logits=False)
    assert set(labels_only) == {"labels"} and torch.equal(labels_only["labels"], expected)
    assert torch.equal(full["labels"], expected) and full["logits"].shape == (batch, low_res.shape[1], tile, tile)


def test_labels_dtypes_nan_and_bad_input(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    low_res = _logits(8, 1, 3, (6, 6))
    low_res[0, 1, 2, 3] = float("nan")
    expected = old_class_merge(low_res, 16, 0.0, torch.int32)
    labels = class_merge_labels(low_res, 16, 0.0, torch.int32)
    assert labels.dtype == torch.int32 and torch.equal(labels, expected)
    assert int((labels == 0).sum()) > int((old_class_merge(low_res.nan_to_num(), 16, 0.0, torch.int32) == 0).sum())
    with pytest.raises(ValueError, match="do not fit"):
        class_merge_reference(_logits(9, 1, 256, (2, 2)), 4, 0.0, torch.uint8)
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        class_merge_reference(torch.zeros(3, 4, 4), 8)
    with pytest.raises(ValueError, match="impl must be one of"):
        class_merge_labels(low_res, 16, impl="naive")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        class_merge_triton(low_res, 16)


TRITON_CASES = {**MERGE_CASES,  # plus label dtypes and a NaN; name: (..., labels dtype, NaN at (b, k, y, x))
                "int32_labels": (10, 1, 5, (7, 9), 31, 0.0, torch.float32, False),
                "bf16_nan": (11, 1, 3, (6, 6), 20, 0.0, torch.bfloat16, False)}
TRITON_LABEL_DTYPES = {"int32_labels": torch.int32}
TRITON_NANS = {"bf16_nan": (0, 1, 2, 3)}

INTERPRETER_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from emseg_rt.kernels import class_merge_triton
cases = torch.load(sys.argv[1])
torch.save({name: class_merge_triton(low_res, tile, threshold, dtype)
            for name, (low_res, tile, threshold, dtype) in cases.items()}, sys.argv[2])
"""


def _triton_cases() -> dict:
    cases = {}
    for name, (seed, batch, classes, hw, tile, threshold, dtype, duplicate) in TRITON_CASES.items():
        low_res = _logits(seed, batch, classes, hw, dtype, duplicate)
        if name in TRITON_NANS:
            low_res[TRITON_NANS[name]] = float("nan")
        cases[name] = (low_res, tile, threshold, TRITON_LABEL_DTYPES.get(name, torch.uint8))
    return cases


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'emseg-rt[kernels]', Linux only)")
def test_triton_kernel_equals_reference_under_the_interpreter(tmp_path):
    """The fused kernel on CPU tensors under TRITON_INTERPRET=1 (no GPU here: correctness only, no timing).
    A subprocess, because the interpreter must be chosen before triton is first imported. Both compute each
    upsampled logit in float32 from the same indices and weights; on these cases the labels are equal exactly."""
    cases = _triton_cases()
    fused = kernel_outputs(INTERPRETER_SCRIPT, cases, tmp_path)
    for name, (low_res, tile, threshold, dtype) in cases.items():
        labels = fused[name]
        assert labels.shape == (low_res.shape[0], tile, tile) and labels.dtype == dtype, name
        assert torch.equal(labels, class_merge_reference(low_res, tile, threshold, dtype)), name
    assert int(fused["ties_k3_twice"].max()) <= 3, "lowest index must win exact ties"


def _assert_differ_only_at_near_ties(labels, expected, low_res, tile, threshold):
    """Where the labels differ, the two best classes (or the best and the threshold) are within NEAR_TIE."""
    differ = labels.long() != expected.long()
    if not differ.any():
        return
    logits = F.interpolate(low_res.double(), size=(tile, tile), mode="bilinear", align_corners=False)
    top2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    gap_classes = (top2[:, 0] - top2[:, -1]).abs() if logits.shape[1] > 1 else torch.full_like(top2[:, 0], 1e9)
    gap = torch.minimum(gap_classes, (top2[:, 0] - threshold).abs())[differ]
    assert float(gap.max()) < NEAR_TIE * max(1.0, float(logits.abs().max()))
    assert differ.float().mean().item() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_kernel_equals_reference_on_cuda(dtype):
    low_res = _logits(12, 4, 3, (256, 256), dtype).cuda()  # SAM's 256² low-res masks → 1024² tiles
    labels = class_merge_triton(low_res, 1024, 0.0)
    expected = class_merge_reference(low_res, 1024, 0.0)
    _assert_differ_only_at_near_ties(labels, expected, low_res, 1024, 0.0)
    assert torch.equal(class_merge_labels(low_res, 1024, 0.0), labels)  # auto picks the kernel on CUDA


HEAD_MODELS = ["scsam-tiny", "vanilla-sam-tiny", "vanilla-sam2-tiny", "prompt-das-tiny", "samda-tiny"]


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_labels_only_heads_give_the_full_heads_labels(name):
    torch.manual_seed(0)
    model = build(name).eval()
    assert model.can_skip_logits
    inputs = model.example_inputs(batch=2, seed=3)
    with torch.no_grad():
        full = model(**inputs)
        labels_only = model(**inputs, want_logits=False)
    assert "logits" in full and "logits" not in labels_only
    assert labels_only["labels"].dtype == full["labels"].dtype == torch.uint8
    assert torch.equal(labels_only["labels"], full["labels"])


def test_torch_backend_labels_only_are_identical_for_the_default_model():
    """The default model through the torch backend (centre stitching's want_logits=False, now labels only)
    gives the bytes of the full forward's labels."""
    backend = load_backend(None, "torch")
    assert backend.model.can_skip_logits
    tiles = np.random.default_rng(5).integers(0, 256, (2, 1, backend.spec.tile, backend.spec.tile), dtype=np.uint8)
    labels_only = backend.run(tiles, want_logits=False)
    full = backend.run(tiles, want_logits=True)
    assert set(labels_only) == {"labels"} and labels_only["labels"].dtype == np.uint8
    assert np.array_equal(labels_only["labels"], full["labels"])
    assert 0 < int((full["labels"] == 0).sum()) < full["labels"].size
