"""The official checkpoints emseg-rt's families load, by name: where each is published, its size and its sha256.

`emseg-rt weights list` prints this table; `emseg-rt weights fetch NAME` and `--checkpoint NAME` download an entry
into the cache and verify it (`emseg_rt.weights.fetch`).

Where the facts come from. Meta publishes SAM, SAM 2.1 and DINO checkpoints at dl.fbaipublicfiles.com with no
checksum and no byte size (segment-anything's README and sam2's checkpoints/download_ckpts.sh give URLs only; the
SAM file names carry the first 6 hex digits of each file's md5, not of its sha256). The sha256 and sizes below
are therefore the records of tools that download these files and check them, each cited per entry as
`repository path @ commit` (read in the stored public code index); Zenodo publishes an md5 for MedSAM, kept as
`md5` and checked too. Nothing here was computed by us: we had no network to download the files.

Left out, because no full sha256 could be found in any source: DINO ViT-S/8 (dino_deitsmall8_pretrain.pth; the
only published digest is a 6-digit torch.hub prefix, 230cd5) and nnU-Net (SAMDA's nnU-Net is trained per data
set; no public checkpoint). Their files still load through `--checkpoint PATH`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from emseg_rt.errors import EmsegError

MICRO_SAM = "computational-cell-analytics/micro-sam micro_sam/util.py @00006fc6 (pooch registry: sha256)"
COMPRESSAI_VISION = "InterDigitalInc/CompressAI-Vision scripts/install.sh @8aed5139 (WEIGHTS: sha256, url)"
SAMJ_SAM2 = "segment-anything-models-java/SAMJ src/main/java/ai/nets/samj/install/Sam2EnvManager.java @0619132d " \
            "(SAM2_1_BYTE_SIZES_MAP: size)"
SAMJ_SAM = "segment-anything-models-java/SAMJ src/main/java/ai/nets/samj/install/SamEnvManager.java @26330ab5 " \
           "(SAM_BYTE_SIZE = 375042383, commented there as SAM Huge's but the ViT-B file's size other records give)"
SAM2_URLS = "facebookresearch/sam2 checkpoints/download_ckpts.sh (092824 URLs)"
SAM_URLS = "facebookresearch/segment-anything README.md (checkpoint URLs)"
SAM_SIZES = "size: independent download records in public code (e.g. a models_info table with size and sha256 " \
            "of sam_vit_*); Meta publishes none"

SAM_FAMILY_MODELS = ("vanilla-sam", "sam-star", "surgicalsam", "scsam")  # the families built on SAM's encoder


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint file.

    name:    what `--checkpoint NAME` and `emseg-rt weights fetch NAME` take.
    family:  the publisher's model (SAM, SAM 2.1, MedSAM, MobileSAM).
    url:     the publisher's download address.
    size:    bytes; sha256: hex digest of the whole file; md5: the publisher's own checksum where it gives one.
    models:  the emseg-rt registry models whose `--checkpoint` takes this file (tests/test_weights_fetch.py checks
             each exists); empty where no emseg-rt model has this size yet.
    source:  where url, size and sha256 were read.
    """

    name: str
    family: str
    url: str
    size: int
    sha256: str
    models: tuple[str, ...]
    source: str
    md5: str | None = None

    @property
    def filename(self) -> str:
        """The file's name in the publisher's URL (and in the cache, and under a mirror's base URL)."""
        return PurePosixPath(urlparse(self.url).path).name


def _sam_models(size: str) -> tuple[str, ...]:
    return tuple(f"{family}-{size}" for family in SAM_FAMILY_MODELS)


_ENTRIES = (
    OfficialWeights("sam-vit-h", "SAM", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
                    2564550879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                    _sam_models("vit-h"), f"url: {SAM_URLS}; sha256: {MICRO_SAM}, {COMPRESSAI_VISION}; {SAM_SIZES}"),
    OfficialWeights("sam-vit-l", "SAM", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
                    1249524607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                    (), f"url: {SAM_URLS}; sha256: {MICRO_SAM}; {SAM_SIZES}"),
    OfficialWeights("sam-vit-b", "SAM", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                    375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                    (*_sam_models("vit-b"), "samda-vit-b"), f"url: {SAM_URLS}; sha256: {MICRO_SAM}; size: {SAMJ_SAM}"),
    OfficialWeights("sam2.1-hiera-large", "SAM 2.1",
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
                    898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
                    ("vanilla-sam2-hiera-l",), f"url: {SAM2_URLS}; sha256: {COMPRESSAI_VISION}; size: {SAMJ_SAM2}"),
    OfficialWeights("sam2.1-hiera-base-plus", "SAM 2.1",
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
                    323606802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
                    ("vanilla-sam2-hiera-b+",), f"url: {SAM2_URLS}; sha256: {COMPRESSAI_VISION}; size: {SAMJ_SAM2}"),
    OfficialWeights("sam2.1-hiera-small", "SAM 2.1",
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
                    184416285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
                    (), f"url: {SAM2_URLS}; sha256: {COMPRESSAI_VISION}; size: {SAMJ_SAM2}"),
    OfficialWeights("sam2.1-hiera-tiny", "SAM 2.1",
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
                    156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
                    (), f"url: {SAM2_URLS}; sha256: {COMPRESSAI_VISION}; size: {SAMJ_SAM2}"),
    OfficialWeights("medsam-vit-b", "MedSAM", "https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
                    375049145, "34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
                    ("samda-vit-b",),
                    "url, md5: Zenodo record 10689643 (bowang-lab/MedSAM README links it); size: "
                    "segment-anything-models-java/SAMJ src/main/java/ai/nets/samj/install/MedSamEnvManager.java "
                    "@2378d688 (MEDSAM_BYTE_SIZE); sha256: independent download records in public code (several agree)",
                    md5="3bb6db55bd0c9ca30b61248bca72f8d6"),
    OfficialWeights("mobilesam-vit-t", "MobileSAM",
                    "https://github.com/ChaoningZhang/MobileSAM/raw/f706ad9c4eb7f219c00d9050e46328518ffb65d2/weights/"
                    "mobile_sam.pt",
                    40728226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
                    ("samda-mobilesam",),
                    f"url: ChaoningZhang/MobileSAM weights/mobile_sam.pt @f706ad9c; sha256: {MICRO_SAM} (vit_t); "
                    "size: independent download records in public code (several agree)"),
)

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {entry.name: entry for entry in _ENTRIES}


def official_weights(name: str) -> OfficialWeights:
    """The registry entry called `name`; EmsegError naming the known names otherwise."""
    try:
        return OFFICIAL_WEIGHTS[name]
    except KeyError:
        raise EmsegError(f"{name!r} is not an official weights name; known: {', '.join(OFFICIAL_WEIGHTS)} "
                         "(emseg-rt weights list)") from None
