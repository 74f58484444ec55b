"""`segment --dask`: the same block computation as the single-process stream, one Dask task per block.

A block is `block` whole planes, so its output is whole chunks that no other task touches. A task runs
the one block driver (`runtime.block.BlockDriver.run`: read → segment → `OutputStore.write_block`, which writes
the chunks and then the done-marker), on a backend the worker process loaded once and keeps.
A task whose worker dies is retried elsewhere; recomputing a block writes the same bytes, so the output is
byte-identical to a single-process run. The driver (the process that called `segment_volume`) holds the
output lock, writes the run record, submits the pending blocks and marks the output complete.

    segment_volume("cell.zarr", "out.zarr", dask="local:2")        # a LocalCluster of 2 one-thread workers
    segment_volume("cell.zarr", "out.zarr", dask="tcp://sched:8786")  # an existing cluster
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from distributed import Client, LocalCluster, as_completed, get_worker

from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import Backend, cpu_threads
from emseg_rt.runtime.block import Block, BlockDriver, BlockJob, BlockSummary, open_input, pass_sink, store_sink
from emseg_rt.runtime.loader import load_backend
from emseg_rt.runtime.output import OutputLayout, OutputStore
from emseg_rt.runtime.planes import PlanePass

TASK_RETRIES = 3  # a block whose worker died is resubmitted this many times
# Every block of a Dask run is computed on one CPU thread (a worker runs as many blocks at once as it has
# threads), so its bytes do not depend on the machines the workers run on; recorded as the run's thread count.
WORKER_THREADS = 1


@dataclass(frozen=True)
class BackendRecipe:
    """How a worker loads the run's backend (the arguments of `load_backend`)."""

    model: str | None
    backend: str
    device: str
    precision: str
    checkpoints: tuple[str, ...] = ()

    def load(self) -> Backend:
        return load_backend(self.model, self.backend, _worker_device(self.device), self.precision, self.checkpoints)


def _worker_device(device: str) -> str:
    """'cuda' on a worker of a machine with several GPUs → that worker's own GPU (worker name modulo count)."""
    if device != "cuda":
        return device
    count = torch.cuda.device_count()
    if count <= 1:
        return device
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
    threads: int | None  # the CPU threads each block is computed with (WORKER_THREADS; None on a GPU)
    source: str
    key: str | None
    level: int | None
    job: BlockJob
    target: str
    layout: OutputLayout
    run_hash: str
    roi: tuple[tuple[int | None, int | None], ...] | None = None  # the region the driver segments (--roi)
    plane_pass: PlanePass | None = None  # --planes: a pass's blocks, written into it instead of the output


def run_block_task(task: BlockTask, block: Block) -> BlockSummary:
    """Compute and write one block on this worker with the one block driver; returns what the driver counts."""
    backend = worker_backend(task.recipe)
    if backend.spec.identity != task.identity:
        raise EmsegError(f"a worker loaded a different model ({backend.spec.identity} vs {task.identity}); "
                         "workers need the same packages, checkpoints and library versions as the driver")
    threads = cpu_threads(backend)
    if threads is not None and task.threads is not None and threads != task.threads:
        torch.set_num_threads(task.threads)  # this worker process computes the run's blocks, and nothing else
    volume, _ = open_input(task.source, task.key, task.level, task.roi)  # as the driver opened it (2D: one plane)
    if task.plane_pass is not None:
        sink = pass_sink(task.plane_pass)
    else:
        store = OutputStore(Path(task.target), task.layout, task.run_hash)
        store.attach()
        sink = store_sink(store, task.job.axis_index)
    driver = BlockDriver(backend, volume.array, task.job, sink)
    summary = driver.run(block).summary
    summary.timings = {stage: driver.timings[stage] for stage in ("compute", "stitch")}
    return summary


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


def run_blocks_on_cluster(address: str, task: BlockTask, pending: Sequence[Block], say: Callable[[str], None],
                          on_block: Callable[[BlockSummary], None]) -> None:
    """Submit every pending block as a task and hand each finished one's summary to `on_block` (in the driver,
    which reports progress)."""
    client, cluster = open_client(address, say)
    try:
        futures = [client.submit(run_block_task, task, block, retries=TASK_RETRIES, pure=False,
                                 key=f"emseg-block-{task.run_hash[:12]}-{task.job.axis}-{block[0]}")
                   for block in pending]
        for future in as_completed(futures):
            on_block(future.result())  # re-raises the task's EmsegError (one line) or a bug
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
