"""Hand-written kernels with torch references. The package imports on machines without triton (each Triton
module's `launch` then raises ImportError and `impl="auto"` takes the references; docs/kernels.md).

Modules: `dispatch` (which implementation runs), one module per kernel (`class_merge`, `nearest_centroid`,
`rel_pos_attention`: reference, Triton launch, custom operator, entry point), `_*_triton` (the Triton code).
"""

from emseg_rt.kernels.class_merge import class_merge_labels, class_merge_reference, class_merge_triton
from emseg_rt.kernels.dispatch import triton_available
from emseg_rt.kernels.nearest_centroid import (
    nearest_centroid,
    nearest_centroid_naive,
    nearest_centroid_reference,
    nearest_centroid_triton,
    token_scores,
)
from emseg_rt.kernels.rel_pos_attention import (
    rel_pos_attention,
    rel_pos_attention_reference,
    rel_pos_attention_triton,
)

__all__ = [
    "class_merge_labels",
    "class_merge_reference",
    "class_merge_triton",
    "nearest_centroid",
    "nearest_centroid_naive",
    "nearest_centroid_reference",
    "nearest_centroid_triton",
    "rel_pos_attention",
    "rel_pos_attention_reference",
    "rel_pos_attention_triton",
    "token_scores",
    "triton_available",
]
