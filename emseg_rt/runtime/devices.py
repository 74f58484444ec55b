"""`--device auto|cpu|cuda[:N]`: the one place a device name is checked and `auto` is resolved.

`auto` (the default of `segment`, `bench`, `train` and `pretrain`) is the first CUDA GPU when torch sees one (said in
one line), else the CPU. Asking for a GPU that is not there is a one-line error, not a
CUDA traceback later.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from emseg_rt.errors import EmsegError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


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
