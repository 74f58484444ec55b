"""Import the TensorRT flavour a user asked for, with one-line errors when it is not installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from emseg_rt.errors import EmsegError

FLAVOUR_MODULES = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
FLAVOUR_INSTALL = {
    "tensorrt-rtx": "pip install tensorrt-rtx",
    "tensorrt": "pip install tensorrt (from NVIDIA's package index)",
}


def import_flavour(flavour: str) -> ModuleType:
    if flavour not in FLAVOUR_MODULES:
        raise EmsegError(f"--engine-backend {flavour!r}: choose one of {', '.join(FLAVOUR_MODULES)}")
    try:
        return importlib.import_module(FLAVOUR_MODULES[flavour])
    except ImportError:
        raise EmsegError(f"--engine-backend {flavour}: not installed; {FLAVOUR_INSTALL[flavour]}") from None


def flavour_version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "unknown"))
