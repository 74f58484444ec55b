"""The extra passes of `segment --planes` (`runtime.planes`), scheduled like the run's own blocks.

Each pass is the one block driver over blocks along its axis (`RunPlan.pass_plan`), its pending blocks on the
threaded stream or as Dask tasks, written by `block.pass_sink` into the pass's run state. A resume skips the
blocks whose markers are set, after checking that their input is unchanged (the digests they recorded).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.progress import Progress
from emseg_rt.runtime.block import Block, BlockDriver, pass_sink
from emseg_rt.runtime.distributed import BlockTask, run_blocks_on_cluster
from emseg_rt.runtime.plan import RunPlan
from emseg_rt.runtime.planes import PlanePass, plane_name
from emseg_rt.runtime.stream import run_stream

Say = Callable[[str], None]


def run_plane_passes(run: RunPlan, array: Any, progress: bool, say: Say | None,
                     cluster: tuple[str, BlockTask] | None = None) -> dict[str, float]:
    """Every extra pass of `run` (none without --planes): its pending blocks computed and written; returns the
    seconds each pass took, by plane orientation. cluster: (--dask address, the run's block task) to run the
    blocks as Dask tasks; None: on threads here."""
    seconds = {}
    for plane_pass in run.job.fuse:
        t0 = time.perf_counter()
        plan = run.pass_plan(plane_pass)
        pending = _pending(plan, plane_pass, array, say)
        if pending:
            _compute(plan, plane_pass, array, pending, progress, say, cluster)
        seconds[plane_name(plane_pass.axis)] = time.perf_counter() - t0
    return seconds


def _pending(plan: RunPlan, plane_pass: PlanePass, array: Any, say: Say | None) -> list[Block]:
    """The pass's blocks without a marker; EmsegError when a finished one's input changed since."""
    done = plane_pass.markers.done()
    pending = [block for block in plan.blocks if block[0] not in done]
    if done and pending:
        if say is not None:
            say(f"resume: checking that the input of the {len(done)} finished {plane_name(plane_pass.axis)} blocks "
                "is unchanged")
        driver = BlockDriver(plan.engine, array, plan.job, lambda result: None)
        for block in plan.blocks:
            index, start, stop = block
            if index in done and not driver.input_unchanged(block, plane_pass.markers.value(index)):
                raise EmsegError(f"the input changed since this run was started: {plane_pass.axis} {start}..{stop - 1}"
                                 f" no longer holds the values its {plane_name(plane_pass.axis)} pass read; a resume "
                                 "would mix old and new input; pass --overwrite to start again")
    return pending


def _compute(plan: RunPlan, plane_pass: PlanePass, array: Any, pending: list[Block], progress: bool,
             say: Say | None, cluster: tuple[str, BlockTask] | None) -> None:
    """The pending blocks of one pass, on threads here or as Dask tasks, reported by the one progress reporter."""
    pending_planes = sum(stop - start for _, start, stop in pending)
    bar = Progress(f"segment {plane_name(plane_pass.axis)}", plan.depth, done=plan.depth - pending_planes, say=say,
                   enabled=progress, per_unit=(plan.plane_voxels / 1e6, "Mvox"))
    try:
        if cluster is not None:
            address, task = cluster
            pass_task = dataclasses.replace(task, job=plan.job, plane_pass=plane_pass)
            run_blocks_on_cluster(address, pass_task, pending, say or (lambda _: None),
                                  lambda summary: bar.advance(summary.planes))
            return
        driver = BlockDriver(plan.engine, array, plan.job, pass_sink(plane_pass))

        def write(block: Block, result: Any) -> None:
            driver.write(result)
            bar.advance(result.summary.planes)

        run_stream(pending, driver.read, driver.compute, write, plan.options.prefetch)
    finally:
        bar.close()
