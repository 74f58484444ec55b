"""Which implementation of a kernel runs: the one rule the three `impl="auto"` entry points share.

`resolve_impl("auto", device)` is 'triton' for CUDA tensors when triton imports and nothing is tracing, else
'torch'. `torch.export` (AOTInductor packages), `torch.jit` tracing and ONNX export count as tracing: exported
graphs hold standard operators only (the torch references). `torch.compile` does not: the Triton kernels are
registered as torch custom operators (`torch.ops.emseg_rt.*`, each beside its kernel with a fake implementation
giving the output's shape, dtype and strides), which Dynamo treats as opaque, so a compiled graph calls the
kernel as it is (Dynamo cannot trace into a Triton launch wrapper written in Python).
"""

from __future__ import annotations

import torch

IMPLEMENTATIONS = ("auto", "triton", "torch")


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether triton imports here (it comes with torch's Linux wheels; the `kernels` extra declares it).
    A constant to torch.compile (evaluated once while tracing, no lru_cache for Dynamo to warn about); after the
    first import, a dictionary lookup."""
    try:
        import triton  # noqa: F401  # optional: triton, the [kernels] extra
    except ImportError:
        return False
    return True


def _tracing() -> bool:
    """Inside torch.export, torch.jit tracing or ONNX export the torch path is used: exported graphs hold
    standard torch ops. (torch.compile is not tracing here: it calls the kernels as custom ops.)"""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return exporting or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def resolve_impl(impl: str, device: torch.device, choices: tuple[str, ...] = IMPLEMENTATIONS) -> str:
    """'auto' → 'triton' for CUDA tensors when triton imports (and nothing is tracing), else 'torch'; any other
    of `choices` is returned as it is. ValueError for a name not in `choices`."""
    if impl not in choices:
        raise ValueError(f"impl must be one of {choices}, got {impl!r}")
    if impl != "auto":
        return impl
    return "triton" if device.type == "cuda" and triton_available() and not _tracing() else "torch"
