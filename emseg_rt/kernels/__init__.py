"""Hand-written kernels with torch references. Triton is imported only when a Triton kernel runs, so this
package imports on machines without triton (docs/kernels.md)."""

from emseg_rt.kernels.nearest_centroid import (
    nearest_centroid,
    nearest_centroid_naive,
    nearest_centroid_reference,
    nearest_centroid_triton,
    token_scores,
    triton_available,
)

__all__ = [
    "nearest_centroid",
    "nearest_centroid_naive",
    "nearest_centroid_reference",
    "nearest_centroid_triton",
    "token_scores",
    "triton_available",
]
