"""Feature Alignment and Fusion Module (ScSAM §3.2, eqs. 2–5) and its cosine alignment loss (eq. 3).

Widths the paper leaves open, chosen here and kept in `FafmConfig`:
- alignment MLPs: Linear(C_in → hidden) – ReLU – Linear(hidden → N), hidden = N = 256;
- fusion branch: Conv3×3(2N → N/2) – GroupNorm – ReLU – Conv3×3(N/2 → N/2) – GroupNorm – ReLU – CAM,
  giving V_c with N/2 channels (eq. 4);
- auxiliary stream on the aligned SAM embedding: Conv(k×k, N → N/2) – CAM (eq. 5, k = 1 by default);
- CAM: CBAM channel attention, shared MLP C → C/16 → C over global average and max pooling, sigmoid.
V_f = Concat(V_c, aux) has N channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.configs import AlignmentConfig, FafmConfig


class AlignmentMlp(nn.Module):
    """Ê = L1(ReLU(L2(E))) applied at every position (ScSAM eq. 2)."""

    def __init__(self, in_dim: int, out_dim: int, config: AlignmentConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(in_dim, config.hidden_dim)  # L2
        self.fc_out = nn.Linear(config.hidden_dim, out_dim)  # L1

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding (B, C_in, H, W) → (B, N, H, W)."""
        channels_last = embedding.permute(0, 2, 3, 1)
        projected = self.fc_out(F.relu(self.fc_in(channels_last)))
        return projected.permute(0, 3, 1, 2)


class ChannelAttention(nn.Module):
    """CBAM channel attention: x · σ(MLP(avgpool x) + MLP(maxpool x))."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, C, H, W) → (B, C, H, W), channels re-weighted."""
        avg = features.mean(dim=(2, 3), keepdim=True)
        peak = features.amax(dim=(2, 3), keepdim=True)
        weights = torch.sigmoid(self.mlp(avg) + self.mlp(peak))
        return features * weights


def _conv_gn_relu(in_ch: int, out_ch: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(),
    )


class Fafm(nn.Module):
    """Align the SAM and MAE embeddings to N channels and fuse them into V_f."""

    def __init__(self, sam_dim: int, mae_dim: int, prompt_dim: int, config: FafmConfig) -> None:
        super().__init__()
        if prompt_dim % 2:
            raise ValueError(f"FAFM needs an even prompt_dim, got {prompt_dim}")
        half = prompt_dim // 2
        groups = min(config.gn_groups, half)
        self.align_sam = AlignmentMlp(sam_dim, prompt_dim, config.alignment)
        self.align_mae = AlignmentMlp(mae_dim, prompt_dim, config.alignment)
        self.fusion = nn.Sequential(
            _conv_gn_relu(2 * prompt_dim, half, 3, groups),
            _conv_gn_relu(half, half, 3, groups),
        )
        self.fusion_attention = ChannelAttention(half, config.cam_reduction)
        self.aux = nn.Conv2d(prompt_dim, half, config.aux_kernel_size, padding=config.aux_kernel_size // 2)
        self.aux_attention = ChannelAttention(half, config.cam_reduction)

    def align(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_s, H, W), (B, C_m, H, W) → aligned Ê_S, Ê_M, each (B, N, H, W) (eq. 2)."""
        return self.align_sam(sam_embedding), self.align_mae(mae_embedding)

    def fuse(self, aligned_sam: torch.Tensor, aligned_mae: torch.Tensor) -> torch.Tensor:
        """Ê_S, Ê_M (B, N, H, W) → V_f (B, N, H, W) (eqs. 4–5)."""
        fused = self.fusion_attention(self.fusion(torch.cat([aligned_mae, aligned_sam], dim=1)))
        aux = self.aux_attention(self.aux(aligned_sam))
        return torch.cat([fused, aux], dim=1)

    def forward(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> torch.Tensor:
        """sam_embedding (B, C_s, H, W), mae_embedding (B, C_m, H, W) → V_f (B, N, H, W)."""
        return self.fuse(*self.align(sam_embedding, mae_embedding))


def cosine_alignment_loss(aligned_sam: torch.Tensor, aligned_mae: torch.Tensor) -> torch.Tensor:
    """ScSAM eq. 3: 1 − mean over positions of cos(Ê_S,i, Ê_M,i).

    aligned_sam, aligned_mae: (B, N, H, W) → scalar.
    """
    return 1.0 - F.cosine_similarity(aligned_sam, aligned_mae, dim=1, eps=1e-8).mean()
