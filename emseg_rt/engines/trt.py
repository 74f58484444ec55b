"""The TensorRT flavours: which exist, what each can target, importing one with a one-line error."""

from __future__ import annotations

import importlib
from types import ModuleType

from emseg_rt.errors import EmsegError

FLAVOURS = ("tensorrt-rtx", "tensorrt")  # as named in --engine-backend and in the manifest's engine records
FLAVOUR_MODULES = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
FLAVOUR_INSTALL = {
    "tensorrt-rtx": "pip install tensorrt-rtx",
    "tensorrt": "pip install tensorrt (from NVIDIA's package index)",
}
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")  # TensorRT-RTX 1.x ComputeCapability; no sm90


def import_flavour(flavour: str) -> ModuleType:
    """The TensorRT module of `flavour`; EmsegError for an unknown flavour or one that is not installed."""
    if flavour not in FLAVOUR_MODULES:
        raise EmsegError(f"--engine-backend {flavour!r}: choose one of {', '.join(FLAVOUR_MODULES)}")
    try:
        return importlib.import_module(FLAVOUR_MODULES[flavour])
    except ImportError:
        raise EmsegError(f"--engine-backend {flavour}: not installed; {FLAVOUR_INSTALL[flavour]}") from None


def flavour_version(module: ModuleType) -> str:
    """The version string a TensorRT module reports (recorded with every engine it builds)."""
    return str(getattr(module, "__version__", "unknown"))


def installed_version(flavour: str) -> str | None:
    """Version of the installed `flavour`, None when it is not installed (or does not import)."""
    try:
        return flavour_version(import_flavour(flavour))
    except EmsegError:
        return None
    except Exception:  # noqa: BLE001  an installed wheel whose native libraries fail to load
        return None
