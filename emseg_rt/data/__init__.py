"""Synthetic FIB-SEM phantoms with ground truth, and the OME-Zarr reading/writing they need."""

from emseg_rt.data.phantom import CLASS_NAMES, Phantom, generate_phantom

__all__ = ["CLASS_NAMES", "Phantom", "generate_phantom"]
