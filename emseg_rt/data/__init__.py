"""Synthetic FIB-SEM phantoms with ground truth (written as OME-Zarr through `emseg_rt.io`)."""

from emseg_rt.data.phantom import CLASS_NAMES, GROUND_TRUTH, Phantom, generate_phantom, write_phantom

__all__ = ["CLASS_NAMES", "GROUND_TRUTH", "Phantom", "generate_phantom", "write_phantom"]
