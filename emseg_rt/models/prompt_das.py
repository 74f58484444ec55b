"""Prompt-DAS (Chen, Xiong & Peng): DINO ViT-S/8 encoder, point prompt encoder, two-way decoder with a
segmentation head and a centre-point density head, for any number of point prompts (including none).

What comes from where (details in docs/models.md):

- encoder: DINO ViT-S/8 without the class token, patch tokens straight to the decoder (paper §3, its code);
- prompt encoder: SAM's random-Fourier encoding of the points (paper §3: "a standard positional
  embedding"), plus, ours, SAM-style learned positive / negative label embeddings (`label_embeddings`);
- decoder: SAM's two-way transformer at the encoder's width (384), one mask token and no IoU token, SAM's
  4× upscaling and hypernetwork MLP; the density head is the code's conv head on the upscaled embedding.

Prompts are padded arrays so the graph is static: `point_labels` 1 (positive), 0 (negative), anything
else (−1) padding. Padding points provably change nothing: their tokens are replaced by a constant
(`torch.where`, so their coordinates are never read) and masked out of every attention over tokens
(their softmax weight is exactly 0), which is what the code's attention masks do for its training queries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import nn

from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.configs import DinoEncoderConfig, PipelineConfig
from emseg_rt.models.vit import token_vit

POSITIVE, NEGATIVE, PADDING = 1, 0, -1


class DinoEncoder(nn.Module):
    """Grey uint8 windows → DINO ViT-S/8 patch tokens on their grid.

    timm's `VisionTransformer` (kept as `self.vit`, so DINO / timm checkpoints load by name) with DINO's
    RGB patch embedding: intensities are scaled to [0, 1], repeated to 3 channels and normalised with the
    ImageNet mean / std, as the Prompt-DAS code feeds its encoder. No class token (the code drops it); the
    position embedding covers the window's grid (a 224² DINO checkpoint's 28² table is resampled on load).
    """

    def __init__(self, config: DinoEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = token_vit(config, img_size=config.img_size, class_token=False)
        shape = (1, config.in_chans, 1, 1)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).reshape(shape), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).reshape(shape), persistent=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) uint8 → (B, 3, T, T) float32: (x / 255 − mean_c) / std_c, grey repeated to RGB."""
        scaled = tiles.to(torch.float32) / 255.0
        rgb = scaled.expand(-1, self.config.in_chans, -1, -1)
        return (rgb - self.pixel_mean) / self.pixel_std

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode a batch of windows.

        tiles:   (B, 1, T, T) uint8, raw EM intensities, T = img_size (384).
        returns  (B, embed_dim, T/8, T/8) float32 ((B, 384, 48, 48) at paper size).
        """
        tokens = self.vit.forward_features(self.normalise(tiles))  # (B, g², C), no prefix tokens
        g = self.config.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], g, g)


class PointPromptEncoder(nn.Module):
    """Padded point prompts → tokens, and the dense positional encoding of the image grid.

    Names follow segment_anything's `PromptEncoder` (`pe_layer`, `point_embeddings`, `not_a_point_embed`),
    which the Prompt-DAS code's prompt encoder also uses.
    """

    def __init__(self, embed_dim: int, grid: int, tile: int, label_embeddings: bool = True) -> None:
        super().__init__()
        self.grid = grid
        self.tile = tile
        self.label_embeddings = label_embeddings
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # index 0: negative point, 1: positive point (SAM's order)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(2)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

    @staticmethod
    def is_point(point_labels: torch.Tensor) -> torch.Tensor:
        """(B, P) int → (B, P) bool: True for a positive (1) or negative (0) point, False for padding."""
        return (point_labels == POSITIVE) | (point_labels == NEGATIVE)

    def forward(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the points of each tile.

        point_coords:  (B, P, 2) float pixel (x, y) in the tile; ignored where the label is padding.
        point_labels:  (B, P) int: 1 positive, 0 negative, anything else (−1) padding.
        returns        tokens (B, P, N) float32 (padding rows = `not_a_point_embed`) and is_point (B, P) bool.
        """
        is_point = self.is_point(point_labels)
        # Fourier features of the pixel centres, coordinates normalised by the tile side.
        tokens = self.pe_layer.forward_with_coords(point_coords.float() + 0.5, (self.tile, self.tile))
        if self.label_embeddings:
            positive = (point_labels == POSITIVE).unsqueeze(-1)
            tokens = tokens + torch.where(positive, self.point_embeddings[1].weight, self.point_embeddings[0].weight)
        return torch.where(is_point.unsqueeze(-1), tokens, self.not_a_point_embed.weight), is_point

    def dense_pe(self) -> torch.Tensor:
        """(1, N, g, g): the same Fourier encoding at every cell centre of the grid (SAM's `get_dense_pe`)."""
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0)


def masked_attention(
    attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None
) -> torch.Tensor:
    """segment_anything's `Attention.forward`, with the keys where `key_valid` (B, S) is False given
    weight exactly 0 (scores set to −inf before the softmax). Unmasked, it computes what SAM's does,
    operation for operation. q (B, L, C), k and v (B, S, C) → (B, L, C). `key_valid` may also be a
    per-query mask (B, L, S) (`PromptDasHead.forward_with_queries`); every row must allow some key."""
    q = attention._separate_heads(attention.q_proj(q), attention.num_heads)
    k = attention._separate_heads(attention.k_proj(k), attention.num_heads)
    v = attention._separate_heads(attention.v_proj(v), attention.num_heads)
    scores = q @ k.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(q.shape[-1])
    if key_valid is not None:
        mask = key_valid[:, None, None, :] if key_valid.dim() == 2 else key_valid[:, None, :, :]
        scores = torch.where(mask, scores, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return attention.out_proj(attention._recombine_heads(weights @ v))


def masked_two_way_block(
    block: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
    token_valid: torch.Tensor | None,
    token_attention: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything's `TwoWayAttentionBlock.forward` with padding tokens masked out wherever tokens
    are the keys (token self-attention, image-to-token attention). `token_attention` (B, S, S), if given,
    replaces `token_valid` in the token self-attention (row i: the tokens token i may attend to)."""
    self_mask = token_valid if token_attention is None else token_attention
    if block.skip_first_layer_pe:
        queries = masked_attention(block.self_attn, queries, queries, queries, self_mask)
    else:
        q = queries + query_pe
        queries = queries + masked_attention(block.self_attn, q, q, queries, self_mask)
    queries = block.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe
    queries = block.norm2(queries + block.cross_attn_token_to_image(q=q, k=k, v=keys))
    queries = block.norm3(queries + block.mlp(queries))
    q = queries + query_pe
    k = keys + key_pe
    keys = block.norm4(keys + masked_attention(block.cross_attn_image_to_token, k, q, queries, token_valid))
    return queries, keys


class MaskedTwoWayTransformer(TwoWayTransformer):
    """SAM's two-way transformer (same modules and state-dict keys) taking a token mask: a token whose
    `token_valid` is False is never attended to, so it changes neither the other tokens nor the image."""

    def forward(  # type: ignore[override]
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        token_valid: torch.Tensor | None = None,
        token_attention: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (B, N, h, w), image_pe (1 or B, N, h, w), point_embedding (B, S, N) tokens,
        token_valid (B, S) bool or None (all valid), token_attention (B, S, S) bool or None (= token_valid
        for every row): which tokens each token may attend to in the token self-attention.
        returns the processed tokens (B, S, N) and image embedding (B, h·w, N)."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = masked_two_way_block(layer, queries, keys, point_embedding, key_pe, token_valid,
                                                 token_attention)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys


class DensityHead(nn.Module):
    """Centre-point density from the decoder's upscaled embedding (the Prompt-DAS code's detection head):
    Conv3×3–GroupNorm–ReLU at 4× the grid, bilinear to the tile, Conv3×3–GroupNorm–ReLU–Conv1×1 → 1
    channel. The code trains the raw output by MSE against Gaussian-smoothed centre dots, and so do we; in
    eval mode (inference, export) we clamp it at 0 (a density is non-negative; peaks and their order are
    unchanged). Clamping in training too would kill the gradient wherever the output is negative: with
    sparse targets the head then collapses to 0 everywhere (it did, on phantoms: max 0.010 after 3000 steps)."""

    def __init__(self, in_chans: int, hidden: int, groups: int, tile: int) -> None:
        super().__init__()
        self.tile = tile
        self.before_upsampling = nn.Sequential(  # the code's decode_head1
            nn.Conv2d(in_chans, hidden, kernel_size=3, padding=1), nn.GroupNorm(groups, hidden), nn.ReLU()
        )
        self.after_upsampling = nn.Sequential(  # the code's decode_head2
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1), nn.GroupNorm(groups, hidden), nn.ReLU(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, upscaled: torch.Tensor) -> torch.Tensor:
        """upscaled (B, N/8, 4g, 4g) float → density (B, 1, T, T) float32 (≥ 0 in eval mode; raw in training)."""
        hidden = F.interpolate(
            self.before_upsampling(upscaled), size=(self.tile, self.tile), mode="bilinear", align_corners=False
        )
        density = self.after_upsampling(hidden)
        return density if self.training else torch.relu(density)


class PromptDasHead(nn.Module):
    """Everything after the encoder: point prompts → two-way decoder → segmentation and density heads."""

    extra_outputs = ("density",)  # besides logits and labels
    can_skip_logits = True  # forward(..., want_logits=False): labels only (emseg_rt.kernels.class_merge)

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        assert config.prompt_das is not None
        head = config.prompt_das
        n = config.prompt_dim
        self.point_encoder = PointPromptEncoder(n, config.grid, config.tile, head.label_embeddings)
        self.transformer = MaskedTwoWayTransformer(
            depth=head.transformer_depth, embedding_dim=n, mlp_dim=head.mlp_dim, num_heads=head.num_heads
        )
        self.mask_token = nn.Embedding(1, n)  # the only output token: no IoU token
        self.output_upscaling = nn.Sequential(  # SAM's MaskDecoder.output_upscaling
            nn.ConvTranspose2d(n, n // 4, kernel_size=2, stride=2),
            LayerNorm2d(n // 4),
            nn.GELU(),
            nn.ConvTranspose2d(n // 4, n // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.mask_hypernetwork = MLP(n, n, n // 8, 3)
        self.density_head = DensityHead(n // 8, head.density_hidden, head.density_groups, config.tile)
        self.class_merge = ClassMerge(config.tile, config.num_classes)

    def forward(
        self, dino_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
        want_density: bool = True, want_logits: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Segment each tile and estimate its centre-point density, guided by its points (M ≥ 0 of P).

        dino_embedding:  (B, N, g, g) float32
        point_coords:    (B, P, 2) float pixel (x, y) in the tile
        point_labels:    (B, P) int: 1 positive, 0 negative, −1 padding (M = 0: all padding)
        want_density:    False skips the density head (≈ 182 of the head's 189 GFLOP per 384² window);
                         the torch backend passes it when no caller asked for 'density'.
        want_logits:     False returns no logits (labels without building the tile-size logits).
        returns          logits (B, 1, T, T) float32 (mitochondria vs background; unless want_logits is
                         False), labels (B, T, T) uint8
                         (1 where the logit is > 0) and, with want_density, density (B, 1, T, T) float32 (≥ 0).
        """
        b, n, h, w = dino_embedding.shape
        prompt_tokens, is_point = self.point_encoder(point_coords, point_labels)
        tokens = torch.cat([self.mask_token.weight.unsqueeze(0).expand(b, -1, -1), prompt_tokens], dim=1)
        token_valid = torch.cat([is_point.new_ones((b, 1)), is_point], dim=1)
        hs, src = self.transformer(dino_embedding, self.point_encoder.dense_pe(), tokens, token_valid)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, n, h, w))  # (B, N/8, 4g, 4g)
        hyper_in = self.mask_hypernetwork(hs[:, 0, :])  # (B, N/8)
        up_ch, up_h, up_w = upscaled.shape[1:]
        low_res = (hyper_in.unsqueeze(1) @ upscaled.reshape(b, up_ch, up_h * up_w)).reshape(b, 1, up_h, up_w)
        out = self.class_merge(low_res, want_logits=want_logits)
        if want_density:
            out["density"] = self.density_head(upscaled)
        return out

    def forward_with_queries(
        self,
        dino_embedding: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        query_coords: torch.Tensor,
        query_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`forward`, plus decoder tokens for extra query points that cannot change it (training only).

        For Prompt-DAS's prompt-guided contrastive loss (§2, eq. 3: z = φ(f_D(f_P(p)))). The query points are
        encoded as positive points and appended to the tokens with DN-DETR's leakage-preventing attention
        mask: a query token attends to the mask token, the real prompts and itself, and nothing attends to
        it (neither the other tokens nor the image), so logits, labels and density equal `forward`'s.

        dino_embedding, point_coords, point_labels: as `forward`.
        query_coords:  (B, Q, 2) float pixel (x, y) in the tile.
        query_valid:   (B, Q) bool; False rows are padding (their tokens are meaningless).
        returns        forward's outputs plus prompt_tokens (B, P, N) and query_tokens (B, Q, N) float32:
                       the decoder's output tokens of the prompts and of the queries.
        """
        b, n, h, w = dino_embedding.shape
        p, q = point_labels.shape[1], query_valid.shape[1]
        prompt_tokens, is_point = self.point_encoder(point_coords, point_labels)
        query_labels = torch.where(query_valid, POSITIVE, PADDING)
        query_tokens, _ = self.point_encoder(query_coords, query_labels)
        mask_token = self.mask_token.weight.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([mask_token, prompt_tokens, query_tokens], dim=1)
        token_valid = torch.cat([is_point.new_ones((b, 1)), is_point, query_valid.new_zeros((b, q))], dim=1)
        is_query = torch.cat([query_valid.new_zeros((b, 1 + p)), query_valid], dim=1)
        itself = torch.eye(1 + p + q, dtype=torch.bool, device=tokens.device)
        token_attention = token_valid[:, None, :] | (itself[None] & is_query[:, :, None])  # (B, S, S)
        hs, src = self.transformer(dino_embedding, self.point_encoder.dense_pe(), tokens, token_valid,
                                   token_attention)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, n, h, w))
        hyper_in = self.mask_hypernetwork(hs[:, 0, :])
        up_ch, up_h, up_w = upscaled.shape[1:]
        low_res = (hyper_in.unsqueeze(1) @ upscaled.reshape(b, up_ch, up_h * up_w)).reshape(b, 1, up_h, up_w)
        out = self.class_merge(low_res)
        out["density"] = self.density_head(upscaled)
        out["prompt_tokens"] = hs[:, 1 : 1 + p]
        out["query_tokens"] = hs[:, 1 + p :]
        return out
