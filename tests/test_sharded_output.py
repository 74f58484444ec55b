"""Sharded zarr v3 outputs (issue 29.1): one shard file per write block for every level, the probabilities and
the run state's density; readers open it, its labels equal an unsharded run's, a SIGKILL in the middle of a
shard write resumes to the bytes of an uninterrupted run, a Dask run writes the same bytes, and a resume never
mixes the two layouts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line, run_cli
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05 import ImageLabel as ImageLabel05

from emseg_rt.io import read_volume, write_ome_image
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.plan import output_chunking

REPO = Path(__file__).resolve().parents[1]
MODEL = "scsam-tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    data = np.random.default_rng(29).integers(0, 256, (16, 256, 256), dtype=np.uint8)
    return write_ome_image(tmp_path_factory.mktemp("shards") / "in.zarr", data, voxel_size=(30.0, 5.0, 5.0))


def data_files(root: Path) -> dict[str, int]:
    """Files under each array of an output ("s0", "probabilities/s0", ...) that are not metadata."""
    counts: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup") and "c" in path.parts:
            array = path.relative_to(root).parts
            key = "/".join(array[:array.index("c")])
            counts[key] = counts.get(key, 0) + 1
    return counts


def file_bytes(root: Path, prefix: str = "") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and str(p.relative_to(root)).startswith(prefix)}


def test_one_shard_per_block_with_viewer_chunks():
    assert output_chunking((1000, 1024, 1024), 0, 8, True) == ((1, 256, 256), (8, 1024, 1024))
    assert output_chunking((1000, 1024, 1024), 0, 8, False) == ((8, 1024, 1024), None)
    # a plane wider than one chunk: unsharded, 9 files per block; sharded, one, reaching past the edge
    assert output_chunking((20, 2100, 300), 0, 8, True) == ((1, 256, 256), (8, 2304, 512))
    assert output_chunking((20, 2100, 300), 0, 8, False) == ((8, 1024, 300), None)
    assert output_chunking((40, 5, 60), 1, 2, True) == ((40, 1, 60), (40, 2, 60))  # slicing along y


def test_sharded_output_opens_validates_and_equals_an_unsharded_run(tmp_path, volume, engine):
    runs = {}
    for name, shards in (("sharded", True), ("plain", False)):
        runs[name] = tmp_path / f"{name}.zarr"
        report = segment_volume(volume, runs[name], backend=engine, block=8, levels=2, probabilities=True,
                                shards=shards)
        assert report.complete
    sharded, plain = runs["sharded"], runs["plain"]
    s0, s1 = zarr.open_array(str(sharded / "s0")), zarr.open_array(str(sharded / "s1"))
    assert s0.shards == (8, 256, 256) and s0.chunks == (1, 256, 256)
    assert s1.shards == (8, 128, 128) and s1.chunks == (1, 128, 128)
    assert zarr.open_array(str(sharded / "probabilities" / "s0")).shards == (3, 8, 256, 256)
    assert zarr.open_array(str(plain / "s0")).shards is None
    for array in ("s0", "s1", "probabilities/s0"):
        np.testing.assert_array_equal(zarr.open_array(str(sharded / array))[...],
                                      zarr.open_array(str(plain / array))[...])
    # one file per block for every array; unsharded, the probabilities take one per class and block
    arrays = {name: {k: v for k, v in data_files(root).items() if not k.startswith(".emseg-rt")}
              for name, root in runs.items()}
    assert arrays == {"sharded": {"s0": 2, "s1": 2, "probabilities/s0": 2},
                      "plain": {"s0": 2, "s1": 2, "probabilities/s0": 6}}

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = [n for n in Reader(parse_url(str(sharded)))() if n.specs and isinstance(n.specs[0], Label)]
    assert nodes, "ome-zarr's reader does not see the sharded label image"
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), read_volume(plain))
    np.testing.assert_array_equal(np.asarray(nodes[0].data[1]), zarr.open_array(str(plain / "s1"))[...])
    assert isinstance(open_ome_zarr(zarr.open_group(str(sharded), mode="r")), ImageLabel05)


KILL_MID_SHARD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from emseg_rt.runtime import segment_volume

    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        # block 1's s0 shard, written to its temporary name: tear that file in half and die, as a SIGKILL
        # halfway through writing it would leave it
        if Path(dst).parts[-6:] == ("killed.zarr", "s0", "c", "1", "0", "0"):
            data = Path(src).read_bytes()
            Path(src).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    segment_volume(sys.argv[1], sys.argv[2], model="scsam-tiny", backend="torch", block=4, levels=2,
                   probabilities=True)
""")


def test_a_sigkill_in_the_middle_of_a_shard_write_resumes_to_identical_bytes(tmp_path, volume, engine):
    reference = tmp_path / "reference.zarr"
    segment_volume(volume, reference, backend=engine, block=4, levels=2, probabilities=True)
    out = tmp_path / "killed.zarr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed = subprocess.run([sys.executable, "-c", KILL_MID_SHARD, str(volume), str(out)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr
    torn = list((out / "s0" / "c").glob("1/*/*.partial"))
    assert torn, "no half-written shard was left"
    # a store without atomic renames would leave the torn bytes under the shard's own name: the block has no
    # done-marker, so the resume writes the shard again whole
    (out / "s0" / "c" / "1" / "0" / "0").write_bytes(torn[0].read_bytes())
    report = segment_volume(volume, out, backend=engine, block=4, levels=2, probabilities=True, resume=True)
    assert report.complete and report.blocks_done_before == 1 and report.blocks_computed == 3
    assert file_bytes(out, "s") == file_bytes(reference, "s")
    assert file_bytes(out, "probabilities") == file_bytes(reference, "probabilities")


def test_a_dask_run_writes_the_same_shards(tmp_path):
    data = np.random.default_rng(30).integers(0, 256, (4, 96, 96), dtype=np.uint8)
    cell = write_ome_image(tmp_path / "cell.zarr", data, chunks=(1, 96, 96))
    single = segment_volume(cell, tmp_path / "single.zarr", model=MODEL, backend="torch", block=2)
    spread = segment_volume(cell, tmp_path / "dask.zarr", model=MODEL, backend="torch", block=2, dask="local:2")
    assert single.complete and spread.complete
    assert zarr.open_array(str(tmp_path / "dask.zarr" / "s0")).shards == (2, 96, 96)
    assert file_bytes(tmp_path / "dask.zarr", "s0") == file_bytes(tmp_path / "single.zarr", "s0")


def test_density_and_instances_are_sharded_per_block(tmp_path):
    data = np.random.default_rng(31).integers(0, 256, (4, 80, 80), dtype=np.uint8)
    cell = write_ome_image(tmp_path / "cell.zarr", data, chunks=(1, 80, 80))
    out = tmp_path / "out.zarr"
    segment_volume(cell, out, model="prompt-das-tiny", backend="torch", block=2, prompts="auto",
                   instances="mitochondria", peak_threshold=0.05)
    density = zarr.open_array(str(next((out / ".emseg-rt").glob("density-*"))))
    assert density.shards == (2, 80, 80) and density.chunks == (1, 80, 80)
    assert zarr.open_array(str(out / "mitochondria_instances" / "s0")).shards == (2, 80, 80)
    assert not zarr.open_array(str(next((out / ".emseg-rt").glob("done-*")))).shards  # markers: a file each


def test_a_resume_never_mixes_sharded_and_unsharded(tmp_path, volume, engine, monkeypatch, capsys):
    out = tmp_path / "plain.zarr"
    code, _, err = run_cli(monkeypatch, capsys, "segment", volume, "--out", out, "--model", MODEL, "--backend",
                           "torch", "--block", "8", "--levels", "1", "--no-shards", "--quiet")
    assert code == 0, err
    assert zarr.open_array(str(out / "s0")).shards is None
    assert_one_line(run_cli(monkeypatch, capsys, "segment", volume, "--out", out, "--model", MODEL, "--backend",
                            "torch", "--block", "8", "--levels", "1", "--resume", "--quiet"),
                    "different configuration", "pass --no-shards")
