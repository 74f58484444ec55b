"""Nearest cluster centre per pixel of bilinearly upsampled patch tokens (HiS4MAE expand-stride inference).

HiS4MAE (§3.3) encodes a field of view into patch tokens, stretches them linearly to pixel resolution and
labels each pixel with its nearest K-means centre. Done literally (`nearest_centroid_naive`), that builds the
(B, C, H, W) feature map and a (B, K, H·W) distance matrix. Both are avoidable:

    ‖f − c‖² = ‖f‖² − 2 f·c + ‖c‖²,   and ‖f‖² is the same for every centre c, so
    argmin_c ‖f − c‖² = argmin_c (‖c‖² − 2 f·c).

Bilinear interpolation is linear with weights that sum to one, f = Σ_i w_i t_i over the four source tokens, so

    ‖c‖² − 2 f·c = Σ_i w_i (‖c‖² − 2 t_i·c) = Σ_i w_i s_i,c

with token scores s = ‖c‖² − 2 t·c, a (B, K, h, w) matmul done once (`token_scores`). The label of a pixel
is the argmin over K of its bilinearly interpolated scores: `nearest_centroid_reference` does that in torch
(K-chunked, so at most (B, chunk, H, W) floats exist at once); `nearest_centroid_triton` does it in one fused
Triton kernel that never materialises more than the labels.

Tie rule. All paths return the lowest centre index among exactly equal minima (torch.argmin's rule). The
score paths evaluate a different float expression than the naive one (no ‖f‖², another summation order, and on
Triton fused multiply-adds), so where two centres are equally near up to float32 rounding (relative gap
around 1e-6 of the squared distance) they may pick the other one. Elsewhere the labels are identical. NaN
scores are not supported (the Triton kernel skips them; torch's argmin returns them).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from emseg_rt.kernels import _nearest_centroid_triton
from emseg_rt.kernels.dispatch import resolve_impl

IMPLEMENTATIONS = ("auto", "triton", "torch", "naive")
LABEL_DTYPES = {torch.uint8: 2**8, torch.int16: 2**15, torch.int32: 2**31, torch.int64: 2**63}
REFERENCE_CHUNK = 64  # centres interpolated at once by the torch reference: (B, 64, H, W) floats at most


def _check_tokens_centres(tokens: torch.Tensor, centres: torch.Tensor) -> None:
    if tokens.dim() != 4:
        raise ValueError(f"tokens must be (B, C, h, w), got shape {tuple(tokens.shape)}")
    if centres.dim() != 2 or centres.shape[1] != tokens.shape[1]:
        raise ValueError(f"centres must be (K, C) with C = {tokens.shape[1]}, got shape {tuple(centres.shape)}")
    if centres.shape[0] < 1:
        raise ValueError("centres must hold at least one centre (K >= 1)")


def _check_out_hw(out_hw: tuple[int, int]) -> tuple[int, int]:
    out_h, out_w = (int(n) for n in out_hw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"out_hw must be two positive sizes, got {out_hw}")
    return out_h, out_w


def _check_label_dtype(labels_dtype: torch.dtype, clusters: int) -> None:
    if labels_dtype not in LABEL_DTYPES:
        raise ValueError(f"labels_dtype must be one of {list(LABEL_DTYPES)}, got {labels_dtype}")
    if clusters > LABEL_DTYPES[labels_dtype]:
        raise ValueError(f"{clusters} centres do not fit in {labels_dtype} labels")


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that computes in the tensors' own dtype (autocast off); a no-op on devices without autocast
    (meta, where parameter and FLOP counts run)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def token_scores(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Score of every token against every centre: s = ‖c‖² − 2 t·c (= ‖t − c‖² − ‖t‖²).

    tokens:  (B, C, h, w) float, encoder patch tokens on a grid.
    centres: (K, C) float, fixed cluster centres.
    returns  (B, K, h, w) float32, on the tokens' device. Computed in float32 even under autocast.
    """
    _check_tokens_centres(tokens, centres)
    batch, channels, height, width = tokens.shape
    with no_autocast(tokens.device):
        centres32 = centres.to(device=tokens.device, dtype=torch.float32)
        dots = torch.matmul(centres32, tokens.to(torch.float32).reshape(batch, channels, height * width))
        scores = (centres32 * centres32).sum(dim=1)[None, :, None] - 2.0 * dots  # (B, K, h·w)
    return scores.reshape(batch, centres.shape[0], height, width)


def nearest_centroid_naive(tokens: torch.Tensor, centres: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The research code's way: upsample the features, then squared distances to every centre, then argmin.

    tokens:  (B, C, h, w) float; centres: (K, C) float; out_hw: (H, W).
    returns  (B, H, W) int64 labels in [0, K). Builds (B, C, H, W) features and a (B, K, H·W) distance matrix.
    """
    _check_tokens_centres(tokens, centres)
    out_h, out_w = _check_out_hw(out_hw)
    features = F.interpolate(tokens.to(torch.float32), size=(out_h, out_w), mode="bilinear", align_corners=False)
    features = features.flatten(2)  # (B, C, H·W)
    centres32 = centres.to(device=tokens.device, dtype=torch.float32)
    distances = ((features * features).sum(1, keepdim=True) - 2.0 * torch.matmul(centres32, features)
                 + (centres32 * centres32).sum(1)[:, None])  # (B, K, H·W) squared distances ‖f‖² − 2 f·c + ‖c‖²
    return distances.argmin(dim=1).reshape(tokens.shape[0], out_h, out_w)


def labels_from_scores_reference(scores: torch.Tensor, out_hw: tuple[int, int], *, chunk: int = REFERENCE_CHUNK,
                                 labels_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Torch reference of the fused kernel: bilinearly upsample the token scores, argmin over K.

    scores:  (B, K, h, w) float (from `token_scores`); out_hw: (H, W).
    returns  (B, H, W) labels_dtype. Centres are taken `chunk` at a time with a running minimum (strict <, so
    the lowest index wins exact ties), so at most (B, chunk, H, W) float32 exist at once.
    """
    out_h, out_w = _check_out_hw(out_hw)
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, K, h, w), got shape {tuple(scores.shape)}")
    _check_label_dtype(labels_dtype, scores.shape[1])
    best_score = labels = None
    for first in range(0, scores.shape[1], chunk):
        block = F.interpolate(scores[:, first:first + chunk].to(torch.float32), size=(out_h, out_w),
                              mode="bilinear", align_corners=False)
        block_best, block_label = block.min(dim=1)
        if best_score is None:
            best_score, labels = block_best, block_label
        else:
            better = block_best < best_score
            best_score = torch.where(better, block_best, best_score)
            labels = torch.where(better, block_label + first, labels)
    return labels.to(labels_dtype)


def nearest_centroid_reference(tokens: torch.Tensor, centres: torch.Tensor, out_hw: tuple[int, int], *,
                               chunk: int = REFERENCE_CHUNK, labels_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Nearest centre per pixel through interpolated token scores, in torch (any device).

    tokens:  (B, C, h, w) float; centres: (K, C) float; out_hw: (H, W).
    returns  (B, H, W) labels_dtype (int64 by default) in [0, K); equal to `nearest_centroid_naive` except at
    float ties (module docstring).
    """
    return labels_from_scores_reference(token_scores(tokens, centres), out_hw, chunk=chunk,
                                        labels_dtype=labels_dtype)


def nearest_centroid_triton(scores: torch.Tensor, out_hw: tuple[int, int], *,
                            labels_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Fused Triton kernel: per output pixel, PyTorch's bilinear (align_corners=False) weights of its four
    source tokens, a loop over K keeping the running minimum of the interpolated score, and the label.

    scores:  (B, K, h, w) float32/float16/bfloat16 on CUDA (accumulated in float32), from `token_scores`.
             CPU tensors work only under the Triton interpreter (TRITON_INTERPRET=1, set before triton loads).
    out_hw:  (H, W).
    returns  (B, H, W) labels_dtype (int32 by default; uint8, int16, int64 where K fits) in [0, K).
    Nothing larger than the labels is allocated. Raises ImportError when triton is not installed.
    """
    out_h, out_w = _check_out_hw(out_hw)
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, K, h, w), got shape {tuple(scores.shape)}")
    _check_label_dtype(labels_dtype, scores.shape[1])
    if scores.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"nearest_centroid_triton needs CUDA tensors (got {scores.device}); on a CPU use "
                         "nearest_centroid_reference, or set TRITON_INTERPRET=1 before importing triton")
    return _nearest_centroid_triton.launch(scores, out_h, out_w, labels_dtype)


@torch.library.custom_op("emseg_rt::nearest_centroid", mutates_args=())
def nearest_centroid_op(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    """`nearest_centroid_triton` as a torch operator (opaque to torch.compile, `dispatch`): token scores
    (B, K, h, w) → labels (B, H, W)."""
    return nearest_centroid_triton(scores, (out_h, out_w), labels_dtype=labels_dtype)


@nearest_centroid_op.register_fake
def _nearest_centroid_fake(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    return scores.new_empty((scores.shape[0], out_h, out_w), dtype=labels_dtype)


def nearest_centroid(tokens: torch.Tensor, centres: torch.Tensor, out_hw: tuple[int, int], *, impl: str = "auto",
                     labels_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Label every pixel of the bilinearly upsampled token grid with its nearest centre.

    tokens:  (B, C, h, w) float, encoder patch tokens; centres: (K, C) float; out_hw: (H, W) pixels.
    impl:    'auto' (Triton on CUDA when triton imports, else the torch reference), 'triton', 'torch'
             (`nearest_centroid_reference`) or 'naive' (`nearest_centroid_naive`, for comparison).
    returns  (B, H, W) labels_dtype (int64 by default, whichever impl runs) in [0, K). Equal across impls
             except at float ties (module docstring).
    """
    chosen = resolve_impl(impl, tokens.device, IMPLEMENTATIONS)
    if chosen == "naive":
        _check_label_dtype(labels_dtype, centres.shape[0])
        return nearest_centroid_naive(tokens, centres, out_hw).to(labels_dtype)
    if chosen == "torch":
        return nearest_centroid_reference(tokens, centres, out_hw, labels_dtype=labels_dtype)
    _check_label_dtype(labels_dtype, centres.shape[0])
    out_h, out_w = _check_out_hw(out_hw)
    return nearest_centroid_op(token_scores(tokens, centres), out_h, out_w, labels_dtype)
