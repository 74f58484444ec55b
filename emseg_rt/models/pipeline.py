"""A segmentation pipeline = named encoders + one head; the per-slice graph every family shares."""

from __future__ import annotations

import torch
from torch import nn

from emseg_rt.constants import POINT_PROMPTED_FAMILIES
from emseg_rt.models.class_prompted_head import ClassPromptedHead
from emseg_rt.models.cluster_head import ClusterHead
from emseg_rt.models.configs import PipelineConfig
from emseg_rt.models.fov_encoder import FovEncoder
from emseg_rt.models.mae_encoder import MaeImageEncoder
from emseg_rt.models.pixel_refine import PixelEncoder
from emseg_rt.models.prompt_das import DinoEncoder, PromptDasHead
from emseg_rt.models.sam2_decoder import VanillaSam2Head
from emseg_rt.models.sam2_encoder import Sam2ImageEncoder
from emseg_rt.models.sam_encoder import SamImageEncoder
from emseg_rt.models.samda import samda_parts
from emseg_rt.models.vanilla_sam_head import VanillaSamHead

POINT_PROMPTED = POINT_PROMPTED_FAMILIES  # families whose forward takes point prompts
PER_CLASS_PROMPTED = ("vanilla-sam", "vanilla-sam2")  # point prompts per class: (B, K, P, 2), (B, K, P)


def embedding_name(encoder_name: str) -> str:
    """'sam_encoder' → 'sam_embedding': the head's keyword for that encoder's output."""
    return encoder_name.removesuffix("_encoder") + "_embedding"


class SegmentationPipeline(nn.Module):
    """uint8 tiles → class logits and labels, as encoders (`self.encoders`) and a head (`self.head`).

    The split is the export split: each encoder and the head become a component of the model package,
    and `forward` is the whole per-slice graph. Heads take the encoders' embeddings by keyword
    (`sam_embedding`, `mae_embedding`, `dino_embedding`) plus any prompts.
    """

    def __init__(self, config: PipelineConfig, encoders: dict[str, nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict(encoders)
        self.head = head

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Extra forward inputs besides the tiles (empty for prompt-free pipelines)."""
        return ("point_coords", "point_labels") if self.config.family in POINT_PROMPTED else ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Outputs of `forward`: logits and labels, then any the head adds (prompt-das: 'density')."""
        return ("logits", "labels", *getattr(self.head, "extra_outputs", ()))

    @property
    def can_skip_logits(self) -> bool:
        """Whether `forward(..., want_logits=False)` computes labels only (the clustering head and every head
        that ends in a ClassMerge do: emseg_rt.kernels.class_merge)."""
        return bool(getattr(self.head, "can_skip_logits", False))

    def embed(self, tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        """tiles (B, 1, T, T) uint8 → {'sam_embedding': (B, C_s, H, W), 'mae_embedding': (B, C_m, H, W), ...};
        with a pixel refinement also 'pixel_embedding' (B, W, T, T)."""
        return {embedding_name(name): encoder(tiles) for name, encoder in self.encoders.items()}

    def forward(self, tiles: torch.Tensor, **prompts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment a batch of tiles.

        tiles:    (B, 1, T, T) uint8, raw EM intensities.
        prompts:  vanilla-sam(2): point_coords (B, K, P, 2), point_labels (B, K, P), boxes (B, K, 4);
                  prompt-das: point_coords (B, P, 2) float32, point_labels (B, P) int64 (−1 = padding);
                  want_logits=False where `can_skip_logits` (then only labels are returned);
                  want_<name>=False for a head's extra output it may skip (prompt-das: want_density).
        returns   logits (B, K, T, T) float32 and labels (B, T, T) uint8 (0 = background);
                  prompt-das also density (B, 1, T, T) float32.
        """
        return self.head(**self.embed(tiles), **prompts)

    def example_inputs(self, batch: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes and dtypes: 'tiles' plus any prompts."""
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        inputs = {"tiles": torch.randint(0, 256, (batch, 1, cfg.tile, cfg.tile), generator=gen, dtype=torch.uint8)}
        if cfg.family in PER_CLASS_PROMPTED:
            k, p = cfg.num_classes, cfg.max_points
            inputs["point_coords"] = torch.rand(batch, k, p, 2, generator=gen) * cfg.tile
            labels = torch.randint(0, 2, (batch, k, p), generator=gen)
            labels[..., -1] = -1  # last point is padding
            inputs["point_labels"] = labels
        if cfg.family == "prompt-das":  # M real points per tile, 0 ≤ M < P, the rest padding
            p = cfg.max_points
            inputs["point_coords"] = torch.rand(batch, p, 2, generator=gen) * cfg.tile
            labels = torch.randint(0, 2, (batch, p), generator=gen)
            real = torch.randint(0, p, (batch, 1), generator=gen)
            inputs["point_labels"] = torch.where(torch.arange(p) < real, labels, -1)
        return {name: tensor.to(device) for name, tensor in inputs.items()}


def build_pipeline(config: PipelineConfig) -> SegmentationPipeline:
    """Assemble the modules a pipeline config describes (random weights)."""
    encoders: dict[str, nn.Module] = {}
    if config.samda is not None:  # samda: z-scored tile + frozen SAM-type encoder → projector + U-Net
        return SegmentationPipeline(config, *samda_parts(config))
    if config.dino_encoder is not None:  # prompt-das: DINO ViT-S/8 + point prompts + decoder + density head
        if config.dino_encoder.embed_dim != config.prompt_dim:
            raise ValueError(f"{config.name}: encoder width {config.dino_encoder.embed_dim} != decoder width "
                             f"{config.prompt_dim} (Prompt-DAS has no projection between them)")
        if config.num_classes != 1:
            raise ValueError(f"{config.name}: Prompt-DAS segments one class, got {config.classes}")
        return SegmentationPipeline(config, {"dino_encoder": DinoEncoder(config.dino_encoder)}, PromptDasHead(config))
    if config.sam2_encoder is not None:  # vanilla-sam2: SAM2's Hiera + FPN, its prompt encoder and decoder
        return SegmentationPipeline(config, {"sam2_encoder": Sam2ImageEncoder(config.sam2_encoder)},
                                    VanillaSam2Head(config))
    if config.fov_encoder is not None:  # maester / his4mae: one FOV encoder + fixed cluster centres
        return SegmentationPipeline(config, {"fov_encoder": FovEncoder(config.fov_encoder)}, ClusterHead(config))
    if config.sam_encoder is not None:
        encoders["sam_encoder"] = SamImageEncoder(config.sam_encoder)
    if config.mae_encoder is not None:
        encoders["mae_encoder"] = MaeImageEncoder(config.mae_encoder)
    if config.sam_encoder is not None and config.mae_encoder is not None:
        if config.sam_encoder.grid != config.mae_encoder.grid:
            raise ValueError(f"{config.name}: SAM grid {config.sam_encoder.grid} != MAE grid {config.mae_encoder.grid}")
    if config.pixel_refine is not None:
        if config.family == "vanilla-sam":
            raise ValueError(f"{config.name}: pixel_refine needs a class-prompted head")
        encoders["pixel_encoder"] = PixelEncoder(config.pixel_refine)
    head: nn.Module = VanillaSamHead(config) if config.family == "vanilla-sam" else ClassPromptedHead(config)
    return SegmentationPipeline(config, encoders, head)
