"""`segment --dask`: the same block computation as the single-process stream, one Dask task per block.

A block is `block` whole planes, so its output is whole chunks that no other task touches. A task runs
exactly what the threaded stream runs for a block (`read_slab` → `segment_planes` (prompts, `--prompts auto`,
`--tta`, the density for the instance watershed) → `OutputStore.write_block`,
which writes the chunks and then the done-marker), on a backend the worker process loaded once and keeps.
A task whose worker dies is retried elsewhere; recomputing a block writes the same bytes, so the output is
byte-identical to a single-process run. The driver (the process that called `segment_volume`) holds the
output lock, writes the run record, submits the pending blocks and marks the output complete.

    segment_volume("cell.zarr", "out.zarr", dask="local:2")        # a LocalCluster of 2 one-thread workers
    segment_volume("cell.zarr", "out.zarr", dask="tcp://sched:8786")  # an existing cluster
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.normalise import Normalisation
from emseg_rt.runtime.output import OutputLayout, OutputStore
from emseg_rt.runtime.slab import PromptMode

TASK_RETRIES = 3  # a block whose worker died is resubmitted this many times


@dataclass(frozen=True)
class BackendRecipe:
    """How a worker loads the run's backend (the arguments of `load_backend`)."""

    model: str | None
    backend: str
    device: str
    precision: str
    checkpoints: tuple[str, ...] = ()

    def load(self) -> Backend:
        from emseg_rt.runtime.loader import load_backend

        return load_backend(self.model, self.backend, _worker_device(self.device), self.precision, self.checkpoints)


def _worker_device(device: str) -> str:
    """'cuda' on a worker of a machine with several GPUs → that worker's own GPU (worker name modulo count)."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return device
    from distributed import get_worker

    name = str(get_worker().name)
    return f"cuda:{int(name) % count}" if name.isdigit() else device


_WORKER_BACKENDS: dict[BackendRecipe, Backend] = {}  # the per-process model cache: one load per worker process


def worker_backend(recipe: BackendRecipe) -> Backend:
    if recipe not in _WORKER_BACKENDS:
        _WORKER_BACKENDS.clear()  # one model resident per worker
        _WORKER_BACKENDS[recipe] = recipe.load()
    return _WORKER_BACKENDS[recipe]


@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs to compute and write any block of one run (picklable)."""

    recipe: BackendRecipe
    identity: str  # the driver's backend identity: a worker computing other numbers refuses
    source: str
    key: str | None
    level: int | None
    axis_index: int
    axis: str
    norm: Normalisation
    where: str
    plane_shape: tuple[int, int]
    tile: int
    halo: int
    batch: int
    blend: str
    target: str
    layout: OutputLayout
    run_hash: str
    mode: PromptMode = PromptMode()  # prompted models: the run's points, or --prompts auto
    tta: bool = False


def run_block(task: BlockTask, index: int, start: int, stop: int) -> dict[str, Any]:
    """Compute and write block `index` (planes start..stop-1) on this worker; returns its counts."""
    from emseg_rt.io.ome_zarr import open_volume
    from emseg_rt.runtime.segment import read_slab, region_of
    from emseg_rt.runtime.slab import segment_planes
    from emseg_rt.runtime.tiling import plan_tiles

    backend = worker_backend(task.recipe)
    if backend.spec.identity != task.identity:
        raise EmsegError(f"a worker loaded a different model ({backend.spec.identity} vs {task.identity}); "
                         "workers need the same packages, checkpoints and library versions as the driver")
    volume = open_volume(task.source, key=task.key, level=task.level, spatial=True)
    slab = read_slab(volume.array, start, stop, task.axis_index, task.axis, task.norm, task.where)
    timings: dict[str, float] = {}
    prompt_counts: dict[str, int] = {}
    plan = plan_tiles(task.plane_shape, task.tile, task.halo)
    density = np.empty(slab.shape, np.float32) if task.layout.density else None
    labels, probs, tiles = segment_planes(backend, slab, plan, task.mode, start=start, axis=task.axis_index,
                                          batch=task.batch, blend=task.blend,
                                          probabilities=task.layout.probabilities,
                                          label_type=task.layout.label_dtype, timings=timings, tta=task.tta,
                                          counts=prompt_counts, density_out=density)
    store = OutputStore(Path(task.target), task.layout, task.run_hash)
    store.attach()
    store.write_block(index, region_of(start, stop, task.axis_index), np.moveaxis(labels, 0, task.axis_index),
                      None if probs is None else np.moveaxis(probs, 1, task.axis_index + 1),
                      None if density is None else np.moveaxis(density, 0, task.axis_index))
    counts = np.bincount(labels.ravel(), minlength=len(task.layout.classes) + 1)[: len(task.layout.classes) + 1]
    return {"index": index, "planes": stop - start, "tiles": tiles, "compute": timings.get("compute", 0.0),
            "stitch": timings.get("stitch", 0.0), "label_counts": counts.tolist(), "prompt_counts": prompt_counts}


def check_address(address: str) -> None:
    """EmsegError for a --dask value that is neither local:N nor a scheduler address."""
    if address.startswith("local:"):
        count = address.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise EmsegError(f"--dask {address!r}: local:N needs a worker count N >= 1")
    elif "://" not in address and ":" not in address:
        raise EmsegError(f"--dask {address!r}: give local:N or a scheduler address such as tcp://host:8786")


def open_client(address: str, say: Callable[[str], None]) -> tuple[Any, Any]:
    """(client, cluster or None) for `local:N` (a LocalCluster of N one-thread worker processes) or a
    scheduler address. Prints the dashboard address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency
        raise EmsegError("--dask needs dask.distributed: pip install 'dask[distributed]'") from None
    check_address(address)
    cluster = None
    if address.startswith("local:"):
        cluster = LocalCluster(n_workers=int(address.removeprefix("local:")), threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=50)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise EmsegError(f"--dask {address}: cannot reach the scheduler ({exc}); start `dask scheduler` "
                             "and workers, or use --dask local:N") from None
    say(f"dask: {len(client.scheduler_info().get('workers', {}))} workers, dashboard {client.dashboard_link}")
    return client, cluster


def run_blocks_on_cluster(address: str, task: BlockTask, pending: Sequence[tuple[int, int, int]],
                          say: Callable[[str], None], on_block: Callable[[dict[str, Any]], None]) -> None:
    """Submit every pending block as a task and report each finished one to `on_block` (in the driver)."""
    from distributed import as_completed

    client, cluster = open_client(address, say)
    try:
        futures = [client.submit(run_block, task, index, start, stop, retries=TASK_RETRIES, pure=False,
                                 key=f"emseg-block-{task.run_hash[:12]}-{index}")
                   for index, start, stop in pending]
        started, done, planes = time.perf_counter(), 0, 0
        for future in as_completed(futures):
            result = future.result()  # re-raises the task's EmsegError (one line) or a bug
            on_block(result)
            done, planes = done + 1, planes + result["planes"]
            elapsed = time.perf_counter() - started
            rate = planes / elapsed if elapsed > 0 else 0.0
            eta = (sum(b1 - b0 for _, b0, b1 in pending) - planes) / rate if rate else float("inf")
            say(f"dask: {done}/{len(pending)} blocks, {rate:.2f} slices/s, ETA {eta:.0f} s")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
