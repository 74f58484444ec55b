"""`--device auto|cpu|cuda[:N]`: the one place a device name is checked and `auto` is resolved, and what this
CPU is (`cpu_model`, `cpu_flags`, `cpu_has_bf16`: /proc/cpuinfo, read here only).

`auto` (the default of `segment`, `bench`, `train` and `pretrain`) is the first CUDA GPU when torch sees one (said in
one line), else the CPU. Asking for a GPU that is not there is a one-line error, not a
CUDA traceback later.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from emseg_rt.errors import EmsegError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
# the instruction sets that decide which precision is fast on a CPU (bf16: AVX-512 BF16, AMX; int8: VNNI, AMX)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 9B14'), else what `platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(names: Sequence[str] = CPU_FLAGS) -> dict[str, bool]:
    """Which of `names` this CPU reports in /proc/cpuinfo (all False where there is none)."""
    words = set(_cpuinfo().split())
    return {flag: flag in words for flag in names}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Without it torch emulates bf16 and
    autocast is slower than fp32 (measured 2.3x slower on a Xeon with AVX-512 but no BF16:
    benchmarks/results/bench_vs_segment.md)."""
    flags = cpu_flags(("avx512_bf16", "amx_bf16"))
    return any(flags.values())


def resolve_device(device: str, say: Callable[[str], None] | None = None) -> str:
    """'auto' → 'cuda' when torch sees a CUDA GPU, else 'cpu' (told to `say` in one line); 'cpu', 'cuda' and
    'cuda:N' are checked and returned as they are. EmsegError for other names or a GPU that is not there."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"  # what every run did before `auto`: nothing to say
        if say is not None:
            say(f"device: cuda (auto: {torch.cuda.get_device_name(0)})")
        return "cuda"
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise EmsegError(f"--device {device!r}: choose {DEVICE_CHOICES}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA GPU(s)" if count else "no CUDA GPU"
            raise EmsegError(f"--device {device}: torch sees {found}; pass --device cpu or auto")
    return device
