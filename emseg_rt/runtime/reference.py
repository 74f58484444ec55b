"""Which reference window a run's normalisation maps onto: the model's, found before the model is loaded.

A model's reference window is the pair of uint8 values at the 0.5 and 99.5 percentiles of its training data
(`PipelineConfig.reference_window`; an exported package records it in its manifest under
`input.normalisation.reference_window`). `runtime.normalise` maps the same percentiles of a non-uint8 volume
onto it, so that 16-bit and float data reach the model with the intensities it was trained on.
"""

from __future__ import annotations

from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.export.bioimageio import is_bioimageio_zip, open_bioimageio
from emseg_rt.models import get_config
from emseg_rt.models.default_model import default_model_name
from emseg_rt.package import read_manifest
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.loader import is_package_path
from emseg_rt.runtime.normalise import check_reference


def reference_window(model: str | None, backend: str | Backend) -> tuple[float, float] | None:
    """(LOW, HIGH) uint8 reference window of the model a run will use, or None when it records none.

    backend: a loaded Backend → its `spec.reference_window`; a backend name → `model` looked up without loading
    it: a registry name (None: the default model) → its config's; a package directory (or bioimage.io zip) → its
    manifest's. A package whose manifest cannot be read gives None here: `load_backend` then refuses it with its
    own message.
    EmsegError for an unknown registry name or a malformed reference window.
    """
    if not isinstance(backend, str):
        return check_reference(getattr(backend.spec, "reference_window", None), f"backend {backend.name}")
    model = str(model or default_model_name())
    if not is_package_path(model):
        return check_reference(get_config(model).reference_window, f"model {model}")
    try:
        manifest = read_manifest(open_bioimageio(model) if is_bioimageio_zip(model) else model)
    except EmsegError:
        return None
    return check_reference(_manifest_reference(manifest), f"package {model}")


def _manifest_reference(manifest: dict[str, Any]) -> Any:
    """`input.normalisation.reference_window` of a parsed manifest, None where any level is missing."""
    record: Any = manifest
    for key in ("input", "normalisation", "reference_window"):
        record = record.get(key) if isinstance(record, dict) else None
    return record
