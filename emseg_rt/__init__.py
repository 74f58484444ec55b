"""emseg-rt: fast, dependable organelle segmentation of large EM volumes with SAM/MAE-based models."""

from emseg_rt.errors import EmsegError

__version__ = "0.1.0"

__all__ = ["EmsegError", "__version__"]
