"""A run you can leave (issue 29 item 3): `segment` keeps OUT/.emseg-rt/status/ (a zarr group: state, blocks and planes done,
rate, ETA, the error of a failed run, the report and versions of a complete one) and `emseg-rt status OUT` prints
it; zarr and ome-zarr-py still open the output without a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli

from emseg_rt.io import write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.status import STATUS_KEY, StatusKeeper, read_status, status_group
from test_segment_faults import DiesAfter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(29).integers(0, 256, (6, 96, 96), dtype=np.uint8)
    return write_ome_image(tmp_path / "in.zarr", data, chunks=(2, 96, 96))


def test_a_complete_run_keeps_its_counts_report_and_versions(tmp_path, volume, engine):
    out = tmp_path / "out.zarr"
    report = segment_volume(volume, out, backend=engine, block=2)
    status = read_status(out)
    assert status is not None and status.state == "complete" and status.error is None
    assert (status.blocks_done, status.blocks_total) == (report.blocks_computed, report.blocks_total) == (3, 3)
    assert (status.planes_done, status.planes_total) == (report.slices_computed, 6)
    assert status.eta_seconds == 0.0 and status.slices_per_second > 0
    assert status.pid == os.getpid() and status.output == str(out) and status.config_hash == report.config_hash
    saved = status.report
    assert saved["complete"] and saved["tiles_computed"] == report.tiles_computed
    assert saved["label_counts"] == report.label_counts and sum(saved["label_counts"].values()) == 6 * 96 * 96
    assert {"python", "emseg-rt", "numpy", "zarr", "torch"} <= set(status.versions)

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(str(out), mode="r").members(max_depth=None))
        nodes = [n for n in Reader(parse_url(str(out)))() if n.specs and isinstance(n.specs[0], Label)]
    assert ".emseg-rt/status" in members and nodes
    assert zarr.open_group(str(out / ".emseg-rt" / "status")).attrs[STATUS_KEY]["state"] == "complete"


def test_a_crash_leaves_failed_with_its_error_and_a_resume_completes(tmp_path, volume, engine):
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        segment_volume(volume, out, backend=DiesAfter(engine, 1), block=2)
    status = read_status(out)
    assert status.state == "failed" and status.error == "RuntimeError: injected crash"
    assert status.blocks_done == 1 and status.planes_done == 2 and status.report is None
    report = segment_volume(volume, out, backend=engine, block=2, resume=True)
    status = read_status(out)
    assert status.state == "complete" and status.error is None and status.blocks_done == 3
    assert report.blocks_done_before == 1 and status.report["blocks_computed"] == 2


def test_updates_are_throttled_but_the_end_is_always_written(tmp_path):
    (tmp_path / ".emseg-rt").mkdir()
    (tmp_path / ".emseg-rt" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    slow = StatusKeeper(tmp_path, tmp_path, interval=3600.0)
    slow.start("abc", (0, 4), (0, 16))
    for _ in range(3):
        slow.advance(4)
    assert read_status(tmp_path).blocks_done == 0  # no write per block on a fast run
    slow.complete({"complete": True})
    assert read_status(tmp_path).blocks_done == 3 and read_status(tmp_path).state == "complete"
    eager = StatusKeeper(tmp_path, tmp_path, interval=0.0)
    eager.start("abc", (1, 4), (4, 16))
    eager.advance(4)
    seen = read_status(tmp_path)
    assert (seen.state, seen.blocks_done, seen.planes_done) == ("running", 2, 8) and seen.eta_seconds > 0
    assert [p.name for p in status_group(tmp_path).iterdir()] == ["zarr.json"]  # no temporary file left


def test_status_command(tmp_path, volume, engine, monkeypatch, capsys):
    out = tmp_path / "out.zarr"
    segment_volume(volume, out, backend=engine, block=2)
    code, text, _ = run_cli(monkeypatch, capsys, "status", out)
    assert code == 0 and text.splitlines()[0] == f"{out}: complete"
    assert "blocks 3/3, planes 6/6 (100.0%)" in text and "report: torch on " in text and ", 6 slices in " in text
    code, text, _ = run_cli(monkeypatch, capsys, "status", out, "--json")
    record = json.loads(text)
    assert code == 0 and record["state"] == "complete" and record["report"]["slices_computed"] == 6
    assert_one_line(run_cli(monkeypatch, capsys, "status", tmp_path), "no run state")
    assert_one_line(run_cli(monkeypatch, capsys, "status", volume), "no run state")  # the input, not an output

    failed = tmp_path / "failed.zarr"
    with pytest.raises(RuntimeError):
        segment_volume(volume, failed, backend=DiesAfter(engine, 0), block=2)
    code, text, _ = run_cli(monkeypatch, capsys, "status", failed)
    assert code == 0 and f"{failed}: failed" in text and "error: RuntimeError: injected crash" in text

    # a run killed mid-way leaves "running" with a pid that is gone: said, with how to finish it
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    group = zarr.open_group(str(status_group(failed)), mode="r+")
    group.attrs[STATUS_KEY] = {**group.attrs[STATUS_KEY], "state": "running", "pid": int(gone.stdout), "error": None}
    code, text, _ = run_cli(monkeypatch, capsys, "status", failed)
    assert code == 0 and "is gone" in text.splitlines()[0] and "--resume" in text.splitlines()[0]


def test_a_real_sigkill_leaves_a_status_that_says_so_and_a_resume_finishes(tmp_path, engine, monkeypatch, capsys):
    """The CLI in its own process, killed with SIGKILL once a block is done: no handler runs, the status stays
    "running" with the dead pid, `emseg-rt status` says the process is gone, and --resume gives the bytes of an
    uninterrupted run."""
    import signal
    import time

    from emseg_rt.runtime.output import done_markers

    data = np.random.default_rng(30).integers(0, 256, (24, 160, 160), dtype=np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data)
    out, reference = tmp_path / "out.zarr", tmp_path / "ref.zarr"
    args = [sys.executable, "-m", "emseg_rt", "segment", str(src), "--out", str(out), "--model", "scsam-tiny",
            "--backend", "torch", "--block", "1", "--quiet"]
    child = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not (out.is_dir() and done_markers(out)):
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()  # still running: the kill lands mid-run
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    code, text, _ = run_cli(monkeypatch, capsys, "status", out)
    first = text.splitlines()[0]
    assert code == 0 and f"process {child.pid} is gone" in first and "--resume" in first
    assert 0 < len(done_markers(out)) < 24
    segment_volume(src, out, backend=engine, block=1, resume=True)
    segment_volume(src, reference, backend=engine, block=1)
    assert np.array_equal(zarr.open_array(str(out / "s0"))[:], zarr.open_array(str(reference / "s0"))[:])
    assert read_status(out).state == "complete"
