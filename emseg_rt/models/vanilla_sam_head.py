"""Vanilla SAM after the encoder: point/box prompts per class → SAM decoder → class merge."""

from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder
from torch import nn

from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.configs import PipelineConfig
from emseg_rt.models.mask_decoder import BatchedMaskDecoder


class VanillaSamHead(nn.Module):
    """SAM's prompt encoder and mask decoder, one prompt set per class, decoded in one batched call.

    Prompts are padded arrays so that the graph is static: `point_labels` is 1 (foreground),
    0 (background) or -1 (padding); a box whose coordinates are negative is absent. Without boxes a
    single padding point is appended, as SAM's own `PromptEncoder` does. Point embedding reuses the
    weights of segment_anything's `PromptEncoder` (kept as `self.prompt_encoder`) but selects with
    `torch.where` instead of boolean-mask assignment, so it exports.
    """

    can_skip_logits = True  # forward(..., want_logits=False): labels only (emseg_rt.kernels.class_merge)

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        assert config.sam_encoder is not None
        self.grid = config.grid
        self.img_size = config.sam_encoder.img_size
        self.num_classes = config.num_classes
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_dim,
            image_embedding_size=(config.grid, config.grid),
            input_image_size=(self.img_size, self.img_size),
            mask_in_chans=16,
        )
        self.mask_decoder = BatchedMaskDecoder(config.prompt_dim, config.mask_decoder)
        self.class_merge = ClassMerge(config.tile, config.num_classes)

    def _embed_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """(R, P, 2) pixel (x, y) → (R, P, N) random-Fourier encoding of pixel centres."""
        return self.prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, (self.img_size, self.img_size))

    def embed_prompts(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor, boxes: torch.Tensor | None
    ) -> torch.Tensor:
        """point_coords (R, P, 2), point_labels (R, P), boxes (R, 4) or None → sparse (R, S, N)."""
        pe = self.prompt_encoder
        rows = point_coords.shape[0]
        labels = point_labels.unsqueeze(-1)
        not_a_point = pe.not_a_point_embed.weight  # (1, N)
        label_embedding = torch.where(labels == 1, pe.point_embeddings[1].weight, pe.point_embeddings[0].weight)
        points = torch.where(labels == -1, not_a_point, self._embed_coords(point_coords.float()) + label_embedding)
        if boxes is None:
            padding = not_a_point.unsqueeze(0).expand(rows, 1, -1)
            return torch.cat([points, padding], dim=1)
        corners = self._embed_coords(boxes.float().reshape(rows, 2, 2))
        corner_types = torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight], dim=0)
        absent = (boxes < 0).any(dim=-1).reshape(rows, 1, 1)
        corners = torch.where(absent, not_a_point, corners + corner_types)
        return torch.cat([points, corners], dim=1)

    def forward(
        self,
        sam_embedding: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: torch.Tensor | None = None,
        want_logits: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Segment each class from its prompts.

        sam_embedding:  (B, N, H, W)
        point_coords:   (B, K, P, 2) float pixel (x, y) in the tile
        point_labels:   (B, K, P) int: 1 foreground, 0 background, -1 padding
        boxes:          (B, K, 4) float (x0, y0, x1, y1), negative = no box; or None
        want_logits:    False returns labels only (no tile-size logits are built).
        returns         logits (B, K, T, T) float32 (unless want_logits is False) and labels (B, T, T) uint8.
        """
        b, k, p = point_labels.shape
        rows = b * k
        sparse = self.embed_prompts(
            point_coords.reshape(rows, p, 2),
            point_labels.reshape(rows, p),
            None if boxes is None else boxes.reshape(rows, 4),
        )
        n_ch = sam_embedding.shape[1]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, n_ch, 1, 1).expand(rows, n_ch, self.grid, self.grid)
        image_pe = self.prompt_encoder.get_dense_pe()
        masks, _ = self.mask_decoder(sam_embedding, image_pe, sparse, dense)
        return self.class_merge(masks.reshape(b, k, masks.shape[-2], masks.shape[-1]), want_logits=want_logits)
