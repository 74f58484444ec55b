"""SAM2's Hiera trunk and FPN neck (the image encoder of SAM2 / SAM2.1), written for export.

Module and parameter names follow the official checkpoint (`image_encoder.trunk.*`, `image_encoder.neck.*`),
so its keys load unchanged; the numbers come from the SAM2.1 configs (see `Sam2EncoderConfig`). Tokens are
kept channels-last (B, H, W, C) inside the trunk, as in SAM2's `hieradet.py`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.configs import Sam2EncoderConfig


def window_partition(tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """tokens (B, H, W, C) → windows (B·nH·nW, window, window, C), zero-padded to multiples of `window`;
    also returns the padded (Hp, Wp)."""
    b, h, w, c = tokens.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    tokens = tokens.reshape(b, hp // window, window, wp // window, window, c)
    return tokens.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
                       ) -> torch.Tensor:
    """windows (B·nH·nW, window, window, C) → tokens (B, H, W, C), the padding cropped off."""
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    tokens = windows.reshape(b, hp // window, wp // window, window, window, windows.shape[-1])
    tokens = tokens.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, windows.shape[-1])
    return tokens[:, : size[0], : size[1], :]


def max_pool_tokens(tokens: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """tokens (B, H, W, C) → (B, H/s, W/s, C): `pool` (a MaxPool2d) applied over H and W."""
    return pool(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    """Linear layers with an activation between them (SAM2's `MLP`; keys `layers.<i>`)."""

    def __init__(self, dims: list[int], activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dims[0]) → (..., dims[-1])."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token grid, the queries optionally max-pooled 2×2."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, H, W, C) → (B, H', W', C_out); H' = H / q_stride where queries are pooled."""
        b, h, w, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each (B, HW, heads, c)
        if self.q_pool is not None:
            q = max_pool_tokens(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """One Hiera block: (windowed or global) attention + MLP; at a stage change the width grows and the
    grid halves (pooled queries, and a projected, pooled shortcut)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, window: int,
                 q_stride: int | None) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window, self.q_stride = dim, dim_out, window, q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(q_stride, q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp([dim_out, int(dim_out * mlp_ratio), dim_out])
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, H, W, dim) → (B, H', W', dim_out), H' = H / q_stride at a stage change."""
        normed = self.norm1(tokens)
        shortcut = tokens
        if self.dim != self.dim_out:
            shortcut = max_pool_tokens(self.proj(normed), self.pool) if self.pool else self.proj(normed)
        if self.window > 0:
            windows, padded = window_partition(normed, self.window)
            attended = self.attn(windows)
            window = self.window // (self.q_stride or 1)
            size = shortcut.shape[1:3]
            padded = tuple(-(-side // window) * window for side in size)
            attended = window_unpartition(attended, window, padded, size)
        else:
            attended = self.attn(normed)
        tokens = shortcut + attended
        return tokens + self.mlp(self.norm2(tokens))


class PatchEmbed(nn.Module):
    """7×7 stride-4 convolution (keys `proj.*`)."""

    def __init__(self, config: Sam2EncoderConfig) -> None:
        super().__init__()
        k, s = config.patch_kernel, config.patch_stride
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=k, stride=s, padding=k // 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) → tokens (B, S/4, S/4, C), channels last."""
        return self.proj(images).permute(0, 2, 3, 1)


def block_plan(config: Sam2EncoderConfig) -> list[dict[str, int | None]]:
    """Per block: dim, dim_out, heads, window (0 = global attention) and q_stride (None = no pooling).

    As SAM2's Hiera: the first block of a stage still uses the previous stage's window size, pools the
    queries (for the first `q_pool` stage changes) and widens dim and heads by `dim_mul` / `head_mul`.
    """
    stage_ends = [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]
    pool_blocks = [end + 1 for end in stage_ends[:-1]][: config.q_pool]
    dim, heads, stage, plan = config.embed_dim, config.num_heads, 0, []
    for i in range(sum(config.stages)):
        window = 0 if i in config.global_att_blocks else config.window_spec[stage]
        dim_out = dim
        if i - 1 in stage_ends:
            dim_out, heads, stage = int(dim * config.dim_mul), int(heads * config.head_mul), stage + 1
        plan.append({"dim": dim, "dim_out": dim_out, "heads": heads, "window": window,
                     "q_stride": config.q_stride if i in pool_blocks else None})
        dim = dim_out
    return plan


class Hiera(nn.Module):
    """SAM2's hierarchical ViT trunk with windowed absolute position embeddings (keys as `trunk.*`)."""

    def __init__(self, config: Sam2EncoderConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_bkg_spatial_size))
        first_window = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, first_window, first_window))
        self.blocks = nn.ModuleList(
            MultiScaleBlock(p["dim"], p["dim_out"], p["heads"], config.mlp_ratio, p["window"], p["q_stride"])
            for p in block_plan(config)
        )
        self.stage_ends = [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]

    def position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """(1, H, W, C): the background embedding resized bicubically to H×W plus the window embedding tiled."""
        background = F.interpolate(self.pos_embed, size=size, mode="bicubic")
        window = self.pos_embed_window
        tiled = window.tile(1, 1, size[0] // window.shape[-2], size[1] // window.shape[-1])
        return (background + tiled).permute(0, 2, 3, 1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, S, S) → one feature map per stage, finest first: (B, C·2^i, S/4/2^i, S/4/2^i)."""
        tokens = self.patch_embed(images)
        tokens = tokens + self.position_embedding((tokens.shape[1], tokens.shape[2]))
        features = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.stage_ends:
                features.append(tokens.permute(0, 3, 1, 2))
        return features


class FpnNeck(nn.Module):
    """SAM2's FPN neck: a 1×1 lateral conv per stage to `d_model`, nearest 2× top-down sums on the
    `fpn_top_down_levels` (keys `convs.<j>.conv.*`, j = 0 for the coarsest stage). SAM2's sine position
    encodings feed only its memory attention, not the image path, and are not computed here."""

    def __init__(self, config: Sam2EncoderConfig) -> None:
        super().__init__()
        self.top_down_levels = tuple(config.fpn_top_down_levels)
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, config.d_model, kernel_size=1)))
            for channels in reversed(config.channel_list)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: per stage, finest first, (B, C_i, H_i, W_i) → per level (B, d_model, H_i, W_i)."""
        last = len(self.convs) - 1
        out: list[torch.Tensor] = [features[0]] * len(features)
        previous = None
        for level in range(last, -1, -1):
            lateral = self.convs[last - level](features[level])
            if level in self.top_down_levels and previous is not None:
                lateral = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
            out[level] = previous = lateral
        return out


class Sam2Backbone(nn.Module):
    """Trunk + neck under SAM2's names (`trunk`, `neck`): the official `image_encoder.*` keys."""

    def __init__(self, config: Sam2EncoderConfig) -> None:
        super().__init__()
        self.trunk = Hiera(config)
        self.neck = FpnNeck(config)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, S, S) → FPN levels 0–2 (B, d_model, S/4, S/4), (…, S/8, S/8), (…, S/16, S/16);
        level 3 (stride 32) only feeds level 2's top-down sum and is dropped, as SAM2's `scalp: 1`."""
        return self.neck(self.trunk(images))[:-1]
