"""SAM2's mask decoder (high-resolution features, object-score token, sigmoid IoU, dynamic multimask
fallback) and the vanilla-SAM2 head: point/box prompts per class → decoder → class merge.

Parameter names follow the official checkpoint's `sam_mask_decoder.*` / `sam_prompt_encoder.*`. The
two-way transformer is segment_anything's `TwoWayTransformer` (SAM2 kept it unchanged apart from the name
of its MLP layers, `mlp.layers.0/1` for SAM's `mlp.lin1/lin2`, which the checkpoint loader maps).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.configs import MaskDecoderConfig, PipelineConfig, Sam2DecoderConfig
from emseg_rt.models.sam2_encoder import unpack_sam2_embedding
from emseg_rt.models.vanilla_sam_head import VanillaSamHead


def stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """mask_logits (R, 1, h, w) → (R, 1): area above +delta over area above −delta (1 where both are 0)."""
    inner = (mask_logits > delta).flatten(1).sum(-1, keepdim=True).float()
    outer = (mask_logits > -delta).flatten(1).sum(-1, keepdim=True).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1.0), torch.ones_like(outer))


class Sam2MaskDecoder(nn.Module):
    """SAM2's `MaskDecoder` for B images × Q prompts in one call (expand/reshape, no `repeat_interleave`),
    returning SAM2's single-mask output: token 0, or, where its stability score is below the threshold
    (`dynamic_multimask_via_stability`, on in SAM2's image predictor), the multimask output with the
    highest predicted IoU."""

    def __init__(self, dim: int, config: MaskDecoderConfig, sam2: Sam2DecoderConfig) -> None:
        super().__init__()
        self.sam2 = sam2
        self.transformer = TwoWayTransformer(depth=config.transformer_depth, embedding_dim=dim,
                                             mlp_dim=config.mlp_dim, num_heads=config.num_heads)
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        if sam2.pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
            # SAM2 uses the object score for video tracking only; kept so the official weights load whole.
            self.pred_obj_score_head = MLP(dim, dim, 1, 3) if sam2.pred_obj_scores_mlp else nn.Linear(dim, 1)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth,
                                       sigmoid_output=sam2.iou_prediction_use_sigmoid)

    def output_tokens(self) -> torch.Tensor:
        """(T, N): [object score,] IoU and mask tokens, in SAM2's order."""
        tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if self.sam2.pred_obj_scores:
            tokens.insert(0, self.obj_score_token.weight)
        return torch.cat(tokens, dim=0)

    def upscale(self, src: torch.Tensor, high_res_s0: torch.Tensor, high_res_s1: torch.Tensor) -> torch.Tensor:
        """src (R, N, G, G), high_res_s0 (R, N/8, 4G, 4G), high_res_s1 (R, N/4, 2G, 2G) → (R, N/8, 4G, 4G)."""
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        upscaled = act1(norm1(deconv1(src) + high_res_s1))
        return act2(deconv2(upscaled) + high_res_s0)

    def select_single_mask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """masks (R, M, h, w), iou (R, M) → the single-mask output (R, 1, h, w), (R, 1) (SAM2's
        `multimask_output=False`, with its dynamic fallback when configured)."""
        single, single_iou = masks[:, :1], iou[:, :1]
        if not self.sam2.dynamic_multimask_via_stability:
            return single, single_iou
        best = iou[:, 1:].argmax(dim=-1, keepdim=True)  # (R, 1); gather, not take_along_dim: that fixes R on export
        best_mask = masks[:, 1:].gather(1, best.reshape(-1, 1, 1, 1).expand(-1, 1, *masks.shape[2:]))
        best_iou = iou[:, 1:].gather(1, best)
        stable = stability_scores(single, self.sam2.dynamic_multimask_stability_delta)
        stable = stable >= self.sam2.dynamic_multimask_stability_thresh  # (R, 1)
        return torch.where(stable.reshape(-1, 1, 1, 1), single, best_mask), torch.where(stable, single_iou, best_iou)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_s0: torch.Tensor,
        high_res_s1: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode Q prompts per image.

        image_embeddings:          (B, N, G, G)
        image_pe:                  (1, N, G, G) dense positional encoding
        sparse_prompt_embeddings:  (B·Q, S, N), rows image-major (row b·Q + q)
        dense_prompt_embeddings:   (B·Q, N, G, G)
        high_res_s0, high_res_s1:  (B, N/8, 4G, 4G), (B, N/4, 2G, 2G), after `conv_s0` / `conv_s1`
        returns  low-res mask logits (B·Q, 1, 4G, 4G) and predicted IoU (B·Q, 1).
        """
        b, n_ch, h, w = image_embeddings.shape
        rows = sparse_prompt_embeddings.shape[0]
        queries = rows // b

        def per_prompt(image_feature: torch.Tensor) -> torch.Tensor:
            """(B, C, H, W) → (B·Q, C, H, W), each image repeated for its Q prompts."""
            return image_feature.unsqueeze(1).expand(b, queries, *image_feature.shape[1:]).reshape(
                rows, *image_feature.shape[1:])

        output_tokens = self.output_tokens()
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(rows, -1, -1), sparse_prompt_embeddings], dim=1)
        src = per_prompt(image_embeddings) + dense_prompt_embeddings
        hs, src = self.transformer(src, image_pe.expand(rows, -1, -1, -1), tokens)
        first = 1 if self.sam2.pred_obj_scores else 0
        mask_tokens = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]
        upscaled = self.upscale(src.transpose(1, 2).reshape(rows, n_ch, h, w), per_prompt(high_res_s0),
                                per_prompt(high_res_s1))
        hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        up_ch, up_h, up_w = upscaled.shape[1:]
        masks = (hyper_in @ upscaled.reshape(rows, up_ch, up_h * up_w)).reshape(rows, -1, up_h, up_w)
        return self.select_single_mask(masks, self.iou_prediction_head(hs[:, first, :]))


class VanillaSam2Head(VanillaSamHead):
    """SAM2's prompt encoder and mask decoder, one prompt set per class, decoded in one batched call.

    Prompts as `VanillaSamHead` (same padded arrays, same export-safe embedding of SAM's `PromptEncoder`,
    which SAM2 kept with the same weights); the one difference is SAM2's: its image predictor passes boxes
    as two corner points, so a padding point is appended with boxes too. Only the decoder differs.
    """

    def __init__(self, config: PipelineConfig) -> None:
        nn.Module.__init__(self)  # VanillaSamHead's own __init__ builds SAM's decoder for a SAM encoder
        assert config.sam2_encoder is not None and config.sam2_decoder is not None
        self.grid = config.grid
        self.img_size = config.sam2_encoder.img_size
        self.num_classes = config.num_classes
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_dim,
            image_embedding_size=(config.grid, config.grid),
            input_image_size=(self.img_size, self.img_size),
            mask_in_chans=16,  # sam2_base._build_sam_heads, as SAM
        )
        self.mask_decoder = Sam2MaskDecoder(config.prompt_dim, config.mask_decoder, config.sam2_decoder)
        self.class_merge = ClassMerge(config.tile, config.num_classes)

    def embed_prompts(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor, boxes: torch.Tensor | None
    ) -> torch.Tensor:
        """point_coords (R, P, 2), point_labels (R, P), boxes (R, 4) or None → sparse (R, S, N)."""
        sparse = super().embed_prompts(point_coords, point_labels, boxes)
        if boxes is None:
            return sparse  # already ends with one padding point
        padding = self.prompt_encoder.not_a_point_embed.weight.unsqueeze(0).expand(sparse.shape[0], 1, -1)
        return torch.cat([sparse, padding], dim=1)

    def forward(
        self,
        sam2_embedding: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: torch.Tensor | None = None,
        want_logits: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Segment each class from its prompts.

        sam2_embedding:  (B, 4N, G, G) packed SAM2 features (`sam2_encoder.pack_sam2_embedding`)
        point_coords:    (B, K, P, 2) float pixel (x, y) in the tile
        point_labels:    (B, K, P) int: 1 foreground, 0 background, -1 padding
        boxes:           (B, K, 4) float (x0, y0, x1, y1), negative = no box; or None
        want_logits:     False returns labels only (no tile-size logits are built).
        returns          logits (B, K, T, T) float32 (unless want_logits is False) and labels (B, T, T) uint8.
        """
        b, k, p = point_labels.shape
        rows = b * k
        embedding, high_res_s0, high_res_s1 = unpack_sam2_embedding(sam2_embedding)
        sparse = self.embed_prompts(point_coords.reshape(rows, p, 2), point_labels.reshape(rows, p),
                                    None if boxes is None else boxes.reshape(rows, 4))
        n_ch = embedding.shape[1]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, n_ch, 1, 1).expand(rows, n_ch, self.grid, self.grid)
        masks, _ = self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                     high_res_s0, high_res_s1)
        return self.class_merge(masks.reshape(b, k, masks.shape[-2], masks.shape[-1]), want_logits=want_logits)
