"""ScSAM's training loss (eq. 9): L = λ·L_cos + L_NTX + L_Dice, λ = 0.2.

L_cos (eq. 3) and L_NTX (eq. 8) come from the model modules; the Dice loss is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.class_prompt_encoder import class_embeddings, ntxent_loss
from emseg_rt.models.fafm import cosine_alignment_loss

COS_WEIGHT = 0.2  # ScSAM eq. 9: λ


def one_hot_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels (B, H, W) integer, 0 = background → class masks (B, K, H, W) float32 for classes 1..K."""
    classes = torch.arange(1, num_classes + 1, device=labels.device).view(1, -1, 1, 1)
    return (labels.unsqueeze(1).long() == classes).float()


def dice_loss(logits: torch.Tensor, class_masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over sigmoid class probabilities, pooled over the batch, averaged over classes.

    logits (B, K, H, W) float, class_masks (B, K, H, W) {0,1} → scalar
    1 − mean_k (2·Σ p·g + ε) / (Σ p + Σ g + ε), sums over batch and pixels (a class absent from the whole
    batch then asks for all-zero probabilities instead of giving 0/0).
    """
    probs = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    intersection = (probs * class_masks).sum(dims)
    total = probs.sum(dims) + class_masks.sum(dims)
    return 1.0 - ((2.0 * intersection + eps) / (total + eps)).mean()


@dataclass
class LossTerms:
    total: torch.Tensor
    cos: torch.Tensor
    ntx: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "cos", "ntx", "dice", "bce")}


def scsam_loss(
    head: nn.Module,
    embeddings: dict[str, torch.Tensor],
    labels: torch.Tensor,
    cos_weight: float = COS_WEIGHT,
    bce_weight: float = 0.0,
) -> LossTerms:
    """ScSAM eq. 9 for a class-prompted head with FAFM fusion, on one batch.

    head:        a ClassPromptedHead (`.fusion.fafm`, `.class_prompt_encoder`, `.low_res_logits`); with a
                 pixel refiner the Dice and BCE terms are summed over the decoder's and the refined logits.
    embeddings:  sam_embedding (B, C_s, H, W), mae_embedding (B, C_m, H, W) [, pixel_embedding (B, W, T, T)].
    labels:      (B, T, T) integer ground truth, 0 = background, k = class k.
    bce_weight:  an extra per-pixel binary cross-entropy term (0 = the paper's loss exactly).
    returns      LossTerms (total and each term).
    """
    num_classes = head.num_classes
    fafm = head.fusion.fafm
    aligned_sam, aligned_mae = fafm.align(embeddings["sam_embedding"], embeddings["mae_embedding"])
    fused = fafm.fuse(aligned_sam, aligned_mae)
    cos = cosine_alignment_loss(aligned_sam, aligned_mae)
    masks = one_hot_classes(labels, num_classes)
    # Soft coverage of each grid cell: a granule smaller than a cell still contributes its share.
    grid_masks = F.adaptive_avg_pool2d(masks, fused.shape[-2:])
    class_emb, class_ids = class_embeddings(fused, grid_masks)
    encoder = head.class_prompt_encoder
    ntx = ntxent_loss(encoder.prototypes, class_emb, class_ids, encoder.config.ntxent_temperature)
    low_res = head.low_res_logits(fused)
    logits = F.interpolate(low_res, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    dice, bce = _mask_terms(logits, masks, bce_weight)
    if getattr(head, "refiner", None) is not None:  # a pixel refinement: the same terms on its logits too
        refined = head.refiner(embeddings["pixel_embedding"], logits)  # logits: already at the tile's size
        refined_dice, refined_bce = _mask_terms(refined, masks, bce_weight)
        dice, bce = dice + refined_dice, bce + refined_bce
    total = cos_weight * cos + ntx + dice + bce_weight * bce
    return LossTerms(total=total, cos=cos, ntx=ntx, dice=dice, bce=bce)


def _mask_terms(logits: torch.Tensor, masks: torch.Tensor, bce_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Dice loss, BCE) of logits (B, K, T, T) against class masks (B, K, T, T); BCE is 0 when not weighted."""
    bce = F.binary_cross_entropy_with_logits(logits, masks) if bce_weight > 0 else logits.sum() * 0.0
    return dice_loss(logits, masks), bce
