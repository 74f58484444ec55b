"""`--device auto|cpu|cuda[:N]` (`runtime.devices.resolve_device`): auto picks the CPU on a machine without a
GPU and says so; a GPU that is not there, or an unknown name, is a one-line error in the library and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line, run_cli

from emseg_rt.errors import EmsegError
from emseg_rt.io import write_ome_image
from emseg_rt.runtime.devices import resolve_device


def test_auto_resolves_and_says_so_when_it_picks_a_gpu():
    notes: list[str] = []
    gpu = torch.cuda.is_available()
    assert resolve_device("auto", notes.append) == ("cuda" if gpu else "cpu")
    assert notes == ([f"device: cuda (auto: {torch.cuda.get_device_name(0)})"] if gpu else [])
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(EmsegError, match="choose auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_missing_gpu_is_one_line_in_the_library_and_the_cli(tmp_path, monkeypatch, capsys):
    with pytest.raises(EmsegError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    cell = write_ome_image(tmp_path / "cell.zarr", np.full((1, 32, 32), 7, np.uint8))
    result = run_cli(monkeypatch, capsys, "segment", cell, "--out", tmp_path / "o.zarr", "--device", "cuda")
    assert_one_line(result, "--device cuda", "no CUDA GPU")
    assert not (tmp_path / "o.zarr").exists()  # refused before the output is claimed
    assert_one_line(run_cli(monkeypatch, capsys, "bench", "--device", "tpu"), "--device 'tpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("model", ["scsam-phantom", "prompt-das-tiny", "samda-tiny"])
def test_train_refuses_a_missing_gpu_before_writing(tmp_path, monkeypatch, capsys, model):
    """`train --device cuda` without a GPU: one line, no checkpoint, no cache, nothing else written."""
    cell = write_ome_image(tmp_path / "cell.zarr", np.full((2, 64, 64), 7, np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--recipe", "samda-source"] if model.startswith("samda") else []
    result = run_cli(monkeypatch, capsys, "train", model, "--data", cell, "--labels", cell, "--out",
                     tmp_path / "head.pt", "--steps", "1", "--device", "cuda", "--quiet", *extra)
    assert_one_line(result, "--device cuda", "no CUDA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
