"""Parity of an exported graph: ONNX Runtime (CPU) against the PyTorch module, on fresh random inputs.

For every float output: max abs error and relative error ‖onnx − torch‖ / ‖torch‖ (Frobenius norm over
the whole batch). For the label output: the fraction of pixels with the same label. Targets (issue 3):
fp32 relative error ≤ 1e-4; fp16 relative error ≤ 2e-2 and label agreement ≥ 99.5 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REL_TARGET = {"fp32": 1e-4, "fp16": 2e-2}
LABEL_AGREEMENT_TARGET = {"fp32": 0.995, "fp16": 0.995}


@dataclass(frozen=True)
class ParityTargets:
    rel_error: float
    label_agreement: float

    @classmethod
    def for_precision(cls, precision: str) -> ParityTargets:
        return cls(REL_TARGET[precision], LABEL_AGREEMENT_TARGET[precision])

    def to_dict(self) -> dict[str, float]:
        return {"rel_error": self.rel_error, "label_agreement": self.label_agreement}


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for `path` (external data is found beside the file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], targets: ParityTargets
) -> dict[str, Any]:
    """Per-output errors of `candidate` against `reference` and whether each meets `targets`.

    Float outputs get max_abs, rel_error, finite (no NaN/Inf); integer outputs (labels) get agreement.
    """
    outputs: dict[str, Any] = {}
    passed = True
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            outputs[name] = {"shape": list(got.shape), "expected_shape": list(ref.shape), "passed": False}
            passed = False
            continue
        if np.issubdtype(ref.dtype, np.floating):
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            finite = bool(np.isfinite(got64).all())
            diff = np.abs(got64 - ref64)
            max_abs = float(diff.max()) if finite else float("inf")
            denom = float(np.linalg.norm(ref64))
            rel = float(np.linalg.norm(got64 - ref64) / denom) if denom > 0 and finite else (0.0 if finite else float("inf"))
            ok = finite and rel <= targets.rel_error
            outputs[name] = {"max_abs": max_abs, "rel_error": rel, "finite": finite, "passed": ok}
        else:
            agreement = float((got == ref).mean())
            ok = agreement >= targets.label_agreement
            outputs[name] = {"agreement": agreement, "passed": ok}
        passed = passed and ok
    return {"outputs": outputs, "passed": passed}


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    session = onnx_session(path)
    feed = {spec.name: inputs[spec.name] for spec in session.get_inputs()}
    return dict(zip(output_names, session.run(output_names, feed)))
