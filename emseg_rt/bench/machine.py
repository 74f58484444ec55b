"""What a benchmark ran on: machine, device and library versions, recorded with every result."""

from __future__ import annotations

import datetime as dt
import json
import importlib.metadata
import os
import platform
from pathlib import Path

import torch

from emseg_rt.runtime.devices import cpu_model

LIBRARIES = ("torch", "onnx", "onnxruntime", "tensorrt_rtx", "tensorrt", "segment-anything", "timm", "emseg-rt")


def device_name(device: str) -> str:
    """'NVIDIA H100 80GB HBM3' on CUDA, the CPU model otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def machine_record(device: str) -> dict[str, object]:
    """One dict describing where and when the benchmark ran."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname_kind": platform.machine(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "device": device,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "libraries": library_versions(),
    }


def save_result(out: Path, result: dict, markdown: str) -> None:
    """Write a benchmark's result as `out`.json and its table as `out`.md (the folder made if needed), and
    print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
