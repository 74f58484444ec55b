"""Crash and concurrency of `segment`'s run state (issue 26, item 6): a kill at every rename or unlink of a run
resumes to the bytes of an uninterrupted run; locks cannot be bypassed through a symlink, glob characters or
a look-alike directory name; `build` takes the package lock; `--into-input` refuses a `labels` array.

The fault injection is in-process: `os.rename`, `os.replace` and `os.unlink` (every rename and unlink that zarr
and emseg-rt make) count their calls and, from the k-th on, raise `Killed` (a BaseException, so that no
`except Exception` recovers and nothing more is renamed, unlinked or replaced: a process killed at that
instant). The resumed output is compared file by file (sha256 of every file, as tests/test_output_bytes.py
compares: `scripts/record_output_digests.digest_tree`; the lock files live outside every compared tree).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.data import generate_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.io import write_ome_image
from emseg_rt.io.ome_zarr import require_labels_group
from emseg_rt.package import package_lock
from emseg_rt.runtime import load_backend, segment_volume
from emseg_rt.runtime.claim import claim_output
from emseg_rt.runtime.target import output_lock

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("record_output_digests", REPO / "scripts" / "record_output_digests.py")
recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorder)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCHED = ("rename", "replace", "unlink")
# zarr's temporary file of the image's `labels` list (`labels/zarr.<uuid>.partial`), left in the user's image by
# a kill while the finished label image's name is added to that list: not provably ours, so never deleted.
IMAGE_PARTIAL = re.compile(r"labels/zarr\.[0-9a-f]{32}\.partial")


class Killed(BaseException):
    """The injected death of the process."""


@pytest.fixture(scope="module")
def engine():
    return load_backend(None, "torch")  # the embedded default model, loaded once


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A 2-plane phantom image with 2 levels and an (empty) labels group, every file's mtime pinned."""
    path = tmp_path_factory.mktemp("pristine") / "cell.zarr"
    write_ome_image(path, generate_phantom((2, 64, 64), seed=7).image, levels=2)
    require_labels_group(path, "0.5")
    return recorder.pin_mtimes(path)


def fresh_input(pristine: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return recorder.pin_mtimes(Path(shutil.copytree(pristine, work / "cell.zarr")))


@contextlib.contextmanager
def dies_at(k: int | None):
    """Count rename/replace/unlink calls; from the k-th on (None: never) each raises Killed."""
    real = {name: getattr(os, name) for name in PATCHED}
    calls, guard = [0], threading.Lock()

    def patched(name):
        def call(*args, **kwargs):
            with guard:
                calls[0] += 1
                dead = k is not None and calls[0] >= k
            if dead:
                raise Killed(f"killed at call {calls[0]} ({name} {args[0]})")
            return real[name](*args, **kwargs)
        return call

    for name in PATCHED:
        setattr(os, name, patched(name))
    try:
        yield calls
    finally:
        for name in PATCHED:
            setattr(os, name, real[name])


def run(engine, src: Path, into: bool, **options) -> None:
    where = {"into_input": True} if into else {"output": src.parent / "out.zarr", "levels": 2}
    segment_volume(src, backend=engine, block=1, **where, **options)


def digests(src: Path, into: bool) -> dict[str, str]:
    found = recorder.digest_tree(src if into else src.parent / "out.zarr")
    return {path: digest for path, digest in found.items() if not (into and IMAGE_PARTIAL.fullmatch(path))}


@pytest.mark.parametrize("into", [False, True], ids=["out", "into-input"])
def test_a_kill_at_every_rename_and_unlink_resumes_to_identical_bytes(engine, pristine, tmp_path, into):
    src = fresh_input(pristine, tmp_path / "reference")
    with dies_at(None) as calls:
        run(engine, src, into)
    total, reference = calls[0], digests(src, into)
    assert total >= 15 and any("levels-" in path for path in reference)
    input_files = {p: d for p, d in recorder.digest_tree(pristine).items() if not (into and p.startswith("labels/"))}
    for k in range(1, total + 1):
        src = fresh_input(pristine, tmp_path / f"k{k}")
        with pytest.raises(Killed), dies_at(k):
            run(engine, src, into)
        run(engine, src, into, resume=True)
        assert digests(src, into) == reference, f"killed at call {k} of {total}"
        kept = recorder.digest_tree(src)
        assert all(kept.get(p) == d for p, d in input_files.items()), f"input changed (killed at call {k})"


def test_resume_repairs_level_markers_missing_from_an_earlier_version(engine, pristine, tmp_path):
    """Outputs created before the block markers came last: killed between the block markers and the level
    markers (the 6th rename), every resume recomputed all blocks and failed with FileNotFoundError."""
    src = fresh_input(pristine, tmp_path)
    run(engine, src, False)
    reference = digests(src, False)
    out = tmp_path / "out.zarr"
    (levels,) = [p for p in (out / ".emseg-rt").iterdir() if p.name.startswith("levels-")]
    shutil.rmtree(levels)
    zarr.open_group(str(out), mode="r+").attrs.update({"emseg_rt": {**zarr.open_group(str(out)).attrs["emseg_rt"],
                                                                    "status": "incomplete"}})
    run(engine, src, False, resume=True)
    assert digests(src, False) == reference


@contextlib.contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_a_resume_at_another_thread_count_is_refused_and_at_the_same_one_is_identical(engine, pristine, tmp_path):
    """torch's CPU reductions depend on its thread count, so the run records it: a run killed at 2 threads and
    resumed at 1 is refused in one line naming the threads; resumed at 2 it equals an uninterrupted 2-thread run."""
    reference = fresh_input(pristine, tmp_path / "reference")
    with torch_threads(2):
        run(engine, reference, False)
    record = json.loads((reference.parent / "out.zarr" / ".emseg-rt" / "zarr.json").read_text())
    assert record["attributes"]["emseg_rt_run"]["config"]["threads"] == 2
    src = fresh_input(pristine, tmp_path / "killed")
    with torch_threads(2), pytest.raises(Killed), dies_at(12):
        run(engine, src, False)
    with pytest.raises(EmsegError, match=r"threads: 2 then, 1 now.*OMP_NUM_THREADS"):
        run(engine, src, False, resume=True)  # this module's one torch thread
    with torch_threads(2):
        run(engine, src, False, resume=True)
    assert digests(src, False) == digests(reference, False)


# ------------------------------------------------------------------------------------------------ locks


def test_into_input_through_a_symlink_takes_the_same_lock(engine, pristine, tmp_path):
    src = fresh_input(pristine, tmp_path)
    link = tmp_path / "link.zarr"
    link.symlink_to(src, target_is_directory=True)
    label = src / "labels" / "organelles"
    held = claim_output(label, src, resume=False, overwrite=False, into_input=True, lock_path=output_lock(label))
    try:
        before = recorder.digest_tree(src)
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(EmsegError, match=rf"is being written by pid {os.getpid()} on host"):
                segment_volume(link, into_input=True, backend=engine, **flags)
        other = write_ome_image(tmp_path / "other.zarr", np.full((2, 64, 64), 7, np.uint8))
        with pytest.raises(EmsegError, match="is being written by"):  # the same label image as --out
            segment_volume(other, link / "labels" / "organelles", backend=engine)
        assert recorder.digest_tree(src) == before
    finally:
        held.release()
    assert segment_volume(link, into_input=True, backend=engine).complete


@pytest.mark.parametrize("name", ["cell[A].zarr", "*.zarr", "cell?.zarr"])
def test_glob_characters_never_reach_another_outputs_siblings(engine, pristine, tmp_path, name):
    src = fresh_input(pristine, tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    concurrent = out_dir / ".cellA.zarr.emseg-rt-new-0123abcd"  # another run's staging directory
    (concurrent / ".emseg-rt").mkdir(parents=True)
    (concurrent / "data").write_text("another run's blocks")
    segment_volume(src, out_dir / name, backend=engine)
    assert segment_volume(src, out_dir / name, backend=engine, overwrite=True).complete
    assert (concurrent / "data").read_text() == "another run's blocks"


def test_a_look_alike_user_directory_is_never_deleted(engine, pristine, tmp_path):
    src = fresh_input(pristine, tmp_path / "in")
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine)
    mine = [tmp_path / ".out.zarr.emseg-rt-old-0123abcd", tmp_path / ".out.zarr.emseg-rt-new-89abcdef",
            tmp_path / ".out.zarr.emseg-rt-old-notes"]
    for path in mine:
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    for flags in ({"overwrite": True}, {"resume": True}):
        segment_volume(src, out, backend=engine, **flags)
    assert all((path / "notes.txt").read_text() == "mine" for path in mine)


def test_a_dead_runs_noted_staging_is_removed_and_nothing_else(engine, pristine, tmp_path):
    src = fresh_input(pristine, tmp_path / "in")
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine)
    with pytest.raises(Killed), dies_at(12):  # killed half-way through an --overwrite: staging left behind
        segment_volume(src, out, backend=engine, overwrite=True, block=1)
    staging = [p for p in tmp_path.iterdir() if ".emseg-rt-new-" in p.name]
    assert len(staging) == 1
    look_alike = tmp_path / ".out.zarr.emseg-rt-new-00000000"
    look_alike.mkdir()
    segment_volume(src, out, backend=engine, resume=True)
    assert not staging[0].exists() and look_alike.is_dir()


def test_build_takes_the_package_lock(tmp_path, monkeypatch, capsys):
    from emseg_rt.engines import build as build_module

    monkeypatch.setattr(build_module, "import_flavour", lambda flavour: None)  # no TensorRT needed to lock
    package = tmp_path / "pkg"
    package.mkdir()
    with package_lock(package):
        with pytest.raises(EmsegError, match=rf"package {package} is being written by pid {os.getpid()}"):
            build_module.build_engines(package, targets="sm86")
        assert_one_line(run_cli(monkeypatch, capsys, "build", package, "--target", "sm86"), "is being written by")
    with pytest.raises(EmsegError, match="no manifest.json"):  # released: the build goes on to read the package
        build_module.build_engines(package, targets="sm86")
    link = tmp_path / "link"
    link.symlink_to(package, target_is_directory=True)
    with package_lock(package), pytest.raises(EmsegError, match="is being written by"):
        build_module.build_engines(link, targets="sm86")  # the same package through a symlink


# ------------------------------------------------------------------------------------------ labels array


def test_into_input_refuses_a_labels_array_before_writing(engine, tmp_path, monkeypatch, capsys):
    src = write_ome_image(tmp_path / "cell.zarr", np.full((2, 64, 64), 7, np.uint8))
    zarr.open_group(str(src), mode="r+").create_array("labels", shape=(4,), dtype="uint8")
    before = recorder.digest_tree(tmp_path)
    with pytest.raises(EmsegError, match="'labels' is an array"):
        segment_volume(src, into_input=True, backend=engine)
    line = assert_one_line(run_cli(monkeypatch, capsys, "segment", src, "--into-input", "--backend", "torch",
                                   "--device", "cpu"), "'labels' is an array", "--out")
    assert "Traceback" not in line
    assert recorder.digest_tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.zarr"]
