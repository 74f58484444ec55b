"""Running a script under the Triton interpreter (TRITON_INTERPRET=1) in a subprocess: the interpreter must be
chosen before triton is first imported, so the kernels' CPU tests cannot run it in the test process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def run_interpreted(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -c script args` with TRITON_INTERPRET=1, one thread, the repository importable; asserts exit 0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kernel_outputs(script: str, cases: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Save `cases`, run `script CASES OUT` under the interpreter, load what it saved to OUT."""
    torch.save(cases, workdir / "cases.pt")
    run_interpreted(script, str(workdir / "cases.pt"), str(workdir / "outputs.pt"))
    return torch.load(workdir / "outputs.pt")
