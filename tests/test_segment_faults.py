"""`segment` under faults: nothing the user had is lost, nothing wrong is marked complete (issue 10).

Faults are injected in-process where a deterministic point is needed (a backend that dies after N batches,
a failure between a block's chunks and its marker, a swap interrupted between its renames) and with a real
SIGKILL where the instant should be arbitrary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io import read_volume, write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime import output as output_module
from emseg_rt.runtime.claim import claim_output
from emseg_rt.runtime.output import read_run_record

MODEL = "scsam-tiny"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(31).integers(0, 256, (6, 96, 96), dtype=np.uint8)
    return write_ome_image(tmp_path / "in.zarr", data, chunks=(2, 96, 96)), data


class DiesAfter:
    """A backend that raises after `calls` batches: a crash in the middle of a run."""

    def __init__(self, backend, calls: int) -> None:
        self.backend, self.calls = backend, calls
        self.name, self.spec = backend.name, backend.spec

    def run(self, tiles, want_logits=False, prompts=None):
        if self.calls == 0:
            raise RuntimeError("injected crash")
        self.calls -= 1
        return self.backend.run(tiles, want_logits, prompts)

    def close(self) -> None:
        pass


def labels_of(out: Path) -> np.ndarray:
    return read_volume(out)


def status_of(out: Path) -> str:
    return zarr.open_group(str(out), mode="r").attrs["emseg_rt"]["status"]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_what_is_not_ours(tmp_path, volume, engine):
    src, _ = volume
    other = write_ome_image(tmp_path / "other.zarr", np.ones((2, 8, 8), np.uint8))  # someone's OME-Zarr
    (other / "notes.txt").write_text("mine")
    before = tree(other)
    for flags in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(EmsegError, match="not an emseg-rt output"):
            segment_volume(src, other, backend=engine, **flags)
    assert tree(other) == before


def test_input_inside_the_output_is_refused_and_kept(tmp_path, engine):
    out = tmp_path / "out.zarr"
    src = write_ome_image(out / "raw.zarr", np.full((2, 64, 64), 7, np.uint8))
    with pytest.raises(EmsegError, match="contains the input"):
        segment_volume(src, out, backend=engine, overwrite=True)
    assert read_volume(src).sum() == 7 * 2 * 64 * 64


def test_failed_overwrite_keeps_the_previous_complete_output(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=2)
    good = labels_of(out)
    with pytest.raises(EmsegError, match="unknown model"):  # fails while loading: nothing touched
        segment_volume(src, out, model="no-such-model", overwrite=True)
    with pytest.raises(RuntimeError, match="injected"):  # fails half-way through the new output
        segment_volume(src, out, backend=DiesAfter(engine, 2), block=2, overwrite=True)
    assert status_of(out) == "complete" and np.array_equal(labels_of(out), good)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.zarr.emseg-rt-")] == []


def test_overwrite_replaces_only_when_complete(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=2)
    report = segment_volume(src, out, backend=engine, block=3, overwrite=True)
    assert report.complete and status_of(out) == "complete"
    assert read_run_record(out)["config"]["block"] == 3


def test_interrupted_swap_is_recovered(tmp_path, volume, engine, monkeypatch):
    """Without renameat2 the swap is two renames; a death between them leaves OUT missing and the old
    output moved aside: the next run puts it back before anything else."""
    from emseg_rt.runtime import claim as claim_module

    src, _ = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=2)
    good = labels_of(out)
    monkeypatch.setattr(claim_module, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename_then_die(a, b):
        calls.append((a, b))
        real_rename(a, b)
        if len(calls) == 1 and ".emseg-rt-old-" in str(b):
            raise KeyboardInterrupt  # killed right after the old output was moved aside

    monkeypatch.setattr(claim_module.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        segment_volume(src, out, backend=engine, block=3, overwrite=True)
    monkeypatch.setattr(claim_module.os, "rename", real_rename)
    assert not out.exists()
    report = segment_volume(src, out, backend=engine, block=2, resume=True)  # recovers, then resumes
    assert report.blocks_computed == 0 and np.array_equal(labels_of(out), good)


def test_a_block_written_without_its_marker_is_redone_identically(tmp_path, volume, engine, monkeypatch):

    src, _ = volume
    reference = tmp_path / "ref.zarr"
    segment_volume(src, reference, backend=engine, block=2)
    out = tmp_path / "out.zarr"
    real_mark = output_module.OutputStore.mark_done

    def die_before_second_marker(self, index, input_digest):
        if index == 1:
            raise KeyboardInterrupt  # chunks of block 1 are written, its marker is not
        return real_mark(self, index, input_digest)

    monkeypatch.setattr(output_module.OutputStore, "mark_done", die_before_second_marker)
    with pytest.raises(KeyboardInterrupt):
        segment_volume(src, out, backend=engine, block=2)
    monkeypatch.setattr(output_module.OutputStore, "mark_done", real_mark)
    assert status_of(out) == "incomplete"
    report = segment_volume(src, out, backend=engine, block=2, resume=True)
    assert report.complete and report.blocks_done_before == 1
    assert tree(out / "s0") == tree(reference / "s0")


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_not_in_the_way(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    held = claim_output(out, src, resume=False, overwrite=False)
    try:
        with pytest.raises(EmsegError, match=rf"being written by pid {os.getpid()} on host"):
            segment_volume(src, out, backend=engine)
    finally:
        held.release()
    # A lock file left by a killed process is not held by anyone (flock dies with its process).
    (tmp_path / ".out.zarr.emseg-rt.lock").write_text("pid 999999 on host elsewhere\n")
    assert segment_volume(src, out, backend=engine).complete


def _rewrite_keeping_size_and_mtime(array_dir: Path, write) -> None:
    """Run `write()` on the array in `array_dir`, then restore every chunk file's mtime: the change keeps each
    file's size (no compression of random bytes) and leaves no trace in sizes or modification times."""
    files = {p: p.stat() for p in array_dir.rglob("*") if p.is_file()}
    write()
    for path, stat in files.items():
        assert path.stat().st_size == stat.st_size
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_resume_refuses_an_input_a_finished_block_read_differently(tmp_path, volume, engine):
    """A chunk a finished block read, rewritten with the same size and its mtime restored: the block's recorded
    input digest no longer matches, the resume is refused and the output stays incomplete."""
    src, data = volume
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        segment_volume(src, out, backend=DiesAfter(engine, 1), block=2)
    array = zarr.open_array(str(src / "s0"), mode="r+")
    done = sorted(output_module.done_markers(out))
    assert done == [0]

    def flip_one_voxel():
        array[1, 5, 7] = 255 - data[1, 5, 7]

    _rewrite_keeping_size_and_mtime(src / "s0", flip_one_voxel)
    with pytest.raises(EmsegError, match=r"input changed since .* z 0\.\.1 no longer holds the values block 0"):
        segment_volume(src, out, backend=engine, block=2, resume=True)
    assert status_of(out) == "incomplete"


def test_a_resume_with_nothing_pending_reads_no_input(tmp_path, volume, engine):
    """Every block done: the resume computes nothing, so it mixes nothing and reads no input planes again (a
    finished output over a changed input keeps what it was computed from, and says no 'checking' line)."""
    src, data = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=2)
    before = tree(out / "s0")
    array = zarr.open_array(str(src / "s0"), mode="r+")
    array[1, 5, 7] = 255 - data[1, 5, 7]
    notes: list[str] = []
    report = segment_volume(src, out, backend=engine, block=2, resume=True, say=notes.append)
    assert report.complete and report.blocks_computed == 0
    assert not any(n.startswith("resume: checking") for n in notes)
    assert tree(out / "s0") == before


def test_a_block_not_yet_computed_reads_the_input_as_it_is(tmp_path, volume, engine):
    """Planes only pending blocks read, changed before the resume: the finished output equals one uninterrupted
    run over the changed input (nothing old is mixed in)."""
    src, data = volume
    out, reference = tmp_path / "out.zarr", tmp_path / "reference.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        segment_volume(src, out, backend=DiesAfter(engine, 1), block=2)
    array = zarr.open_array(str(src / "s0"), mode="r+")
    _rewrite_keeping_size_and_mtime(src / "s0", lambda: array.__setitem__(slice(4, 6), 255 - data[4:6]))
    assert segment_volume(src, out, backend=engine, block=2, resume=True).complete
    segment_volume(src, reference, backend=engine, block=2)
    assert tree(out / "s0") == tree(reference / "s0")


def test_resume_refuses_changed_units(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        segment_volume(src, out, backend=DiesAfter(engine, 1), block=2)
    meta = json.loads((src / "zarr.json").read_text())
    text = json.dumps(meta)
    assert '"nanometer"' in text or '"micrometer"' in text
    swapped = text.replace('"nanometer"', '"UNIT"').replace('"micrometer"', '"nanometer"').replace('"UNIT"',
                                                                                                 '"micrometer"')
    (src / "zarr.json").write_text(swapped)
    with pytest.raises(EmsegError, match="units or translation differ"):
        segment_volume(src, out, backend=engine, block=2, resume=True)


def test_missing_input_chunks_are_an_error_unless_allowed(tmp_path, volume, engine):
    src, _ = volume
    chunk = next(p for p in sorted((src / "s0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    with pytest.raises(EmsegError, match="1 of 3 chunks are missing"):
        segment_volume(src, tmp_path / "out.zarr", backend=engine, block=2)
    assert not (tmp_path / "out.zarr").exists()
    assert segment_volume(src, tmp_path / "out.zarr", backend=engine, block=2, allow_missing_chunks=True).complete


@pytest.mark.parametrize(("option", "message"), [
    ({"label_name": ""}, "--label-name"), ({"label_name": "../x"}, "--label-name"),
    ({"batch": 10**9}, "GiB of buffers"), ({"block": 0}, "--block"),
    ({"report": "/nonexistent-emseg-dir/r.json"}, r"--report .*folder /nonexistent-emseg-dir does not exist"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, volume, engine, option, message):
    src, _ = volume
    with pytest.raises(EmsegError, match=message):
        segment_volume(src, tmp_path / "out.zarr", backend=engine, **option)
    assert not (tmp_path / "out.zarr").exists()


def test_symlinked_out_is_one_line(tmp_path, volume, engine):
    src, _ = volume
    real = tmp_path / "real.zarr"
    segment_volume(src, real, backend=engine)
    (tmp_path / "link.zarr").symlink_to(real)
    with pytest.raises(EmsegError, match="symbolic link"):
        segment_volume(src, tmp_path / "link.zarr", backend=engine, overwrite=True)
    assert status_of(real) == "complete"


def test_full_disk_is_one_line_and_resumable(tmp_path, volume, engine):
    """A small tmpfs fills up mid-run: one EmsegError line, finished blocks kept, no 'complete'."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill: {result.stderr.strip() or result.returncode}")
    try:
        big = np.random.default_rng(3).integers(0, 256, (32, 192, 192), dtype=np.uint8)
        src = write_ome_image(tmp_path / "big.zarr", big, chunks=(2, 192, 192))
        with pytest.raises(EmsegError, match="cannot write .*No space left"):
            segment_volume(src, mount / "out.zarr", backend=engine, block=2)
        assert status_of(mount / "out.zarr") == "incomplete"
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_sigkill_during_overwrite_leaves_old_or_new_never_a_mixture(tmp_path, volume, engine):
    src, _ = volume
    out = tmp_path / "out.zarr"
    segment_volume(src, out, backend=engine, block=2)
    old = labels_of(out)
    new_ref = tmp_path / "new.zarr"
    segment_volume(src, new_ref, backend=engine, block=3)  # what the overwriting run writes
    new = labels_of(new_ref)
    code = (f"from emseg_rt.runtime import segment_volume\n"
            f"segment_volume({str(src)!r}, {str(out)!r}, model={MODEL!r}, backend='torch', block=3, overwrite=True)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for delay in (0.05, 0.5):  # seconds after the new output's staging directory appeared
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.zarr.emseg-rt-new-*")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert status_of(out) == "complete"
        current = labels_of(out)
        assert np.array_equal(current, old) or np.array_equal(current, new)
