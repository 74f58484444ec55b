"""`segment_volume`: stream a 3D volume through a backend into an OME-Zarr label image, resumably.

The jobs live in their own modules: `request` (what the user asked, checked once), `plan` (tile plan, blocks,
layout, configuration), `block` (the unit of work and the one driver that computes it), `output` (the output
directory, its arrays and done-markers), `stream` (reader / compute / writer threads), `distributed` (Dask),
`progress` (the one reporter) and `status` (OUT/.emseg-rt/status/, what `emseg-rt status` prints). This
module opens the input and the output and schedules the pending blocks: on threads here, or one Dask task per
block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.constants import DEFAULT_LABEL_NAME
from emseg_rt.io import source_name
from emseg_rt.io.volume import available_memory, whole_array
from emseg_rt.progress import Progress
from emseg_rt.errors import EmsegError
from emseg_rt.runtime.backends.base import Backend, cpu_threads
from emseg_rt.runtime.block import Block, BlockDriver, BlockSummary, open_input, store_sink
from emseg_rt.runtime.claim import OutputClaim, claim_output
from emseg_rt.runtime.distributed import WORKER_THREADS, BackendRecipe, BlockTask, run_blocks_on_cluster
from emseg_rt.runtime.fingerprint import check_no_missing_chunks, input_fingerprint
from emseg_rt.runtime.instances import instance_label_name, write_instances
from emseg_rt.runtime.mask import open_mask
from emseg_rt.runtime.normalise import dataset_normalisation, parse_window
from emseg_rt.runtime.output import OutputStore
from emseg_rt.runtime.passes import run_plane_passes
from emseg_rt.runtime.plan import RunPlan
from emseg_rt.runtime.prompts import PointSet, check_points_inside, fractional_note
from emseg_rt.runtime.reference import reference_window
from emseg_rt.runtime.report import SegmentReport
from emseg_rt.runtime.request import SegmentRequest, Say, check_against, open_backend
from emseg_rt.runtime.status import StatusKeeper
from emseg_rt.runtime.stream import run_stream
from emseg_rt.runtime.target import OutputTarget, plan_target


def segment_volume(
    input: Any,
    output: str | Path | None = None,
    *,
    model: str | None = None,
    checkpoints: Sequence[str | Path] = (),
    backend: str | Backend = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch: int = 4,
    halo: int | None = None,
    blend: str = "center",
    axis: str = "z",
    block: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    probabilities: bool = False,
    key: str | None = None,
    level: int | None = None,
    label_name: str = DEFAULT_LABEL_NAME,
    levels: int | None = None,
    into_input: bool = False,
    window: str | None = None,
    progress: bool = False,
    report: str | Path | None = None,
    prefetch: int = 2,
    say: Say | None = None,
    allow_missing_chunks: bool = False,
    dask: str | None = None,
    prompts: str | Path | PointSet | None = None,
    tta: bool = False,
    instances: str | Sequence[str] | None = None,
    peak_threshold: float | None = None,
    shards: bool = True,
    roi: str | None = None,
    mask: Any = None,
    mask_level: int | None = None,
    planes: str | None = None,
) -> SegmentReport:
    """Segment a 3D volume plane by plane into an OME-Zarr label image and return a SegmentReport (a 2D image:
    as one plane, into a 2D label image, axes y, x). Many files, one output each: `runtime.batch.segment_files`.

    The keywords are the fields of `SegmentRequest` (documented there); batch, halo, blend, axis, block, resume,
    overwrite, probabilities, label_name, levels, into_input, prefetch, tta and shards are its `SegmentOptions`.
    `mask` / `mask_level`: segment only inside a label or binary volume (`runtime.mask`); `planes`
    ("xy,xz,yz"): orthoplane fusion (`runtime.planes`). What
    `overwrite`, `resume` and the output lock guarantee: `runtime.claim`. In-memory labels: `segment_labels`.
    """
    return run_segment(SegmentRequest.from_keywords(
        input, output, model=model, checkpoints=checkpoints, backend=backend, device=device, precision=precision,
        batch=batch, halo=halo, blend=blend, axis=axis, block=block, resume=resume, overwrite=overwrite,
        probabilities=probabilities, key=key, level=level, label_name=label_name, levels=levels,
        into_input=into_input, window=window, progress=progress, report=report, prefetch=prefetch, say=say,
        allow_missing_chunks=allow_missing_chunks, dask=dask, prompts=prompts, tta=tta, instances=instances,
        peak_threshold=peak_threshold, shards=shards, roi=roi, mask=mask, mask_level=mask_level,
        **({} if planes is None else {"planes": planes})))


def run_segment(request: SegmentRequest) -> SegmentReport:
    """Run a request (validated here if it was built directly): open the input, claim the output, compute every
    pending block, mark it complete."""
    t_start = time.perf_counter()
    request = request.checked_once()
    source, options = request.source, request.options
    volume, where = open_input(source, request.key, request.level, request.region)
    check_points_inside(request.points, volume.shape)
    check_no_missing_chunks(volume.array, where, request.allow_missing_chunks)
    window = parse_window(request.window) if request.window else None
    norm = dataset_normalisation(whole_array(volume.array), where, window=window,
                                 reference=reference_window(request.model, request.backend))
    target = plan_target(source, volume, request.output, options, request.level)
    claim = claim_output(target.output, source if isinstance(source, Path) else None, resume=options.resume,
                         overwrite=options.overwrite, into_input=options.into_input, lock_path=target.lock)
    status = StatusKeeper(claim.target, claim.output)  # OUT/.emseg-rt/status/ (`emseg-rt status OUT`)
    try:
        rep = _segment_claimed(request, claim, volume, (norm, where), target, t_start, status)
        if rep.complete:
            status.complete(rep.to_dict())  # in the staged output with --overwrite: it moves with it
            claim.commit()  # --overwrite: the new output replaces the old one only now, in one rename
            target.register(tuple(instance_label_name(c) for c in rep.instances))
        else:
            status.incomplete()
    except (Exception, KeyboardInterrupt) as exc:  # a kill leaves "running" with a pid that is gone
        status.fail(exc)
        raise
    finally:
        claim.release()
    rep.wall_seconds = time.perf_counter() - t_start
    if request.report is not None:
        rep.write_json(request.report)
    return rep


def _segment_claimed(request: SegmentRequest, claim: OutputClaim, volume: Any, read_as: tuple[Any, str],
                     target: OutputTarget, t_start: float, status: StatusKeeper) -> SegmentReport:
    """Load the backend, open or create the output at `claim.target`, compute every pending block (here, or one
    task per block on a Dask cluster), then the pyramid and the instances. read_as: (normalisation, name)."""
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        request.note(message)

    engine, owns_backend, device = open_backend(request, note)
    try:
        threads = cpu_threads(engine)  # on a CPU: this process's threads, or each Dask worker's one
        threads = WORKER_THREADS if threads is not None and request.dask is not None else threads
        run = RunPlan(engine, volume, request.options, *read_as, check_against(engine, request), target, threads,
                      open_mask(request.mask, request.mask_level, volume))
        if fraction := fractional_note(request.points):
            note(fraction)
        run.check_memory(volume.dtype.itemsize, available_memory())
        rep = run.report(source_name(request.source), claim.output, request.model or "default", device,
                         " ".join(notes))
        store = run.open_store(claim.target, claim.resumable, input_fingerprint(volume))
        check_finished_inputs(run, store, volume.array, note)
        if request.dask is None:
            _plane_passes(run, store, volume.array, request, rep)
            tally = _Tally(run, store, rep, request, status)
            tally.timed(lambda pending: _run_on_threads(engine, volume.array, run, store, tally, pending))
    finally:
        if owns_backend:
            engine.close()
    if request.dask is not None:
        _plane_passes(run, store, volume.array, request, rep, (request.dask, _block_task(request, run, store)))
        tally = _Tally(run, store, rep, request, status)
        tally.timed(lambda pending: _run_on_cluster(request, run, store, tally, pending))
    rep.complete = store.mark_complete_if_done(len(run.blocks), lambda: _instance_stage(run, store, rep))
    if rep.complete:
        for plane_pass in run.job.fuse:  # --planes: the passes' probabilities are not part of the output
            plane_pass.remove()
    rep.finish(tally.timings, tally.loop_seconds, time.perf_counter() - t_start)
    rep.setup_seconds = tally.setup_done - t_start
    return rep


def check_finished_inputs(run: RunPlan, store: OutputStore, array: Any, say: Say) -> None:
    """On resume: read the planes of every finished block again and compare them with the digest its marker
    recorded; EmsegError at the first block whose input changed (a resume would mix old and new input). Nothing
    is read when no block is pending: a resume that computes nothing mixes nothing (the pyramid and instances
    come from the output, not the input)."""
    done = store.done_blocks()
    if not done or all(index in done for index, _, _ in run.blocks):
        return
    say(f"resume: checking that the input of the {len(done)} finished blocks is unchanged")
    driver = BlockDriver(run.engine, array, run.job, lambda result: None)
    for block in run.blocks:
        index, start, stop = block
        if index in done and not driver.input_unchanged(block, store.input_digest(index)):
            raise EmsegError(f"the input changed since {store.root} was started: {run.options.axis} {start}.."
                             f"{stop - 1} no longer holds the values block {index} was computed from; a resume "
                             "would mix old and new input; pass --overwrite to start again")


class _Tally:
    """The schedulers' common bookkeeping: the pending blocks, one progress reporter, and the report's counters
    (blocks, planes, voxels, tiles, label and prompt counts, stage timings) from each block's summary."""

    def __init__(self, run: RunPlan, store: OutputStore, rep: SegmentReport, request: SegmentRequest,
                 status: StatusKeeper) -> None:
        self.run, self.rep, self.request, self.status = run, rep, request, status
        done_before = store.done_blocks()
        self.pending = [b for b in run.blocks if b[0] not in done_before]
        rep.blocks_done_before = len(done_before)
        self.label_counts = np.zeros(len(run.layout.classes) + 1, dtype=np.int64)
        self.prompt_counts: dict[str, int] = {}
        self.timings = {"read": 0.0, "write": 0.0, "compute": 0.0, "stitch": 0.0}
        self.setup_done = self.loop_seconds = 0.0
        pending_planes = sum(b1 - b0 for _, b0, b1 in self.pending)
        self.progress = Progress("segment", run.depth, done=run.depth - pending_planes, say=request.say,
                                 enabled=request.progress and bool(self.pending),
                                 per_unit=(run.plane_voxels / 1e6, "Mvox"), listener=request.on_progress)
        status.start(run.hash, (len(run.blocks) - len(self.pending), len(run.blocks)),
                     (run.depth - pending_planes, run.depth))

    def timed(self, schedule: Any) -> None:
        """Run `schedule(pending blocks)`, timing the loop; then the counts into the report."""
        self.setup_done = time.perf_counter()
        try:
            schedule(self.pending)
        finally:
            self.loop_seconds = time.perf_counter() - self.setup_done
            self.progress.close(said=False)
        self._finish()

    def add(self, summary: BlockSummary) -> None:
        rep = self.rep
        self.label_counts[:] += np.asarray(summary.label_counts, dtype=np.int64)
        rep.blocks_computed += 1
        rep.slices_computed += summary.planes
        rep.voxels_computed += summary.planes * self.run.plane_voxels
        rep.tiles_computed += summary.tiles
        for name, count in summary.prompt_counts.items():
            self.prompt_counts[name] = self.prompt_counts.get(name, 0) + count
        for stage, seconds in summary.timings.items():
            self.timings[stage] += seconds
        self.progress.advance(summary.planes)
        self.status.advance(summary.planes)

    def _finish(self) -> None:
        rep, run, counts = self.rep, self.run, self.prompt_counts
        if self.pending:
            self.progress.close()
        rep.auto_points = counts.get("auto_points", 0)
        mode = run.choices.mode
        if mode.auto_threshold is not None and self.pending:
            self.request.note(f"prompts auto: {counts.get('auto_points', 0)} density peaks >= "
                              f"{mode.auto_threshold:.3g} in {rep.slices_computed} planes became positive prompts")
        if counts.get("tiles_over"):
            self.request.note(f"prompts: {counts['tiles_over']} tiles held more than {mode.max_points} points; kept "
                              f"the {mode.max_points} nearest each tile's centre ({counts['points_dropped']} dropped)")
        classes = run.layout.classes
        rep.label_counts = {("background" if i == 0 else classes[i - 1]): int(c)
                            for i, c in enumerate(self.label_counts)}


def _run_on_threads(engine: Backend, array: Any, run: RunPlan, store: OutputStore, tally: _Tally,
                    pending: list[Block]) -> None:
    """The threaded scheduler: the driver's read, compute and write stages on a reader, this and a writer
    thread (`runtime.stream`), bounded queues `prefetch` deep."""
    driver = BlockDriver(engine, array, run.job, store_sink(store, run.axis_index))
    driver.timings = tally.timings  # the stages add their seconds straight into the report's timings

    def write(block: Block, result: Any) -> None:
        driver.write(result)
        tally.add(result.summary)

    run_stream(pending, driver.read, driver.compute, write, run.options.prefetch)


def _block_task(request: SegmentRequest, run: RunPlan, store: OutputStore) -> BlockTask:
    """What a Dask worker needs to compute any block of this run (`runtime.distributed.BlockTask`)."""
    # the precision this process resolved ('auto' measures on a CPU): every worker loads the same path
    recipe = BackendRecipe(request.model, str(request.backend), request.device, run.engine.spec.precision,
                           tuple(str(c) for c in request.checkpoints))
    return BlockTask(recipe=recipe, identity=run.engine.spec.identity, threads=run.threads,
                     source=str(request.source), key=request.key, level=request.level, job=run.job,
                     target=str(store.root), layout=run.layout, run_hash=run.hash, roi=request.region)


def _plane_passes(run: RunPlan, store: OutputStore, array: Any, request: SegmentRequest, rep: SegmentReport,
                  cluster: tuple[str, BlockTask] | None = None) -> None:
    """`--planes`: the extra passes, before the run's own blocks (which read them); none when those are all
    done already."""
    if run.job.fuse and len(store.done_blocks()) < len(run.blocks):
        rep.plane_seconds = run_plane_passes(run, array, request.progress, request.say, cluster)


def _run_on_cluster(request: SegmentRequest, run: RunPlan, store: OutputStore, tally: _Tally,
                    pending: list[Block]) -> None:
    """The Dask scheduler: every pending block as one task (`runtime.distributed`)."""
    if pending:
        run_blocks_on_cluster(request.dask, _block_task(request, run, store), pending, request.note, tally.add)


def _instance_stage(run: RunPlan, store: OutputStore, rep: SegmentReport) -> None:
    """Every requested class's instance label image, after the semantic blocks and pyramid, before the root
    is marked complete (`runtime.instances`); resumes from the output's done-markers."""
    if not run.choices.instances:
        return
    t0 = time.perf_counter()
    rep.instances.update(write_instances(store, run.choices.instances, run.blocks, run.axis_index, run.hash,
                                         run.choices.seeds))
    rep.instance_seconds = time.perf_counter() - t0

