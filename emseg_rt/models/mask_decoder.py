"""SAM's mask decoder behind an export-safe wrapper that decodes every (image, prompt) pair in one call."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn

from emseg_rt.models.configs import MaskDecoderConfig


class BatchedMaskDecoder(nn.Module):
    """segment_anything's `MaskDecoder` (kept as `self.decoder`, so `mask_decoder.*` keys load) run
    without `repeat_interleave`: each image embedding is broadcast to its Q prompts by expand + reshape,
    which TensorRT's ONNX parser accepts. Only the single-mask output is computed (SAM's
    `multimask_output=False`), so three of the four hypernetwork MLPs are skipped.
    """

    def __init__(self, prompt_dim: int, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.decoder = MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.transformer_depth,
                embedding_dim=prompt_dim,
                mlp_dim=config.mlp_dim,
                num_heads=config.num_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode Q prompts per image.

        image_embeddings:          (B, N, H, W)
        image_pe:                  (1, N, H, W) dense positional encoding
        sparse_prompt_embeddings:  (B·Q, S, N), rows image-major (row b·Q + q)
        dense_prompt_embeddings:   (B·Q, N, H, W)
        returns  low-res mask logits (B·Q, 1, 4H, 4W) and predicted IoU (B·Q, 1).
        """
        decoder = self.decoder
        b, n_ch, h, w = image_embeddings.shape
        rows = sparse_prompt_embeddings.shape[0]
        queries = rows // b
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(rows, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings.unsqueeze(1).expand(b, queries, n_ch, h, w).reshape(rows, n_ch, h, w)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(rows, -1, -1, -1)
        hs, src = decoder.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        first_mask_token = hs[:, 1, :]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(rows, n_ch, h, w))
        hyper_in = decoder.output_hypernetworks_mlps[0](first_mask_token)  # (B·Q, C')
        up_ch, up_h, up_w = upscaled.shape[1:]
        masks = (hyper_in.unsqueeze(1) @ upscaled.reshape(rows, up_ch, up_h * up_w)).reshape(rows, 1, up_h, up_w)
        iou_pred = decoder.iou_prediction_head(iou_token_out)[:, :1]
        return masks, iou_pred
