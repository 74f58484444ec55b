"""Class prompt encoder: learnable class prototypes → dense and sparse prompts for SAM's decoder.

ScSAM §3.3 (cosine similarity, eqs. 6–7, with an MLP residual) and SurgicalSAM (raw dot product).
For every image b and every target class k it produces the prompts SAM's decoder needs to segment k:

- similarity S (B, HW, K): cosine of L2-normalised V_f and prototypes (ScSAM eq. 6) or their raw dot
  product (SurgicalSAM);
- activation V_a,k = V_f · S_k + V_f (eq. 7), modulating the un-normalised V_f; ScSAM then adds an MLP
  residual V_a ← V_a + MLP(V_a);
- dense prompt of (b, k): 1×1 conv N→128, ReLU, 1×1 conv 128→N over V_a,k;
- sparse prompt of (b, k): every class j is pooled over the HW positions to n tokens by a learned
  position mixing (Conv1d HW→128→n), then a positive embedding is added to the tokens of j = k and a
  negative one to the others, giving K·n tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.configs import ClassPromptConfig


class ClassPromptEncoder(nn.Module):
    """Fused embedding V_f → per-(image, class) dense and sparse prompts."""

    def __init__(self, num_classes: int, prompt_dim: int, grid: int, config: ClassPromptConfig) -> None:
        super().__init__()
        if config.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {config.similarity!r}")
        self.config = config
        self.num_classes = num_classes
        self.tokens_per_class = config.tokens_per_class
        positions = grid * grid
        self.prototypes = nn.Parameter(torch.randn(num_classes, prompt_dim) * 0.02)
        self.residual_mlp = (
            nn.Sequential(
                nn.Linear(prompt_dim, config.residual_hidden), nn.ReLU(), nn.Linear(config.residual_hidden, prompt_dim)
            )
            if config.residual_mlp
            else None
        )
        self.dense_branch = nn.Sequential(
            nn.Conv2d(prompt_dim, config.dense_hidden, 1), nn.ReLU(), nn.Conv2d(config.dense_hidden, prompt_dim, 1)
        )
        self.sparse_pool_in = nn.Linear(positions, config.sparse_hidden)  # Conv1d(HW→128, k=1) over positions
        self.sparse_pool_out = nn.Linear(config.sparse_hidden, config.tokens_per_class)
        self.positive_embedding = nn.Parameter(torch.randn(config.tokens_per_class, prompt_dim) * 0.02)
        self.negative_embedding = nn.Parameter(torch.randn(config.tokens_per_class, prompt_dim) * 0.02)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, HW, N) → S (B, HW, K): cosine (eq. 6) or raw dot product."""
        prototypes = self.prototypes
        if self.config.similarity == "cosine":
            features = F.normalize(features, dim=-1)
            prototypes = F.normalize(prototypes, dim=-1)
        return features @ prototypes.t()

    def activate(self, fused: torch.Tensor) -> torch.Tensor:
        """fused V_f (B, N, H, W) → class-activated features V_a (B, K, HW, N) (eq. 7 + residual)."""
        features = fused.flatten(2).transpose(1, 2)  # (B, HW, N)
        sim = self.similarity(features).transpose(1, 2).unsqueeze(-1)  # (B, K, HW, 1)
        activated = features.unsqueeze(1) * sim + features.unsqueeze(1)
        if self.residual_mlp is not None:
            activated = activated + self.residual_mlp(activated)
        return activated

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts for every (image, class) pair, image-major.

        fused:   (B, N, H, W) float, V_f.
        returns  dense (B·K, N, H, W) and sparse (B·K, K·n, N), row b·K + k prompting class k of image b.
        """
        b, n_ch, h, w = fused.shape
        k, n = self.num_classes, self.tokens_per_class
        activated = self.activate(fused)  # (B, K, HW, N)
        dense = self.dense_branch(activated.transpose(2, 3).reshape(b * k, n_ch, h, w))
        pooled = self.sparse_pool_out(F.relu(self.sparse_pool_in(activated.transpose(2, 3))))  # (B, K, N, n)
        class_tokens = pooled.transpose(2, 3)  # (B, K_j, n, N)
        target = torch.eye(k, dtype=torch.bool, device=fused.device).reshape(k, k, 1, 1)  # [k_target, j]
        polarity = torch.where(target, self.positive_embedding, self.negative_embedding)  # (K, K, n, N)
        sparse = class_tokens.unsqueeze(1) + polarity.unsqueeze(0)  # (B, K_target, K_j, n, N)
        return dense, sparse.reshape(b * k, k * n, n_ch)


def class_embeddings(fused: torch.Tensor, class_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average of V_f over each class present in each image: the samples E_C of ScSAM eq. 8.

    fused:        (B, N, H, W) float.
    class_masks:  (B, K, H, W) {0,1} float, ground truth resized to the embedding grid.
    returns       embeddings (M, N) and their class indices (M,) int64, one row per (image, present class).
    """
    area = class_masks.sum(dim=(2, 3))  # (B, K)
    pooled = torch.einsum("bnhw,bkhw->bkn", fused, class_masks) / area.clamp(min=1.0).unsqueeze(-1)
    present = area > 0
    class_ids = torch.arange(class_masks.shape[1], device=fused.device).expand_as(present)
    return pooled[present], class_ids[present]


def ntxent_loss(
    prototypes: torch.Tensor, embeddings: torch.Tensor, class_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NT-Xent with prototypes as anchors (ScSAM eq. 8).

    For every sample i of class k the positive pair is (P_k, E_i); the negatives are the samples of
    other classes j:  −log( e^{s(P_k,E_i)/τ} / (e^{s(P_k,E_i)/τ} + Σ_{j: c_j≠k} e^{s(P_k,E_j)/τ}) ),
    s the cosine similarity, averaged over all samples (0 when there are none).

    prototypes (K, N), embeddings (M, N), class_ids (M,) int64 → scalar.
    """
    if embeddings.shape[0] == 0:
        return prototypes.sum() * 0.0
    sim = F.normalize(prototypes, dim=-1) @ F.normalize(embeddings, dim=-1).t() / temperature  # (K, M)
    anchor_sim = sim[class_ids]  # (M_i, M_j): row i uses the anchor of sample i's class
    positive = anchor_sim.diagonal()
    negative_mask = class_ids.unsqueeze(0) != class_ids.unsqueeze(1)
    negatives = anchor_sim.masked_fill(~negative_mask, float("-inf"))
    denominator = torch.logsumexp(torch.cat([positive.unsqueeze(1), negatives], dim=1), dim=1)
    return (denominator - positive).mean()
