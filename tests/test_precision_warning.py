"""`--precision bf16` on a CPU that only emulates bf16 (no AVX-512 BF16 or AMX): slower than fp32, so the run says
so in one line and goes on; on a CPU with native bf16 nothing is said. The CPU's answer is swapped in with
monkeypatch (this machine has one answer); the detection itself is checked against torch's own probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.runtime import loader
from emseg_rt.runtime.devices import cpu_has_bf16

WARNING = "--precision bf16: this CPU has no native bf16"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo (Linux)")
def test_native_bf16_detection_agrees_with_torchs_cpu_probe():
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is None or amx is None:
        pytest.skip("this torch has no CPU feature probe")
    assert cpu_has_bf16() == (avx512_bf16() or amx())


@pytest.mark.parametrize("native", [False, True])
def test_emulated_bf16_is_said_in_one_line_and_the_run_goes_on(monkeypatch, native):
    monkeypatch.setattr(loader, "cpu_has_bf16", lambda: native)
    lines: list[str] = []
    backend = loader.load_backend(None, "torch", "cpu", "bf16", say=lines.append)
    try:
        assert backend.spec.precision == "bf16"
    finally:
        backend.close()
    warned = [line for line in lines if WARNING in line]
    assert len(warned) == (0 if native else 1), lines


def test_without_a_say_it_is_a_runtime_warning_and_fp32_is_never_warned_about(monkeypatch):
    monkeypatch.setattr(loader, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        loader.load_backend(None, "torch", "cpu", "bf16").close()
    lines: list[str] = []
    loader.load_backend(None, "torch", "cpu", "fp32", say=lines.append).close()
    assert not [line for line in lines if "bf16" in line]


def test_segment_says_it_once_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loader, "cpu_has_bf16", lambda: False)
    cell = write_phantom(tmp_path / "cell.zarr", generate_phantom((2, 64, 64), seed=3))
    code, _, err = run_cli(monkeypatch, capsys, "segment", cell, "--out", tmp_path / "seg.zarr", "--backend", "torch",
                           "--precision", "bf16", "--device", "cpu")
    assert code == 0, err
    assert len([line for line in err.splitlines() if WARNING in line]) == 1, err
