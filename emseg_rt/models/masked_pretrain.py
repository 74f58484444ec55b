"""Masked-image-modelling pretraining of the FOV encoder: MAESTER (MAE) and HiS4MAE (MAE + EMA teacher + codebook).

HiS4MAE §3.2, eqs. 2–6 (MAESTER is the same without the teacher and the codebook):

- L_recon (eq. 2): MSE between the decoder's pixels and the FOV's normalised pixels (`FovEncoder.normalise`,
  (x / 255 − mean) / std), on the masked patches only (MAE). Pixels are NOT re-normalised per patch (MAE's
  `norm_pix_loss` is off): the target is the same normalised intensity the encoder sees.
- L_tea (eq. 3): MSE(Z_tea, Z_q), Z_tea the teacher's tokens of the FULL (unmasked) FOV, Z_q their nearest
  codebook vectors (squared Euclidean distance). The teacher has no gradient, so this term moves the codebook.
- L_stu (eq. 4): 1 − cos(Z_q, Z_stu), mean over the visible tokens, each student token against the Z_q at the
  same grid position. Z_q is detached here (VQ-VAE's commitment term: the student moves towards the codes,
  the codes do not move towards the student), so the codebook learns from L_tea only.
- total (eq. 5): L_recon + α·L_tea + β·L_stu.
- eq. 6, after every epoch (`refresh_isolated_codes`): every code no teacher token chose during the epoch is
  pulled towards a used code drawn with probability proportional to its usage:
  Z_iso ← γ·Z_used + (1 − γ)·Z_iso.

The teacher is a deep copy of the student, updated after every optimiser step by EMA (`update_teacher`):
teacher ← m·teacher + (1 − m)·student. Only the student is used for inference (HiS4MAE §3.3).

This module knows nothing of files, volumes or the CLI; `emseg_rt.training.pretrain` runs it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emseg_rt.models.configs import FovEncoderConfig, MaskedPretrainConfig, PipelineConfig
from emseg_rt.models.fov_encoder import FovEncoder
from emseg_rt.models.timm_parts import Block, build_sincos2d_pos_embed

KINDS = ("maester", "his4mae")


@dataclass
class PretrainLoss:
    """The loss terms of one batch (eq. 5); `tea` and `stu` are 0 for MAESTER."""

    total: torch.Tensor
    recon: torch.Tensor
    tea: torch.Tensor
    stu: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "recon", "tea", "stu")}


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, F, F) → (B, g², p²·C), g = F / p: row-major patches (timm's token order), pixels (p, p, C) inside.

    This is MAE's `patchify`: the decoder's output for token i is compared with patch i of this.
    """
    b, c, f, _ = pixels.shape
    g, p = f // patch_size, patch_size
    patches = pixels.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # (B, g, g, p, p, C)
    return patches.reshape(b, g * g, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, in_chans: int = 1) -> torch.Tensor:
    """(B, g², p²·C) → (B, C, F, F); the inverse of `patchify` (e.g. to look at reconstructions)."""
    b, n, _ = patches.shape
    g, p = int(round(n**0.5)), patch_size
    pixels = patches.reshape(b, g, g, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)
    return pixels.reshape(b, in_chans, g * p, g * p)


def random_masking(
    batch: int, tokens: int, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking, drawn on the CPU from `generator` (or torch's global RNG).

    returns keep (B, n) int64 indices of the visible tokens (n = round(N·(1 − mask_ratio)), at least 1),
            restore (B, N) int64 (the permutation that puts [visible, masked] back in grid order), and
            mask (B, N) float32, 1 = masked, in grid order.
    """
    visible = max(1, int(round(tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, tokens, generator=generator)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(batch, tokens)
    mask[:, :visible] = 0.0
    return shuffle[:, :visible], restore, torch.gather(mask, 1, restore)


class PixelDecoder(nn.Module):
    """MAE's light decoder: visible tokens + mask tokens → pixels of every patch.

    Linear embed_dim → decoder_embed_dim, a learned mask token, fixed 2D sin-cos position embeddings (MAE),
    `decoder_depth` timm Blocks (MLP ratio of the encoder, as MAE/MAESTER), LayerNorm, Linear → p²·in_chans.
    """

    def __init__(self, encoder: FovEncoderConfig, pretrain: MaskedPretrainConfig) -> None:
        super().__init__()
        width = pretrain.decoder_embed_dim
        self.embed = nn.Linear(encoder.embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        grid = encoder.grid
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([grid, grid], dim=width)[None], persistent=False)
        self.blocks = nn.Sequential(*[
            Block(width, pretrain.decoder_num_heads, mlp_ratio=encoder.mlp_ratio, qkv_bias=True)
            for _ in range(pretrain.decoder_depth)
        ])
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, encoder.patch_size**2 * encoder.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's initialisation: mask token N(0, 0.02²), Linear xavier-uniform with zero bias, LayerNorm 1/0."""
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, visible: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch.

        visible: (B, n, embed_dim) float32, the encoder's tokens of the kept patches (in `keep` order).
        restore: (B, N) int64 from `random_masking`, N = g².
        returns  (B, N, p²·in_chans) float32 predicted normalised pixels, patches in grid order.
        """
        tokens = self.embed(visible)  # (B, n, D)
        b, n, width = tokens.shape
        masked = self.mask_token.expand(b, restore.shape[1] - n, width)
        tokens = torch.cat([tokens, masked], dim=1)  # [visible, masked] in shuffled order
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, width))  # grid order
        return self.pred(self.norm(self.blocks(tokens + self.pos_embed)))


class MaskedPretrainer(nn.Module):
    """Student (the pipeline's own `FovEncoder`), decoder, and for HiS4MAE the EMA teacher and the codebook.

    config:  the pipeline's config; `config.fov_encoder` and `config.pretrain` must be set.
    student: the pipeline's FOV encoder instance (`pipeline.encoders["fov_encoder"]`): training updates the
             very module inference uses.
    Buffers: `code_usage` (codebook_size,) int64, how many teacher tokens chose each code since the last
    `refresh_isolated_codes` (counted in training mode only).
    """

    def __init__(self, config: PipelineConfig, student: FovEncoder) -> None:
        super().__init__()
        if config.fov_encoder is None or config.pretrain is None:
            raise ValueError(f"{config.name} has no FOV encoder or no pretraining config")
        if config.pretrain.kind not in KINDS:
            raise ValueError(f"pretrain kind must be one of {KINDS}, got {config.pretrain.kind!r}")
        self.encoder_config = config.fov_encoder
        self.settings = config.pretrain
        self.student = student
        self.decoder = PixelDecoder(config.fov_encoder, config.pretrain)
        self.teacher: FovEncoder | None = None
        self.codebook: nn.Embedding | None = None
        if self.settings.kind == "his4mae":
            self.teacher = copy.deepcopy(student)
            self.teacher.requires_grad_(False)
            self.codebook = nn.Embedding(self.settings.codebook_size, config.fov_encoder.embed_dim)
            self.register_buffer("code_usage", torch.zeros(self.settings.codebook_size, dtype=torch.int64))

    def forward(self, tiles: torch.Tensor, generator: torch.Generator | None = None) -> PretrainLoss:
        """The loss of one batch of FOVs (eq. 5; eq. 2 only for MAESTER).

        tiles:     (B, 1, F, F) uint8 FOVs (F = field_of_view), on the student's device.
        generator: CPU torch.Generator for the masks (torch's global RNG when None).
        returns    PretrainLoss of scalar tensors.
        """
        pixels = self.student.normalise(tiles)  # (B, 1, F, F) float32
        target = patchify(pixels, self.encoder_config.patch_size)  # (B, N, p²)
        keep, restore, mask = (t.to(tiles.device) for t in random_masking(
            tiles.shape[0], target.shape[1], self.settings.mask_ratio, generator))
        visible = self.student.encode(pixels, keep=keep)  # (B, n, C)
        predicted = self.decoder(visible, restore)  # (B, N, p²)
        recon = (((predicted - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()  # eq. 2, masked patches
        zero = recon.new_zeros(())
        if self.teacher is None:
            return PretrainLoss(total=recon, recon=recon, tea=zero, stu=zero)
        tea, stu = self.distillation_losses(pixels, visible, keep)
        total = recon + self.settings.alpha * tea + self.settings.beta * stu
        return PretrainLoss(total=total, recon=recon, tea=tea, stu=stu)

    def distillation_losses(
        self, pixels: torch.Tensor, visible: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_tea (eq. 3) and L_stu (eq. 4) of one batch; counts code usage in training mode.

        pixels:  (B, 1, F, F) float32 normalised FOVs (the teacher sees all of them, unmasked).
        visible: (B, n, C) float32 student tokens of the kept patches.
        keep:    (B, n) int64 their grid indices.
        returns  (L_tea, L_stu) scalars.
        """
        assert self.teacher is not None and self.codebook is not None
        with torch.no_grad():
            teacher_tokens = self.teacher.encode(pixels)  # (B, N, C)
            codes = self.nearest_codes(teacher_tokens)  # (B, N)
        if self.training:
            self.code_usage += torch.bincount(codes.flatten(), minlength=self.code_usage.numel())
        quantised = self.codebook(codes)  # (B, N, C) Z_q, gradient into the codebook
        tea = F.mse_loss(quantised, teacher_tokens)
        quantised_visible = torch.gather(quantised.detach(), 1, keep[..., None].expand(-1, -1, quantised.shape[-1]))
        stu = (1.0 - F.cosine_similarity(quantised_visible, visible, dim=-1)).mean()
        return tea, stu

    def nearest_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) float → (B, N) int64 index of the nearest codebook vector (squared Euclidean; ties → lowest)."""
        assert self.codebook is not None
        codebook = self.codebook.weight  # (k, C)
        distances = (tokens.pow(2).sum(-1, keepdim=True) - 2.0 * tokens @ codebook.T
                     + codebook.pow(2).sum(-1))  # (B, N, k)
        return distances.argmin(dim=-1)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA after an optimiser step: every teacher tensor ← m·teacher + (1 − m)·student (m = ema_momentum)."""
        if self.teacher is None:
            return
        m = self.settings.ema_momentum
        student = self.student.state_dict()
        for name, value in self.teacher.state_dict().items():
            if value.is_floating_point():
                value.copy_(m * value + (1.0 - m) * student[name])
            else:
                value.copy_(student[name])

    @torch.no_grad()
    def refresh_isolated_codes(self, generator: torch.Generator | None = None) -> int:
        """Eq. 6 at the end of an epoch; returns how many isolated codes were moved, and resets the usage counts.

        Each code with zero usage moves towards a used code drawn (CPU `generator`, with replacement) with
        probability proportional to usage: Z_iso ← γ·Z_used + (1 − γ)·Z_iso. Used codes do not move.
        Nothing moves when no code was used (no batch since the last refresh).
        """
        if self.codebook is None:
            return 0
        usage = self.code_usage.cpu()
        isolated = torch.nonzero(usage == 0).flatten()
        refreshed = 0
        if 0 < isolated.numel() < usage.numel():
            chosen = torch.multinomial(usage.double(), isolated.numel(), replacement=True, generator=generator)
            weight = self.codebook.weight
            isolated, chosen = isolated.to(weight.device), chosen.to(weight.device)
            gamma = self.settings.gamma
            weight[isolated] = gamma * weight[chosen] + (1.0 - gamma) * weight[isolated]
            refreshed = int(isolated.numel())
        self.code_usage.zero_()
        return refreshed
