"""Every output-writing command follows one ownership rule (issue 26, item 4; `emseg_rt.io.outputs`), and a full
disk is one line.

The rule: the folder an output goes into must exist and be writable, an output file that is a directory is
refused, an existing file is replaced only with `--overwrite` (training: `--resume`), all checked before anything
slow runs; files are written to a temporary sibling and renamed, so a failed write leaves the old bytes and
nothing half-written. Each case asserts the one stderr line, exit code 2, that nothing ran, and that every file
that was there before is byte-for-byte the same and no temporary file is left.

A full disk is simulated in-process: the function that writes raises OSError(ENOSPC) after writing a few bytes.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.errors import EmsegError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BENCH = ("bench", "--models", "scsam", "--size", "tiny", "--backends", "torch-eager-fp32", "--device", "cpu",
         "--quiet", "--no-breakdown")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` → its bytes (None for a directory): what 'nothing changed' compares."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def half_then_no_space(path, *_args, **_kwargs):
    """A write that gets a few bytes onto the disk, then finds it full."""
    Path(path).write_bytes(b"half")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.fixture
def never(monkeypatch):
    """`never("module.attr")`: fail the test if the slow part behind that name runs."""
    def patch(target: str) -> None:
        def ran(*_args, **_kwargs):
            raise AssertionError(f"{target} ran although the output was refused")
        monkeypatch.setattr(target, ran)
    return patch


# ------------------------------------------------------------------------------------------------- bench


@pytest.fixture
def fake_bench(monkeypatch):
    """bench without measuring: run_bench returns an empty result the real writers write."""
    from emseg_rt.bench.table5 import BenchResult

    def run_bench(config, **_kwargs):
        return BenchResult(config, machine={"device_name": "cpu", "date": "today"}, matmul_tflops={})

    monkeypatch.setattr("emseg_rt.bench.table5.run_bench", run_bench)  # bench_cmd loads it when run


def test_bench_outputs_are_checked_before_the_run(tmp_path, monkeypatch, capsys, never):
    never("emseg_rt.bench.table5.run_bench")
    (tmp_path / "old.md").write_text("my notes")
    (tmp_path / "a.file").write_text("not a folder")
    (tmp_path / "dir.json").mkdir()
    before = snapshot(tmp_path)
    cases = [
        (("--markdown", tmp_path / "nonexistent" / "x.md"), ("--markdown", "does not exist")),
        (("--json", tmp_path / "dir.json"), ("--json", "is a directory")),
        (("--plot", tmp_path / "dir.json"), ("--plot", "is a directory")),
        (("--markdown", tmp_path / "old.md"), ("--markdown", "exists", "--overwrite")),
        (("--plot", tmp_path / "a.file" / "x.png"), ("--plot", "not a folder")),
        (("--plot", tmp_path / "x.xyz"), ("--plot", ".xyz")),
        (("--json", tmp_path / "r", "--markdown", tmp_path / "r"), ("--json and --markdown both name",)),
        (("--cache-dir", tmp_path / "a.file"), ("--cache-dir", "is a file")),
        (("--cache-dir", tmp_path / "nonexistent" / "cache"), ("--cache-dir", "does not exist")),
    ]
    for args, fragments in cases:
        assert_one_line(run_cli(monkeypatch, capsys, *BENCH, *args), *fragments)
    assert snapshot(tmp_path) == before


def test_bench_writes_what_was_asked_and_overwrite_replaces(tmp_path, monkeypatch, capsys, fake_bench):
    code, out, err = run_cli(monkeypatch, capsys, *BENCH, "--json", tmp_path / "r.json",
                             "--markdown", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "scsam-table5"
    assert (tmp_path / "r.md").read_text().startswith("# ScSAM Table 5") and "ScSAM Table 5" in out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "r.md").write_text("old")
    assert_one_line(run_cli(monkeypatch, capsys, *BENCH, "--markdown", tmp_path / "r.md"), "exists", "--overwrite")
    assert (tmp_path / "r.md").read_text() == "old"
    assert run_cli(monkeypatch, capsys, *BENCH, "--markdown", tmp_path / "r.md", "--overwrite")[0] == 0
    assert (tmp_path / "r.md").read_text().startswith("# ScSAM Table 5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]


def test_bench_disk_full_keeps_the_old_file_and_prints_the_table(tmp_path, monkeypatch, capsys, fake_bench):
    (tmp_path / "r.md").write_text("old table")
    monkeypatch.setattr(Path, "write_text", half_then_no_space)
    code, out, err = run_cli(monkeypatch, capsys, *BENCH, "--markdown", tmp_path / "r.md", "--overwrite")
    assert_one_line((code, out, err), str(tmp_path / "r.md"), "no space left")
    assert "ScSAM Table 5" in out  # the numbers are not lost with the file
    monkeypatch.undo()
    assert snapshot(tmp_path) == {"r.md": b"old table"}


# ------------------------------------------------------------------------------------------- cluster fit


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    from emseg_rt.data.phantom import generate_phantom, write_phantom

    return write_phantom(tmp_path_factory.mktemp("phantom") / "ph.zarr", generate_phantom((2, 64, 64), seed=3))


def test_cluster_fit_never_replaces_a_file_without_overwrite(tmp_path, monkeypatch, capsys, tiny_phantom, never):
    existing = tmp_path / "EXISTING.pt"
    existing.write_bytes(b"someone else's checkpoint")
    (tmp_path / "dir.pt").mkdir()
    before = snapshot(tmp_path)
    never("emseg_rt.clustering.fit_clusters")
    fit = ("cluster", "fit", "his4mae-tiny", "--data", tiny_phantom, "--clusters", "2", "--fraction", "0.05")
    assert_one_line(run_cli(monkeypatch, capsys, *fit, "--out", existing), "--out", "exists", "--overwrite")
    assert_one_line(run_cli(monkeypatch, capsys, *fit, "--out", tmp_path / "dir.pt"), "is a directory")
    assert_one_line(run_cli(monkeypatch, capsys, *fit, "--out", tmp_path / "nonexistent" / "f.pt"), "does not exist")
    assert_one_line(run_cli(monkeypatch, capsys, *fit, "--out", tmp_path / "dir.pt", "--overwrite"), "is a directory")
    assert snapshot(tmp_path) == before
    monkeypatch.undo()
    code, _, err = run_cli(monkeypatch, capsys, *fit, "--out", existing, "--overwrite")
    assert code == 0, err
    assert set(torch.load(existing, weights_only=True)) >= {"head.centres"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EXISTING.pt", "dir.pt"]  # no temporary file left


def test_a_checkpoint_write_on_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    from emseg_rt.training.loop import atomic_save

    out = tmp_path / "fitted.pt"
    out.write_bytes(b"the old checkpoint")
    monkeypatch.setattr(torch, "save", lambda obj, path, *args, **kwargs: half_then_no_space(path))
    with pytest.raises(EmsegError, match="no space left") as caught:
        atomic_save({"w": torch.zeros(2)}, out)
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(tmp_path) == {"fitted.pt": b"the old checkpoint"}


# --------------------------------------------------------------------------------------- train, pretrain


def test_train_and_pretrain_check_out_before_reading_anything(tmp_path, monkeypatch, capsys):
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "old.pt").write_bytes(b"old")
    before = snapshot(tmp_path)
    missing_data = tmp_path / "no-such-volume.zarr"  # read after --out: its error would show the order is wrong
    for command in (("train", "scsam-tiny"), ("pretrain", "his4mae-tiny")):
        run = (*command, "--data", missing_data, "--out")
        assert_one_line(run_cli(monkeypatch, capsys, *run, tmp_path / "nonexistent" / "h.pt"), "--out",
                        "does not exist")
        assert_one_line(run_cli(monkeypatch, capsys, *run, tmp_path / "dir.pt"), "--out", "is a directory")
        assert_one_line(run_cli(monkeypatch, capsys, *run, tmp_path / "old.pt"), "exists", "--resume")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------- export, disk full


def test_export_checks_its_folder_first_and_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys, never):
    from emseg_rt.package import MANIFEST_NAME, PACKAGE_FORMAT

    never("emseg_rt.export.writer.trace_model")
    assert_one_line(run_cli(monkeypatch, capsys, "export", "sam-star-tiny", "--out", tmp_path / "nonexistent" / "p"),
                    "--out", "does not exist")
    old = tmp_path / "pkg"  # an earlier package: --overwrite may replace it, a failed export must not
    old.mkdir()
    (old / MANIFEST_NAME).write_text(json.dumps({"format": PACKAGE_FORMAT}))
    (old / "full.onnx").write_bytes(b"old graph")
    before = snapshot(tmp_path)

    def trace_then_disk_full(model, trace_dir, *args):
        trace_dir.mkdir(parents=True)
        half_then_no_space(trace_dir / "full.onnx")

    monkeypatch.setattr("emseg_rt.export.writer.trace_model", trace_then_disk_full)
    for out, extra in ((tmp_path / "new", ()), (old, ("--overwrite",))):
        line = assert_one_line(run_cli(monkeypatch, capsys, "export", "sam-star-tiny", "--out", out, *extra),
                               str(out), "no space left")
        assert "Errno" not in line
    assert snapshot(tmp_path) == before  # the old package as it was; no package, no staging directory left


# --------------------------------------------------------------------------------------- phantom, demo


def test_phantom_and_demo_check_outputs_before_generating(tmp_path, monkeypatch, capsys, never):
    never("emseg_rt.data.phantom.generate_phantom")
    never("emseg_rt.demo.generate_phantom")
    taken = tmp_path / "taken.zarr"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    demo = tmp_path / "demo"
    (demo / "phantom.zarr").mkdir(parents=True)
    (demo / "phantom.zarr" / "keep.txt").write_text("mine too")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "preview.png").write_text("not a picture")
    (tmp_path / "a.file").write_text("x")
    before = snapshot(tmp_path)
    assert_one_line(run_cli(monkeypatch, capsys, "phantom", tmp_path / "nonexistent" / "p.zarr"), "does not exist")
    assert_one_line(run_cli(monkeypatch, capsys, "phantom", taken), "already exists")
    assert_one_line(run_cli(monkeypatch, capsys, "demo", "--out", tmp_path / "nonexistent" / "d"), "does not exist")
    assert_one_line(run_cli(monkeypatch, capsys, "demo", "--out", tmp_path / "a.file"), "is a file")
    assert_one_line(run_cli(monkeypatch, capsys, "demo", "--out", demo), "phantom.zarr", "not written by a demo")
    assert_one_line(run_cli(monkeypatch, capsys, "demo", "--out", notes), "preview.png", "not written by a demo")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- training embedding cache


@pytest.fixture
def small_volume():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (2, 128, 128), dtype=np.uint8), rng.integers(0, 4, (2, 128, 128), dtype=np.uint8)


def test_a_full_disk_while_caching_leaves_nothing_that_blocks_a_resume(tmp_path, monkeypatch, small_volume):
    import zarr.storage._local as local_store

    from emseg_rt.models.reproducible import build_model as build
    from emseg_rt.training import train_head

    image, labels = small_volume
    out, cache = tmp_path / "h.pt", tmp_path / "h.pt.cache.zarr"
    train_head(build("scsam-tiny"), image, labels, out, steps=1, batch=1, checkpoint_every=1)
    checkpoint = out.read_bytes()
    shutil.rmtree(cache)  # the cache is rebuilt on --resume: where the disk fills up
    real_put = local_store._put
    for failing_write in (1, 2, 5):  # the group's zarr.json, an array's metadata, a chunk
        calls = iter(range(1, 1000))

        def put(path, value, exclusive=False, fail_at=failing_write):
            return no_space() if next(calls) == fail_at else real_put(path, value, exclusive)

        monkeypatch.setattr(local_store, "_put", put)
        with pytest.raises(EmsegError, match="no space left") as caught:
            train_head(build("scsam-tiny"), image, labels, out, steps=2, batch=1, checkpoint_every=1, resume=True)
        assert str(cache) in str(caught.value) and "\n" not in str(caught.value)
        monkeypatch.setattr(local_store, "_put", real_put)
        assert not (tmp_path / "h.pt.cache.zarr.partial").exists() and out.read_bytes() == checkpoint
    # What a kill (or an older version) leaves before the marker: an empty .partial, or zarr's temporary file
    leftover = tmp_path / "h.pt.cache.zarr.partial"
    leftover.mkdir()
    (leftover / f"zarr.{'0' * 32}.partial").write_bytes(b"{")
    report = train_head(build("scsam-tiny"), image, labels, out, steps=2, batch=1, checkpoint_every=1, resume=True)
    assert report.start_step == 1 and not leftover.exists() and zarr.open_group(str(cache), mode="r").attrs["complete"]


def test_a_partial_that_is_not_ours_is_still_refused(tmp_path):
    from emseg_rt.training.cache import check_cache_path

    (tmp_path / "c.zarr.partial").mkdir()
    (tmp_path / "c.zarr.partial" / "keep.txt").write_text("mine")
    with pytest.raises(EmsegError, match="not an emseg-rt embedding cache"):
        check_cache_path(tmp_path / "c.zarr")
    assert (tmp_path / "c.zarr.partial" / "keep.txt").read_text() == "mine"
