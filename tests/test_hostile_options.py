"""Bad option values: one `emseg-rt: error:` line on stderr, exit code 2, no traceback and nothing written.

Typer's own usage errors (a value that is not a number, an unknown option, a missing argument) are turned into
one line by `emseg_rt.cli.main`; numbers and lists that parse but make no sense (nan, inf, a negative seed, an
empty entry in a comma-separated list, contradicting flags) are refused by the shared checks in
`emseg_rt.errors` where the value is used (training configs, the segment request, `build_engines`, the phantom).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cli_helpers import assert_one_line, run_cli

from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.engines.build import build_engines, parse_targets
from emseg_rt.checks import SEED_MAX, check_number, check_seed, split_items
from emseg_rt.errors import EmsegError
from emseg_rt.runtime.options import SegmentOptions
from emseg_rt.training.pretrain import PretrainConfig
from emseg_rt.training.prompt_das import LossWeights, MeanTeacher, PromptDasConfig
from emseg_rt.training.samda import SamdaConfig
from emseg_rt.training.trainer import HeadTrainConfig


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and mtime: 'nothing written' is an equal snapshot."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(monkeypatch, capsys, root: Path, *args, fragments: tuple[str, ...] = ()) -> str:
    """`emseg-rt ARGS` is one line holding every fragment, exit 2, no traceback, and nothing under `root` changed."""
    before = snapshot(root)
    result = run_cli(monkeypatch, capsys, *args)
    assert "Traceback" not in result[2]
    line = assert_one_line(result, *fragments)
    assert snapshot(root) == before
    return line


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A 2×128×128 phantom (scsam-tiny's tile) with its ground truth, written once."""
    path = tmp_path_factory.mktemp("data") / "vol.zarr"
    write_phantom(path, generate_phantom((2, 128, 128), seed=1))
    return path


# --------------------------------------------------------------------------- typer's usage errors, one line


NOT_A_NUMBER = [
    ("segment", "in.zarr", "--out", "o.zarr", "--block", "abc"),
    ("segment", "in.zarr", "--out", "o.zarr", "--halo", "1.5"),
    ("segment", "in.zarr", "--out", "o.zarr", "--batch", "four"),
    ("train", "scsam-tiny", "--data", "d.zarr", "--out", "c.pt", "--steps", "ten"),
    ("train", "scsam-tiny", "--data", "d.zarr", "--out", "c.pt", "--seed", "x"),
    ("train", "scsam-tiny", "--data", "d.zarr", "--out", "c.pt", "--lr", "fast"),
    ("phantom", "p.zarr", "--seed", "x"),
    ("pretrain", "his4mae-tiny", "--data", "d.zarr", "--out", "c.pt", "--seed", "0x1"),
    ("cluster", "fit", "his4mae-tiny", "--data", "d.zarr", "--out", "c.pt", "--seed", "1e3"),
    ("demo", "--out", "d", "--seed", "seven"),
    ("export", "scsam-tiny", "--out", "pkg", "--batch-max", "8.5"),
    ("build", "pkg", "--batch-max", "many"),
    ("bench", "--warmup", "some"),
]


@pytest.mark.parametrize("args", NOT_A_NUMBER, ids=lambda args: f"{args[0]}{args[-2]}")
def test_a_value_that_is_not_a_number_is_one_line(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    line = refused(monkeypatch, capsys, tmp_path, *args, fragments=("Invalid value for", f"'{args[-2]}'"))
    assert f"emseg-rt {args[0]}" in line and "--help" in line  # where the command's help is


@pytest.mark.parametrize("args, fragment", [
    (("segment", "in.zarr", "--blok", "3"), "No such option: --blok"),
    (("segment",), "Missing argument"),
    (("segment", "in.zarr", "--backend"), "'--backend' requires an argument"),
    (("no-such-command",), "No such command"),
    (("train", "scsam-tiny", "--data", "d.zarr"), "Missing option '--out'"),
])
def test_other_usage_errors_are_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    refused(monkeypatch, capsys, tmp_path, *args, fragments=(fragment,))


def test_help_and_no_arguments_still_print_help(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "segment" in out and "Usage" in out and not err
    code, out, _ = run_cli(monkeypatch, capsys, "segment", "--help")
    assert code == 0 and "--block" in out
    code, out, _ = run_cli(monkeypatch, capsys)  # as before: the help, exit code 2
    assert code == 2 and "Usage" in out and "segment" in out


# --------------------------------------------------------------------------- segment's request


@pytest.mark.parametrize("extra, fragments", [
    (("--resume", "--overwrite"), ("--resume and --overwrite contradict",)),
    (("--model", ""), ("--model ''", "leave --model out")),
    (("--model", "  "), ("--model '  '",)),
    (("--instances", ""), ("--instances ''", "empty entry")),
    (("--instances", ",,"), ("--instances ',,'", "empty entry")),
    (("--instances", "mitochondria,,granules"), ("empty entry",)),
])
def test_segment_refuses_contradicting_or_empty_options(tmp_path, monkeypatch, capsys, volume, extra, fragments):
    out = tmp_path / "out.zarr"
    before = snapshot(volume)
    refused(monkeypatch, capsys, tmp_path, "segment", volume, "--out", out, *extra, fragments=fragments)
    assert not out.exists() and snapshot(volume) == before


def test_segment_options_refuse_resume_with_overwrite():
    with pytest.raises(EmsegError, match="contradict"):
        SegmentOptions(resume=True, overwrite=True).validate()
    SegmentOptions(resume=True).validate()
    SegmentOptions(overwrite=True).validate()


# --------------------------------------------------------------------------- training numbers


@pytest.mark.parametrize("option, value, fragment", [
    ("--lr", "nan", "--lr nan: must be a finite number > 0"),
    ("--lr", "-1", "--lr -1.0: must be a finite number > 0"),
    ("--lr", "inf", "--lr inf: must be a finite number > 0"),
    ("--lr", "0", "--lr 0.0: must be a finite number > 0"),
    ("--cos-weight", "nan", "--cos-weight nan: must be a finite number >= 0"),
    ("--cos-weight", "inf", "--cos-weight inf"),
    ("--seed", "-1", "--seed -1: a seed is a whole number from 0 to"),
    ("--seed", str(2**64), f"--seed {2**64}"),
])
def test_train_refuses_bad_numbers_before_writing(tmp_path, monkeypatch, capsys, volume, option, value, fragment):
    ckpt = tmp_path / "head.pt"
    refused(monkeypatch, capsys, tmp_path, "train", "scsam-tiny", "--data", volume, "--out", ckpt, "--steps", "1",
            f"{option}={value}", "--quiet", fragments=(fragment,))
    assert not ckpt.exists() and not ckpt.with_name("head.pt.cache.zarr").exists()


@pytest.mark.parametrize("extra, fragment", [
    (("--ema-decay", "1.5"), "--ema-decay 1.5: the mean teacher's EMA decay needs a --target volume"),
    (("--ema-decay", "1.5", "--target", "VOLUME"), "--ema-decay 1.5: must be a finite number >= 0 and < 1"),
    (("--ema-decay", "nan", "--target", "VOLUME"), "--ema-decay nan"),
    (("--lr", "inf"), "--lr inf"),
    (("--contrastive-weight", "nan", "--target", "VOLUME"), "--contrastive-weight nan"),
    (("--sigma", "inf"), "--sigma inf"),
])
def test_prompt_das_training_refuses_bad_numbers(tmp_path, monkeypatch, capsys, volume, extra, fragment):
    extra = tuple(str(volume) if part == "VOLUME" else part for part in extra)
    ckpt = tmp_path / "pd.pt"
    refused(monkeypatch, capsys, tmp_path, "train", "prompt-das-tiny", "--data", volume, "--out", ckpt,
            "--steps", "1", *extra, "--quiet", fragments=(fragment,))
    assert not ckpt.exists()


@pytest.mark.parametrize("args, fragment", [
    (("pretrain", "his4mae-tiny", "--lr", "inf"), "--lr inf"),
    (("pretrain", "his4mae-tiny", "--seed", "-1"), "--seed -1"),
    (("pretrain", "his4mae-tiny", "--seed", str(2**64)), f"--seed {2**64}"),
    (("cluster", "fit", "his4mae-tiny", "--seed", str(2**32)), f"--seed {2**32}: a seed is a whole number from 0 to "
                                                               f"{2**32 - 1}"),
])
def test_pretrain_and_cluster_refuse_bad_numbers(tmp_path, monkeypatch, capsys, volume, args, fragment):
    out = tmp_path / "c.pt"
    refused(monkeypatch, capsys, tmp_path, *args[:-2], "--data", volume, "--out", out, *args[-2:],
            fragments=(fragment,))
    assert not out.exists()


def test_training_configs_check_their_numbers():
    nan, inf = math.nan, math.inf
    for bad in (nan, inf, -1.0, 0.0):
        with pytest.raises(EmsegError, match="--lr"):
            HeadTrainConfig(lr=bad)
        with pytest.raises(EmsegError, match="--lr"):
            PromptDasConfig(lr=bad)
        with pytest.raises(EmsegError, match="--lr"):
            SamdaConfig(lr=bad)
        with pytest.raises(EmsegError, match="--lr"):
            PretrainConfig(lr=bad)
    for bad in (nan, inf, -0.5):
        with pytest.raises(EmsegError, match="--cos-weight"):
            HeadTrainConfig(cos_weight=bad)
        with pytest.raises(EmsegError, match="loss weight"):
            LossWeights(dice=bad)
    for bad in (nan, 1.0, 1.5, -0.1):
        with pytest.raises(EmsegError, match="--ema-decay"):
            MeanTeacher(ema_decay=bad)
    for config in (HeadTrainConfig, PromptDasConfig, SamdaConfig, PretrainConfig):
        with pytest.raises(EmsegError, match="--seed"):
            config(seed=-1)
        with pytest.raises(EmsegError, match="--seed"):
            config(seed=SEED_MAX + 1)
        config(seed=SEED_MAX)  # the largest seed numpy and torch take is fine
    # the defaults and the paper's numbers pass
    HeadTrainConfig(), PromptDasConfig(), SamdaConfig(), PretrainConfig(), MeanTeacher(ema_decay=0.0)


# --------------------------------------------------------------------------- build, bench, phantom, demo


@pytest.mark.parametrize("args, fragment", [
    (("build", "pkg", "--batch-max", "0"), "--batch-max 0: must be at least 1"),
    (("build", "pkg", "--batch-max", "-3"), "--batch-max -3"),
    (("build", "pkg", "--target", "sm86,,sm89"), "--target 'sm86,,sm89': empty entry"),
    (("build", "pkg", "--target", "sm86,"), "--target 'sm86,': empty entry"),
    (("bench", "--batch", "1,,2"), "--batch '1,,2': empty entry"),
    (("bench", "--batch", "1,2,"), "empty entry"),
    (("bench", "--models", "scsam,,sam-star"), "--models 'scsam,,sam-star': empty entry"),
    (("bench", "--backends", ",torch-fp32"), "--backends ',torch-fp32': empty entry"),
    (("phantom", "p.zarr", "--seed", "-1"), "--seed -1: a seed is a whole number from 0 to 18446744073709551615"),
    (("phantom", "p.zarr", "--seed", str(2**64)), f"--seed {2**64}"),
    (("phantom", "p.zarr", "--shape", "4,,64,64"), "--shape '4,,64,64' must be three whole numbers"),
    (("phantom", "p.zarr", "--shape", "4,64"), "--shape '4,64'"),
    (("phantom", "p.zarr", "--shape", "-4,64,64"), "--shape '-4,64,64'"),
    (("demo", "--out", "d", "--seed", "-1"), "--seed -1"),
])
def test_bad_lists_and_seeds_are_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    refused(monkeypatch, capsys, tmp_path, *args, fragments=(fragment,))


def test_build_engines_checks_before_anything(tmp_path):
    with pytest.raises(EmsegError, match="--batch-max 0"):
        build_engines(tmp_path / "no-package", batch_max=0)
    with pytest.raises(EmsegError, match="empty entry"):
        build_engines(tmp_path / "no-package", targets="sm86,,sm89")
    with pytest.raises(EmsegError, match="empty one"):
        parse_targets(["sm86", ""])
    assert parse_targets("sm86, SM89") == ["sm86", "sm89"]  # spaces and case as a user types them
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", ["4, 64, 64", "4 , 64 , 64", "4 64 64", "4x64x64"])
def test_phantom_shape_accepts_spaces(tmp_path, monkeypatch, capsys, shape):
    code, out, err = run_cli(monkeypatch, capsys, "phantom", tmp_path / "p.zarr", "--shape", shape)
    assert code == 0 and "4×64×64" in out, err  # a normal run still exits 0


# --------------------------------------------------------------------------- the shared checks


def test_shared_checks():
    assert check_seed(0) == 0 and check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 1.5, "3"):
        with pytest.raises(EmsegError, match="--seed"):
            check_seed(bad)
    assert check_number("0.5", "--x", at_least=0, below=1) == 0.5
    for bad in (math.nan, math.inf, -math.inf, "nan", "x", None):
        with pytest.raises(EmsegError, match="--x .*finite"):
            check_number(bad, "--x")
    with pytest.raises(EmsegError, match=r"--x 1: must be a finite number >= 0 and < 1"):
        check_number(1, "--x", at_least=0, below=1)
    assert split_items(" a, b ,c", "--x", "a,b") == ("a", "b", "c")
    for bad in ("", ",", "a,,b", "a,", " , a"):
        with pytest.raises(EmsegError, match="empty entry"):
            split_items(bad, "--x", "a,b")


def test_a_request_built_directly_is_checked_before_anything_runs(tmp_path):
    """`run_segment` / `labels_of` validate a `SegmentRequest` that did not come through `from_keywords`."""
    import numpy as np

    from emseg_rt.runtime import SegmentOptions, SegmentRequest, run_segment
    from emseg_rt.runtime.labels import labels_of

    volume = np.zeros((2, 16, 16), np.uint8)
    bad = SegmentRequest(input=volume, output=tmp_path / "out.zarr", options=SegmentOptions(batch=0))
    with pytest.raises(EmsegError, match="--batch 0 must be >= 1"):
        run_segment(bad)
    with pytest.raises(EmsegError, match="--batch 0 must be >= 1"):
        labels_of(SegmentRequest(input=volume, device="cpu", options=SegmentOptions(batch=0)))
    assert not (tmp_path / "out.zarr").exists()
