"""The one training loop every recipe plugs into: steps (or epochs), resume, checkpoints, progress.

A recipe (`trainer`: ScSAM heads, `pretrain`: MAESTER / HiS4MAE encoders, `prompt_das`, `samda`) brings its
model and optimiser set-up, a step function and its report; `run_loop` does the rest the same way for all:

    for at in start+1 .. stop:  terms = recipe.step(at)             one optimiser step (or one epoch)
                                every `record_every` units and at `stop`: the mean losses since the last record
                                every `checkpoint_every` units and at `stop`: CKPT and CKPT.state
                                on_step(at, total, terms); the progress bar or log line (`emseg_rt.progress`)

Files for `--out CKPT`: CKPT holds the weights the recipe names, CKPT.state everything an exact resume needs;
both are written to a temporary name and renamed (`atomic_save`), so each always holds a complete file.
Resume: the recipe checks `--out` / `--resume` (`check_out`) and reads the state (`read_resume_state`:
torch.load(weights_only=True), checked field by field) before anything slow, restores its modules from it
(`restoring`), and `run_loop` continues after the state's unit with its loss records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.io.outputs import check_folder_of, write_file_atomic
from emseg_rt.models.checkpoint import load_error_detail
from emseg_rt.progress import Progress, Say

STATE_SUFFIX = ".state"
LossRecord = dict[str, float]


# ------------------------------------------------------------------------------------------- files


def state_path_for(out: Path) -> Path:
    """CKPT → CKPT.state, the resume state beside the weights."""
    return out.with_name(out.name + STATE_SUFFIX)


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename; EmsegError (one line) when the file cannot be written
    (the temporary file removed, `path` as it was; `emseg_rt.io.outputs.write_file_atomic`)."""
    try:
        write_file_atomic(path, lambda tmp: torch.save(obj, tmp), "--out")
    except RuntimeError as exc:  # torch.save reports an unopenable or full file as RuntimeError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmsegError(f"cannot write {path} ({detail}); choose a writable --out with free space") from None


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` copied to the CPU (a file trained on a GPU loads anywhere): what CKPT holds."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def check_out(out: Path, resume: bool, what: str = "training") -> Path:
    """The --out / --resume rules every recipe shares: a new run refuses an existing `out`, a resume needs
    its state (`out`.state), and the folder must exist and be writable (one-line EmsegError each).
    Returns the state's path."""
    state_path = state_path_for(out)
    if out.is_dir():
        raise EmsegError(f"--out {out}: is a directory; give the checkpoint file to write")
    if out.exists() and not resume:
        raise EmsegError(f"{out} exists; pass --resume to continue that run or choose another --out")
    if resume and not state_path.exists():
        raise EmsegError(f"--resume: no {what} state {state_path} next to {out}; start without --resume")
    check_folder_of(out, "--out")  # exists, a folder, writable (emseg_rt.io.outputs: every command's rule)
    return state_path


# ------------------------------------------------------------------------------------------- resume


def read_resume_state(state_path: Path, keys: dict[str, type], command: str) -> dict:
    """Read a `--resume` state with torch.load(weights_only=True) and check that `keys` hold values of their
    types; EmsegError (one line) for a file `command` did not write (foreign, corrupt, or a pickle that would
    run code)."""
    foreign = f"--resume: {state_path} is not a {command.split()[-1]}ing state written by `{command}`"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure to unpickle safely is a bad file, reported in one line
        raise EmsegError(f"{foreign} ({load_error_detail(exc)}); start a new --out") from None
    if not isinstance(state, dict):
        raise EmsegError(f"{foreign} (holds a {type(state).__name__}); start a new --out")
    wrong = [key for key, kind in keys.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise EmsegError(f"{foreign} (missing or wrong: {', '.join(wrong)}); start a new --out")
    return state


def check_same_run(state: dict, model: str, data: str, settings: dict[str, Any], state_path: Path,
                   hint: str = "--stop-after ends a run early") -> None:
    """Refuse a `--resume` whose model, data or any setting differs from the state's, naming what differs."""
    if state["model"] != model:
        raise EmsegError(f"--resume: {state_path} belongs to model {state['model']}, not {model}; start a new --out")
    if state["data"] != data:
        raise EmsegError(f"--resume: {state_path} was trained on other --data volumes; pass the same ones or "
                         "start a new --out")
    changed = [f"{k} {state['settings'].get(k)!r} → {v!r}" for k, v in settings.items()
               if state["settings"].get(k) != v]
    if changed:
        raise EmsegError(f"--resume: {state_path} was written with other settings ({'; '.join(changed)}); resume "
                         f"with the same ones ({hint})")


def restore_error(exc: BaseException, state_path: Path, what: str) -> EmsegError:
    """The one-line error for a state whose tensors do not load into `what` (another size, a damaged file)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EmsegError(f"--resume: {state_path} does not fit {what} ({detail[:200]}); start a new --out")


@contextmanager
def restoring(state_path: Path, what: str) -> Iterator[None]:
    """Around a recipe's `load_state_dict` calls: a state that does not load into `what` is one EmsegError."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise restore_error(exc, state_path, what) from None


def config_digest(config: Any) -> str:
    """sha256 of a model config (a dataclass) as sorted JSON: part of every resume state's settings."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode()).hexdigest()


def volumes_digest(volumes: Sequence[Any]) -> str:
    """sha256 over every volume's shape, dtype and bytes (slice by slice, so array-likes are read once)."""
    digest = hashlib.sha256()
    for volume in volumes:
        digest.update(f"{tuple(volume.shape)} {np.dtype(volume.dtype)}".encode())
        for z in range(volume.shape[0]):
            digest.update(np.ascontiguousarray(volume[z]).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- the loop


class StepRecipe(Protocol):
    """What a recipe gives the loop (its model, optimiser and data are its own)."""

    def step(self, at: int) -> Any:
        """Unit `at` (1-based): one optimiser step (or one epoch) → its loss terms."""

    def record(self, terms: Any) -> LossRecord:
        """The loss terms as floats (what the loss records average)."""

    def status(self, record: LossRecord) -> str:
        """The run's own figures for the progress line, e.g. 'loss 0.213 (dice 0.100)'."""

    def weights(self) -> dict[str, torch.Tensor]:
        """What CKPT holds (on the CPU)."""

    def state(self, at: int, losses: list[LossRecord]) -> dict[str, Any]:
        """What CKPT.state holds after unit `at` (everything an exact resume needs)."""


@dataclass(frozen=True)
class Schedule:
    """How far a run goes, when it records losses and when it saves.

    label:            the progress reporter's name for the run.
    total:            units (steps or epochs) of the schedule: its length, the bar's total.
    stop:             the run ends after this unit (1 ≤ stop ≤ total; `--stop-after`): the ETA's end.
    checkpoint_every: units between CKPT / CKPT.state writes (and at `stop`).
    record_every:     units between loss records, each the mean of the units since the last (and at `stop`).
    unit:             'step' or 'epoch': the key of each loss record and of the state's position.
    """

    label: str
    total: int
    stop: int
    checkpoint_every: int
    record_every: int
    unit: str = "step"


@dataclass
class LoopResult:
    """What `run_loop` did: the unit it started after, the unit it ended at, all loss records, seconds."""

    start: int
    end: int
    seconds: float
    losses: list[LossRecord] = field(default_factory=list)


def mean_record(records: list[LossRecord]) -> LossRecord:
    """The mean of each term over `records`; one record is kept as it is (its values and their types)."""
    if len(records) == 1:
        return dict(records[0])
    return {key: float(np.mean([record[key] for record in records])) for key in records[0]}


def run_loop(recipe: StepRecipe, schedule: Schedule, out: Path, state: dict | None, *,
             on_step: Callable[[int, int, Any], None] | None = None, say: Say | None = None,
             quiet: bool = True) -> LoopResult:
    """Run `recipe` from after the state's unit (0 without a state) to `schedule.stop`, recording losses,
    writing CKPT (`out`) and CKPT.state, and reporting progress (a bar on a terminal, a line every 10 s
    through `say` in logs, nothing when `quiet`; once the first units are done, one line with the time the rest
    takes at the measured rate). A run already at its stop writes its files if CKPT is missing.

    on_step: on_step(unit, schedule.total, loss terms) after every unit (and its checkpoint).
    """
    state_path = state_path_for(out)
    start, losses = (state[schedule.unit], list(state["losses"])) if state is not None else (0, [])

    def save(at: int) -> None:
        atomic_save(recipe.weights(), out)
        atomic_save(recipe.state(at, losses), state_path)

    began = time.perf_counter()
    interval: list[LossRecord] = []
    # The bar counts the whole schedule; its ETA and the estimate line count to this run's stop (`--stop-after`).
    with Progress(schedule.label, schedule.total, done=start, unit=f"{schedule.unit}s", say=say,
                  enabled=not quiet, stop=schedule.stop) as progress:
        for at in range(start + 1, schedule.stop + 1):
            terms = recipe.step(at)
            record = recipe.record(terms)
            interval.append(record)
            if at % schedule.record_every == 0 or at == schedule.stop:
                losses.append({schedule.unit: at, **mean_record(interval)})
                interval = []
            if at % schedule.checkpoint_every == 0 or at == schedule.stop:
                save(at)
            if on_step is not None:
                on_step(at, schedule.total, terms)
            progress.advance(1, status=recipe.status(record))
    if start >= schedule.stop and not out.exists():
        save(start)
    return LoopResult(start=start, end=max(start, schedule.stop), seconds=time.perf_counter() - began, losses=losses)
