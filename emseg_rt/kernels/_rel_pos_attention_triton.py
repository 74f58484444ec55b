"""The fused Triton kernel behind `rel_pos_attention_triton` (`launch`; raises without triton).

Flash attention (online softmax over blocks of keys, float32 accumulation) with SAM's decomposed relative
position added inside the kernel. One program computes BLOCK_M query rows of one (image, head):

    for each block of BLOCK_N keys n = (key_row, key_col) = (n // W, n % W):
        s      = scale · q kᵀ + rel_h[q, key_row] + rel_w[q, key_col]      (BLOCK_M, BLOCK_N) float32
        m_new  = max(m, rowmax(s));  p = exp(s − m_new);  α = exp(m − m_new)
        l      = α · l + rowsum(p);  acc = α · acc + p v;  m = m_new
    out = acc / l

The (N, N) bias is never built: per query row the kernel reads its H + W relative-position terms (gathered,
they stay in cache), so the extra memory traffic is O(N·(H + W)) instead of O(N²) per head.

This module imports without triton (the package's import test walks every module); `launch` then raises.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton on this platform: `launch` says so
    triton = None

BLOCKS = {2: (64, 64), 4: (32, 32)}  # (query rows per program, keys per softmax step) by element size:
# fp32 tiles are twice the bytes, and ViT-H's head dim 80 is padded to 128, so they get half the block
NUM_WARPS = 4
NUM_STAGES = 2  # software-pipelined key/value loads; more stages need more shared memory
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension (query blocks)

if triton is not None:

    @triton.jit
    def _rel_pos_attention_kernel(
        q_ptr, k_ptr, v_ptr, rel_h_ptr, rel_w_ptr, out_ptr,
        q_sb, q_sh, q_sn, q_sd, k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, o_sb, o_sh, o_sn, o_sd,
        heads, seq_len, key_rows, key_cols, head_dim, scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        image_head = tl.program_id(0).to(tl.int64)
        image = image_head // heads
        head = image_head % heads
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < seq_len
        dim_ok = dims < head_dim

        q_base = q_ptr + image * q_sb + head * q_sh
        k_base = k_ptr + image * k_sb + head * k_sh
        v_base = v_ptr + image * v_sb + head * v_sh
        query = tl.load(q_base + rows[:, None] * q_sn + dims[None, :] * q_sd,
                        mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        rel_h_rows = rel_h_ptr + (image_head * seq_len + rows) * key_rows  # (BLOCK_M,) row starts
        rel_w_rows = rel_w_ptr + (image_head * seq_len + rows) * key_cols

        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, seq_len, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < seq_len
            key_t = tl.load(k_base + cols[None, :] * k_sn + dims[:, None] * k_sd,
                            mask=dim_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_D, BLOCK_N)
            scores = tl.dot(query, key_t, input_precision=DOT_PRECISION) * scale
            both = row_ok[:, None] & col_ok[None, :]
            bias_h = tl.load(rel_h_rows[:, None] + (cols // key_cols)[None, :], mask=both, other=0.0)
            bias_w = tl.load(rel_w_rows[:, None] + (cols % key_cols)[None, :], mask=both, other=0.0)
            scores = scores + (bias_h.to(tl.float32) + bias_w.to(tl.float32))
            scores = tl.where(col_ok[None, :], scores, float("-inf"))

            new_max = tl.maximum(row_max, tl.max(scores, axis=1))
            rescale = tl.exp(row_max - new_max)
            probabilities = tl.exp(scores - new_max[:, None])
            row_sum = row_sum * rescale + tl.sum(probabilities, axis=1)
            value = tl.load(v_base + cols[:, None] * v_sn + dims[None, :] * v_sd,
                            mask=col_ok[:, None] & dim_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            acc = acc * rescale[:, None] + tl.dot(probabilities.to(value.dtype), value,
                                                  input_precision=DOT_PRECISION)
            row_max = new_max

        out = acc / row_sum[:, None]
        out_base = out_ptr + image * o_sb + head * o_sh
        tl.store(out_base + rows[:, None] * o_sn + dims[None, :] * o_sd, out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dim_ok[None, :])


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
           scale: float, *, block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """q, k, v (B, heads, N, D) (any strides), rel_h (B, heads, H, W, H), rel_w (B, heads, H, W, W)
    → (B, heads, N, D) in q's dtype, stored (B, N, heads, D)-contiguous so that SAM's reshape back to
    (B, H, W, heads·D) is free. Shapes are checked by the caller."""
    if triton is None:
        raise ImportError("rel_pos_attention_triton needs triton (pip install 'emseg-rt[kernels]', Linux)")
    batch, heads, seq_len, head_dim = q.shape
    default_m, default_n = BLOCKS[q.element_size()]
    block_m, block_n = block_m or default_m, block_n or default_n
    key_rows, key_cols = rel_h.shape[-1], rel_w.shape[-1]
    query_blocks = triton.cdiv(seq_len, block_m)
    if query_blocks > MAX_GRID_Y:
        raise ValueError(f"at most {MAX_GRID_Y * block_m} tokens per image, got {seq_len}")
    rel_h = rel_h.contiguous()
    rel_w = rel_w.contiguous()
    out = torch.empty((batch, seq_len, heads, head_dim), dtype=q.dtype, device=q.device).transpose(1, 2)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32: no TF32 rounding, as SDPA in fp32
    _rel_pos_attention_kernel[(batch * heads, query_blocks)](
        q, k, v, rel_h, rel_w, out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, seq_len, key_rows, key_cols, head_dim, float(scale),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        DOT_PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out
