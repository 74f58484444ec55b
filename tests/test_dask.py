"""`segment --dask`: one task per block on a LocalCluster gives the single-process bytes, survives a
worker killed mid-run, and a resume of a complete output computes nothing (issue 16).

Byte identity holds at equal torch thread counts: Dask's workers run one thread each (the nanny sets
OMP_NUM_THREADS=1), and this module pins the single-process run to one thread too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from emseg_rt.io import write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.output import done_markers

MODEL = "scsam-tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=50)
    client = Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    data = np.random.default_rng(41).integers(0, 256, (8, 96, 96), dtype=np.uint8)
    return write_ome_image(tmp_path_factory.mktemp("dask") / "in.zarr", data, chunks=(1, 96, 96))


@pytest.fixture(scope="module")
def single_process(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out.zarr"
    segment_volume(volume, out, model=MODEL, backend="torch", block=1)
    return out


def labels_tree(out: Path) -> dict[str, bytes]:
    root = out
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("s*/**/*")) if p.is_file()}


def test_dask_output_is_byte_identical_and_resume_computes_nothing(cluster, volume, single_process, tmp_path):
    _, client = cluster
    notes: list[str] = []
    out = tmp_path / "out.zarr"
    report = segment_volume(volume, out, model=MODEL, backend="torch", block=1, dask=client.scheduler.address,
                            say=notes.append, progress=True)
    assert report.complete and report.blocks_computed == 8 and report.tiles_computed == 8
    assert labels_tree(out) == labels_tree(single_process)
    assert any(n.startswith("dask: 2 workers, dashboard") for n in notes)
    assert any(n.startswith("segment: 8/8 slices in ") for n in notes)  # the one progress reporter's last line
    again = segment_volume(volume, out, model=MODEL, backend="torch", block=1, dask=client.scheduler.address,
                           resume=True)
    assert again.complete and again.blocks_computed == 0 and again.blocks_done_before == 8


def test_a_worker_killed_mid_run_still_gives_the_identical_complete_output(cluster, volume, single_process, tmp_path):
    _, client = cluster
    out = tmp_path / "out.zarr"
    pids = list(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one_worker_after_the_first_block() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            markers = done_markers(out) if out.exists() else set()
            if markers:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker_after_the_first_block, daemon=True)
    killer.start()
    report = segment_volume(volume, out, model=MODEL, backend="torch", block=1, dask=client.scheduler.address)
    killer.join(timeout=5)
    assert killed, "the worker was not killed during the run"
    assert report.complete
    assert labels_tree(out) == labels_tree(single_process)


def test_dask_needs_a_backend_name_and_a_valid_address(volume, tmp_path):
    from emseg_rt.errors import EmsegError
    from emseg_rt.runtime import load_backend

    with pytest.raises(EmsegError, match="pass a backend name"):
        segment_volume(volume, tmp_path / "a.zarr", backend=load_backend(MODEL, "torch"), dask="local:1")
    with pytest.raises(EmsegError, match="local:N needs a worker count"):
        segment_volume(volume, tmp_path / "b.zarr", model=MODEL, backend="torch", dask="local:zero")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_dask_carries_prompts_tta_and_the_instance_density(cluster, tmp_path):
    """prompt-das-tiny with a points file, --tta and --instances (the density watershed) on the cluster gives the
    single-process labels, instance IDs and stored density, byte for byte."""
    import zarr

    from emseg_rt.runtime.prompts import PointSet

    _, client = cluster
    data = np.random.default_rng(7).integers(0, 256, (4, 80, 80), dtype=np.uint8)
    cell = write_ome_image(tmp_path / "cell.zarr", data, chunks=(1, 80, 80))
    points = PointSet(np.array([[1, 20, 30], [2, 60, 50], [3, 40, 40]]), np.array([1, 1, 0]))
    kwargs = dict(model="prompt-das-tiny", backend="torch", block=2, prompts=points, tta=True,
                  instances="mitochondria", peak_threshold=0.05)
    single = segment_volume(cell, tmp_path / "single.zarr", **kwargs)
    spread = segment_volume(cell, tmp_path / "dask.zarr", dask=client.scheduler.address, **kwargs)
    assert spread.complete and spread.instances == single.instances
    assert labels_tree(tmp_path / "dask.zarr") == labels_tree(tmp_path / "single.zarr")
    for name in ("mitochondria_instances/s0",):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "dask.zarr" / name))[...],
                                      zarr.open_array(str(tmp_path / "single.zarr" / name))[...])
    density = [zarr.open_array(str(next((tmp_path / o / ".emseg-rt").glob("density-*"))))[...]
               for o in ("single.zarr", "dask.zarr")]
    np.testing.assert_array_equal(*density)


def test_dask_carries_the_roi_and_the_mask(cluster, volume, tmp_path):
    """A region and a mask file reach the workers in the block job: the same bytes as one process."""
    _, client = cluster
    mask = np.zeros((8, 96, 96), np.uint8)
    mask[2:5, 10:60, 20:90] = 1  # block 0 (planes 1-2 of the region z 1:7) partly, blocks of planes 5-6 not at all
    mask_path = write_ome_image(tmp_path / "mask.zarr", mask)
    choices = dict(model=MODEL, backend="torch", block=2, roi="1:7,8:96,:", mask=str(mask_path))
    here = segment_volume(volume, tmp_path / "here.zarr", **choices)
    there = segment_volume(volume, tmp_path / "there.zarr", dask=client.scheduler.address, **choices)
    assert here.complete and there.complete and there.blocks_computed == 3
    assert labels_tree(tmp_path / "there.zarr") == labels_tree(tmp_path / "here.zarr")
    assert np.asarray(zarr.open_array(str(tmp_path / "here.zarr" / "s0")))[4:].max() == 0


def test_dask_runs_the_orthoplane_passes(cluster, tmp_path):
    """--planes xy,xz,yz on the cluster: each pass's blocks are tasks too; the same bytes as one process."""
    _, client = cluster
    data = np.random.default_rng(43).integers(0, 256, (16, 40, 40), dtype=np.uint8)
    src = write_ome_image(tmp_path / "iso.zarr", data)
    choices = dict(model=MODEL, backend="torch", block=8, planes="xy,xz,yz")
    here = segment_volume(src, tmp_path / "here.zarr", **choices)
    there = segment_volume(src, tmp_path / "there.zarr", dask=client.scheduler.address, **choices)
    assert here.complete and there.complete and set(there.plane_seconds) == {"xz", "yz"}
    assert labels_tree(tmp_path / "there.zarr") == labels_tree(tmp_path / "here.zarr")
