"""Frozen configurations of every model component, with the papers' numbers as defaults.

A pipeline config is a tree of these; the registry (`registry.py`) maps names to pipeline configs, and
the same `build(name)` call builds a tiny test model and a paper-size one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emseg_rt.constants import DEFAULT_CLASSES  # ScSAM §4.1 (BetaSeg), labels 1, 2, 3

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM build_sam / Sam.pixel_mean
SAM_PIXEL_STD = (58.395, 57.12, 57.375)  # SAM build_sam / Sam.pixel_std
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # Prompt-DAS code (build_data.py): ImageNet normalisation, as DINO
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SamEncoderConfig:
    """SAM's ViT image encoder (segment_anything.modeling.ImageEncoderViT)."""

    img_size: int = 1024  # SAM build_sam
    patch_size: int = 16  # SAM build_sam
    embed_dim: int = 1280  # SAM build_sam vit_h
    depth: int = 32  # SAM build_sam vit_h
    num_heads: int = 16  # SAM build_sam vit_h
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)  # SAM build_sam vit_h
    window_size: int = 14  # SAM build_sam
    mlp_ratio: float = 4.0  # SAM build_sam
    out_chans: int = 256  # SAM build_sam prompt_embed_dim
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    @property
    def grid(self) -> int:
        """Side of the embedding grid (64 for a 1024² input)."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class MaeEncoderConfig:
    """ScSAM's MAE encoder: a timm VisionTransformer over 4×4 tiles of a slice (ScSAM supp. §1.1)."""

    field_of_view: int = 256  # ScSAM §4.2: FOV 256×256
    patch_size: int = 16  # ScSAM §4.2
    tiles_per_side: int = 4  # ScSAM supp. §1.1: a 1024² slice is cut into 4×4 tiles of 256²
    embed_dim: int = 512  # ScSAM §4.2: embedding 64×64×512
    depth: int = 12  # not published; DESIGN.md default
    num_heads: int = 8  # not published; DESIGN.md default
    mlp_ratio: float = 4.0  # MAE / timm default
    in_chans: int = 1  # grey EM
    # Per-tile normalisation constants on intensities scaled to [0, 1]; set them to the pretraining's.
    pixel_mean: float = 0.5
    pixel_std: float = 0.25

    @property
    def tile_grid(self) -> int:
        """Tokens per side of one tile (16 for a 256² tile with patch 16)."""
        return self.field_of_view // self.patch_size

    @property
    def grid(self) -> int:
        """Side of the stitched embedding grid (64 for a 1024² slice)."""
        return self.tile_grid * self.tiles_per_side

    @property
    def img_size(self) -> int:
        """Side of the slice the encoder takes."""
        return self.field_of_view * self.tiles_per_side


@dataclass(frozen=True)
class FovEncoderConfig:
    """MAESTER's / HiS4MAE's encoder: a timm ViT over one small field of view (FOV) of a slice.

    MAESTER (Xie et al. 2023, DESIGN.md §2) and HiS4MAE (Table 1, §3.1) use the same shape: FOV 80, patch 5,
    192 dims, 14 layers, 1 head, MLP ratio 2, one grey channel.
    """

    field_of_view: int = 80  # HiS4MAE §3.1: FOV 80×80, as MAESTER
    patch_size: int = 5  # MAESTER config
    embed_dim: int = 192  # HiS4MAE Table 1
    depth: int = 14  # MAESTER config
    num_heads: int = 1  # MAESTER config
    mlp_ratio: float = 2.0  # MAESTER config
    in_chans: int = 1  # grey EM
    pixel_mean: float = 0.5  # not published: intensities scaled to [0, 1], then (x − mean) / std
    pixel_std: float = 0.25

    @property
    def grid(self) -> int:
        """Tokens per side of one FOV (16 for FOV 80, patch 5)."""
        return self.field_of_view // self.patch_size


@dataclass(frozen=True)
class DinoEncoderConfig:
    """Prompt-DAS's image encoder: a DINO ViT-S/8 (timm `VisionTransformer`) over one 384² window.

    Prompt-DAS §3 (implementation details): "pre-trained ViT-S/8 with DINO"; its code drops the class token
    and feeds the 48×48 patch tokens (384 dims) straight to the decoder, with no neck.
    """

    img_size: int = 384  # Prompt-DAS code: sliding window 384, stride 128 (DESIGN.md §2)
    patch_size: int = 8  # Prompt-DAS §3: ViT-S/8
    embed_dim: int = 384  # DINO vit_small
    depth: int = 12  # DINO vit_small
    num_heads: int = 6  # DINO vit_small
    mlp_ratio: float = 4.0  # DINO vit_small
    in_chans: int = 3  # DINO checkpoints have an RGB patch embedding: grey EM is repeated to 3 channels
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # on intensities scaled to [0, 1]
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    @property
    def grid(self) -> int:
        """Side of the patch-token grid (48 for a 384² window with patch 8)."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class PromptDasHeadConfig:
    """Prompt-DAS's point prompt encoder, two-way decoder and its two heads (Prompt-DAS §2, Fig. 1).

    The decoder width is the pipeline's `prompt_dim`, equal to the encoder's width (384 at paper size: the
    code's `prompt_embed_dim = 384` for ViT-S, no projection to SAM's 256).
    """

    transformer_depth: int = 2  # Prompt-DAS code (build.py), as SAM
    mlp_dim: int = 2048  # Prompt-DAS code (build.py), as SAM
    num_heads: int = 8  # Prompt-DAS code (build.py), as SAM
    density_hidden: int = 256  # Prompt-DAS code: detection head conv widths (C/8 → 256 → 256 → 1)
    density_groups: int = 8  # Prompt-DAS code: GroupNorm(8, 256) in the detection head
    # Ours: a learned embedding per point label (positive / negative) added to the Fourier encoding, as SAM.
    # The paper's prompt encoder is "a standard positional embedding" (all prompts are positive centre
    # points); set False to run that encoder (e.g. with weights trained by the Prompt-DAS code).
    label_embeddings: bool = True


@dataclass(frozen=True)
class ClusterHeadConfig:
    """Fixed cluster centres on interpolated patch tokens (HiS4MAE §3.3) and their classes.

    clusters: K centres (K-means, `emseg-rt cluster fit`). The default K = classes + 1 (the paper's four
              categories nucleus, mitochondria, granules, unrecognised, matched one-to-one by the Hungarian
              algorithm); a fitted checkpoint may carry any K ≥ 1 and the head takes its size on load.
    """

    clusters: int | None = None  # None: num_classes + 1


@dataclass(frozen=True)
class MaskedPretrainConfig:
    """Masked-image-modelling pretraining of a FOV encoder (MAESTER; HiS4MAE eqs. 2–6, Tables 1–2).

    kind: 'maester' (MAE: masked reconstruction only) or 'his4mae' (+ EMA teacher and discrete codebook).
    """

    kind: str = "his4mae"
    decoder_embed_dim: int = 128  # MAESTER config
    decoder_depth: int = 7  # MAESTER config
    decoder_num_heads: int = 8  # MAESTER config
    mask_ratio: float = 0.5  # MAESTER config
    codebook_size: int = 512  # HiS4MAE Table 1: k
    alpha: float = 1e-3  # HiS4MAE Table 1: weight of L_tea (eq. 5)
    beta: float = 2.5e-4  # HiS4MAE Table 1: weight of L_stu, 0.25 α (VQ-VAE)
    gamma: float = 0.8  # HiS4MAE Table 1: isolated-code update rate (eq. 6)
    ema_momentum: float = 0.996  # not published: SdAE/BYOL-style teacher EMA
    lr: float = 5e-4  # HiS4MAE Table 2
    min_lr: float = 8e-7  # HiS4MAE Table 2
    batch_size: int = 256  # HiS4MAE Table 2
    samples_per_epoch: int = 20000  # HiS4MAE Table 2: sample number
    epochs: int = 2800  # HiS4MAE Table 2
    warmup_epochs: int = 40  # not published
    weight_decay: float = 0.05  # not published: MAE default


@dataclass(frozen=True)
class AlignmentConfig:
    """Two-layer MLP projection Linear–ReLU–Linear to the prompt width (ScSAM eq. 2)."""

    hidden_dim: int = 256  # not published: equal to the output width


@dataclass(frozen=True)
class FafmConfig:
    """Feature Alignment and Fusion Module (ScSAM §3.2, eqs. 2–5). Widths the paper leaves open are ours."""

    alignment: AlignmentConfig = AlignmentConfig()
    gn_groups: int = 32  # not published: GroupNorm groups of the fusion convs
    cam_reduction: int = 16  # CBAM [32] default reduction ratio
    aux_kernel_size: int = 1  # not published: "lightweight auxiliary stream"


@dataclass(frozen=True)
class ClassPromptConfig:
    """Class prompt encoder (ScSAM §3.3, SurgicalSAM)."""

    similarity: str = "cosine"  # "cosine" (ScSAM eqs. 6–7) or "dot" (SurgicalSAM)
    residual_mlp: bool = True  # ScSAM's MLP residual after activation (supp. §2.2); SurgicalSAM has none
    tokens_per_class: int = 2  # n sparse tokens per class (SurgicalSAM default)
    dense_hidden: int = 128  # SurgicalSAM dense branch 256→128→256
    sparse_hidden: int = 128  # SurgicalSAM sparse branch 4096→128→n
    residual_hidden: int = 128  # not published: width of the residual MLP
    ntxent_temperature: float = 0.07  # not published: NT-Xent τ (pytorch-metric-learning default)


@dataclass(frozen=True)
class MaskDecoderConfig:
    """SAM's two-way transformer mask decoder (segment_anything build_sam)."""

    transformer_depth: int = 2  # SAM build_sam
    mlp_dim: int = 2048  # SAM build_sam
    num_heads: int = 8  # SAM build_sam
    num_multimask_outputs: int = 3  # SAM build_sam
    iou_head_depth: int = 3  # SAM build_sam
    iou_head_hidden_dim: int = 256  # SAM build_sam


@dataclass(frozen=True)
class Sam2EncoderConfig:
    """SAM2's image encoder: a Hiera trunk + FPN neck (sam2.modeling.backbones), defaults SAM2.1 hiera_b+.

    The trunk patch-embeds at stride 4 and halves the grid at each of its 3 later stages; the neck keeps
    levels 0–2 (strides 4, 8, 16; `scalp: 1` drops stride 32), and the stride-16 level is the embedding.
    """

    img_size: int = 1024  # sam2.1_hiera_*.yaml image_size
    embed_dim: int = 112  # sam2.1_hiera_b+.yaml trunk.embed_dim
    num_heads: int = 2  # sam2.1_hiera_b+.yaml trunk.num_heads
    stages: tuple[int, ...] = (2, 3, 16, 3)  # sam2 Hiera default (b+)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)  # sam2 Hiera default (b+)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # sam2 Hiera default (b+)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)  # sam2 Hiera default (b+)
    q_pool: int = 3  # sam2 Hiera default: stages that start with a 2×2 query pooling
    q_stride: int = 2  # sam2 Hiera default
    dim_mul: float = 2.0  # sam2 Hiera default
    head_mul: float = 2.0  # sam2 Hiera default
    mlp_ratio: float = 4.0  # sam2 MultiScaleBlock default
    patch_kernel: int = 7  # sam2 PatchEmbed: 7×7 conv, stride 4, padding 3
    patch_stride: int = 4  # sam2 PatchEmbed
    d_model: int = 256  # sam2.1_hiera_*.yaml neck.d_model (= the decoder width)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)  # sam2.1_hiera_*.yaml neck.fpn_top_down_levels
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN  # sam2 SAM2Transforms: ImageNet mean × 255
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD  # sam2 SAM2Transforms: ImageNet std × 255

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Trunk widths per stage, finest first (the neck's `backbone_channel_list` reversed)."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))

    @property
    def grid(self) -> int:
        """Side of the stride-16 embedding grid (64 for a 1024² input)."""
        return self.img_size // (self.patch_stride * self.q_stride ** 2)


@dataclass(frozen=True)
class Sam2DecoderConfig:
    """What SAM2's mask decoder adds to SAM's (sam2.modeling.sam.mask_decoder, SAM2.1 configs); the shared
    numbers (two-way transformer, IoU head) are the pipeline's `mask_decoder`."""

    pred_obj_scores: bool = True  # sam2.1_hiera_*.yaml: an object-score token joins the output tokens
    pred_obj_scores_mlp: bool = True  # sam2.1_hiera_*.yaml
    iou_prediction_use_sigmoid: bool = True  # sam2.1_hiera_*.yaml
    dynamic_multimask_via_stability: bool = True  # sam2 build_sam2(apply_postprocessing=True)
    dynamic_multimask_stability_delta: float = 0.05  # sam2 build_sam2
    dynamic_multimask_stability_thresh: float = 0.98  # sam2 build_sam2


@dataclass(frozen=True)
class TinyVitEncoderConfig:
    """MobileSAM's image encoder: TinyViT-5M (timm `TinyVit` trunk) + SAM's neck, at 1024² (MobileSAM
    `build_sam_vit_t`). MobileSAM's last patch merging keeps the resolution (stride 1), so the embedding is
    (B, 256, 64, 64) as SAM's."""

    img_size: int = 1024  # MobileSAM build_sam_vit_t
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)  # MobileSAM build_sam_vit_t (TinyViT-5M)
    depths: tuple[int, ...] = (2, 2, 6, 2)  # MobileSAM build_sam_vit_t
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # MobileSAM build_sam_vit_t
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)  # MobileSAM build_sam_vit_t
    mlp_ratio: float = 4.0  # MobileSAM build_sam_vit_t
    mbconv_expand_ratio: float = 4.0  # MobileSAM build_sam_vit_t
    local_conv_size: int = 3  # MobileSAM build_sam_vit_t
    last_merge_stride: int = 1  # MobileSAM tiny_vit_sam.PatchMerging: stride 1 into the 320-dim stage
    out_chans: int = 256  # MobileSAM neck: Conv1x1 → LayerNorm2d → Conv3x3 → LayerNorm2d, 256 channels
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN  # MobileSAM's Sam: SAM's pixel mean / std
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    @property
    def grid(self) -> int:
        """Side of the embedding grid (64 at 1024²): patch embedding /4, one /2 per merge, the last /stride."""
        return self.img_size // 4 // 2 ** (len(self.depths) - 2) // self.last_merge_stride


@dataclass(frozen=True)
class UNetConfig:
    """nnU-Net's 2D `PlainConvUNet` (dynamic-network-architectures) with nnU-Net's 2D defaults (SAMDA §2.1)."""

    n_stages: int = 8  # SAMDA §2.1: encoder stages E1..E8, decoder D1..D7
    base_features: int = 32  # nnU-Net: features per stage min(32·2^i, 512)
    max_features: int = 512  # nnU-Net 2D: feature cap
    kernel_size: int = 3  # nnU-Net: 3×3 convolutions
    convs_per_stage: int = 2  # nnU-Net PlainConvUNet: 2 convs per encoder and decoder stage
    norm_eps: float = 1e-5  # nnU-Net: InstanceNorm2d(eps 1e-5, affine), LeakyReLU(0.01)

    @property
    def features(self) -> tuple[int, ...]:
        return tuple(min(self.base_features * 2**i, self.max_features) for i in range(self.n_stages))

    def bottleneck(self, tile: int) -> int:
        """Side of the deepest stage's feature map (E8) for a tile of side `tile` (stride 2 per stage after E1)."""
        return tile // 2 ** (self.n_stages - 1)


@dataclass(frozen=True)
class SamdaConfig:
    """SAMDA (§2.1): nnU-Net's 2D U-Net ("expert") + a frozen SAM-type encoder and a three-convolution
    projector ("generic") whose output is concatenated with the deepest encoder stage (E8) before the decoder.

    The generic encoder is the pipeline's `sam_encoder` (SAM / MedSAM ViT) or `tiny_vit` (MobileSAM).
    """

    unet: UNetConfig = UNetConfig()
    projector_channels: int = 256  # not published: width of the projector's three convs and of its output
    # Ours: stride-2 convs take SAM's 64² grid to the 8² bottleneck of 8 stages at 1024² (3 halvings, 3 convs).
    projector_strides: tuple[int, int, int] = (2, 2, 2)
    tiny_vit: TinyVitEncoderConfig | None = None  # samda-mobilesam: MobileSAM's TinyViT instead of a SAM ViT


@dataclass(frozen=True)
class PixelRefineConfig:
    """Ours (issue 27), not in any seed paper: a refinement of the class logits at the tile's full resolution,
    from the tile's own pixels. SAM's decoder sees only the embedding grid (one token per patch), so object
    outlines come from bilinear upsampling; a `pixel_encoder` (two 3×3 convolutions on the tile) gives each
    pixel `width` features, and the head adds to the upsampled logits a residual computed from those features
    and the logits (three 3×3 convolutions, the middle one dilated 2, the last initialised to zero: a new
    refinement starts as the identity)."""

    width: int = 16  # ours: the features per pixel and the refinement's width


@dataclass(frozen=True)
class PipelineConfig:
    """One registry entry: which encoders, which head, and the widths that tie them together.

    family:      "vanilla-sam", "sam-star", "mae-star", "surgicalsam", "scsam", "maester", "his4mae" or
                 "prompt-das"
    prompt_dim:  N, the width of the decoder's tokens and embeddings (256 in SAM and ScSAM).
    tile:        side of the square uint8 tile the pipeline takes.
    reference_window: the uint8 values at the 0.5 and 99.5 percentiles of the training data, onto which
                 `segment` maps the same percentiles of a non-uint8 volume (`runtime.normalise`); None: 0..255.
    """

    name: str
    family: str
    size: str
    tile: int
    prompt_dim: int = 256  # SAM prompt_embed_dim; ScSAM §4.2 prototype dimension 256
    classes: tuple[str, ...] = DEFAULT_CLASSES
    sam_encoder: SamEncoderConfig | None = None
    mae_encoder: MaeEncoderConfig | None = None
    fafm: FafmConfig | None = None
    class_prompt: ClassPromptConfig | None = None
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    max_points: int = 4  # vanilla-sam: padded point prompts per class; prompt-das: per window
    fov_encoder: FovEncoderConfig | None = None  # maester / his4mae
    cluster_head: ClusterHeadConfig | None = None  # maester / his4mae
    pretrain: MaskedPretrainConfig | None = None  # maester / his4mae: `emseg-rt pretrain`
    dino_encoder: DinoEncoderConfig | None = None  # prompt-das
    prompt_das: PromptDasHeadConfig | None = None  # prompt-das
    sam2_encoder: Sam2EncoderConfig | None = None  # vanilla-sam2
    sam2_decoder: Sam2DecoderConfig | None = None  # vanilla-sam2
    samda: SamdaConfig | None = None  # samda: U-Net + projector (+ MobileSAM encoder)
    pixel_refine: PixelRefineConfig | None = None  # ours: full-resolution logits from the tile's pixels
    reference_window: tuple[float, float] | None = None  # uint8 p0.5, p99.5 of the training data, when known
    description: str = ""

    @property
    def num_clusters(self) -> int:
        """K cluster centres of a clustering head (num_classes + 1 unless the config says otherwise)."""
        head = self.cluster_head or ClusterHeadConfig()
        return head.clusters if head.clusters is not None else self.num_classes + 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def grid(self) -> int:
        """Side of the embedding grid every encoder of this pipeline produces."""
        if self.sam_encoder is not None:
            return self.sam_encoder.grid
        if self.sam2_encoder is not None:
            return self.sam2_encoder.grid
        if self.samda is not None and self.samda.tiny_vit is not None:
            return self.samda.tiny_vit.grid
        if self.fov_encoder is not None:
            return self.fov_encoder.grid
        if self.dino_encoder is not None:
            return self.dino_encoder.grid
        assert self.mae_encoder is not None
        return self.mae_encoder.grid
