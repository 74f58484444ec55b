"""Which directory a `segment` run may write, and how `--overwrite` replaces an old output without losing it.

Guarantees (docs/runtime.md "What --overwrite, --resume and the lock promise"):

- An output is ours only if it holds our run record (the attributes of the zarr group `.emseg-rt`, written
  first, in one atomic file; outputs of earlier versions held `.emseg-rt/run.json`, still recognised).
  Anything else that is not an empty directory is never deleted, resumed into or written into.
- One writer at a time: an exclusive OS lock (`package.hold_lock`, `fcntl.flock`) on
  `<parent>/.<name>.emseg-rt.lock`, keyed on the output's real path (the parent's symlinks resolved; an
  image's label image locks beside the image, `runtime.target`), held for the run's life and released by
  the kernel when the process dies, so a stale lock cannot block anyone. A second run is refused with one
  line naming the holder's host and pid.
- `--overwrite` builds the new output in a sibling staging directory and, only once it is complete,
  exchanges the two directories in one `renameat2(RENAME_EXCHANGE)` call (Linux); the old output is then
  deleted under its staging name. A kill at any instant leaves OUT either the old complete output or the
  new complete one. Where the exchange is not available, two renames are used and a run that finds OUT
  missing beside a moved-aside complete output puts it back first.
- Only what is provably ours is ever removed: a sibling (staging or moved-aside directory) is named in the
  lock file before it is created, and the next run removes exactly the names the dead run noted (never by a
  pattern, never by glob: a user's `.OUT.emseg-rt-old-x` or a name with `*`/`[` in it is left alone). A
  directory holding only the start of our run state (a kill before the run record's rename) is taken as new.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from emseg_rt.errors import EmsegError
from emseg_rt.package import HeldLock, hold_lock, lock_path_beside

RUN_DIR = ".emseg-rt"
RUN_KEY = "emseg_rt_run"  # the run record's key in the attributes of the RUN_DIR zarr group
LEGACY_RECORD = "run.json"
_STAGING, _OLD = "emseg-rt-new", "emseg-rt-old"
_RECORD_TMP = re.compile(r"\.(zarr\.json|\.zattrs|\.zgroup)\.tmp[0-9]+")  # `write_record`'s temporary files


def record_files(attributes: dict, zarr_format: int) -> list[tuple[str, dict]]:
    """The metadata files of a zarr group holding `attributes`, in the order to write them: v3 one
    `zarr.json`; v2 `.zattrs` first (the record), then `.zgroup`."""
    if zarr_format == 2:
        return [(".zattrs", attributes), (".zgroup", {"zarr_format": 2})]
    return [("zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": attributes})]


def write_record(state: Path, attributes: dict, zarr_format: int) -> None:
    """Write the run-state group `state` holding `attributes` (`record_files`), each file atomically (temporary
    file + rename): the output is recognisably ours from the first rename on."""
    state.mkdir(parents=True, exist_ok=True)
    for name, payload in record_files(attributes, zarr_format):
        tmp = state / f".{name}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, state / name)


def read_record(path: Path) -> dict | None:
    """The run record in `path`'s run-state group (v3, v2 or a legacy run.json), or None."""
    state = path / RUN_DIR
    for name, pick in (("zarr.json", lambda d: d.get("attributes", {}).get(RUN_KEY)),
                       (".zattrs", lambda d: d.get(RUN_KEY)), (LEGACY_RECORD, lambda d: d)):
        try:
            record = pick(json.loads((state / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict) and "config_hash" in record:
            return record
    return None


def is_our_output(path: Path) -> bool:
    """True when `path` holds an emseg-rt run record (and so may be resumed or replaced)."""
    return read_record(path) is not None


@dataclass
class OutputClaim:
    """The locked right to write one output.

    output:    the path the user gave (what readers will open).
    target:    where this run writes: `output` itself, or a staging sibling when replacing an old output.
    resumable: the target holds an interrupted run of ours that may be finished.
    """

    output: Path
    target: Path
    resumable: bool
    lock: HeldLock

    @property
    def replaces(self) -> bool:
        return self.target != self.output

    def commit(self) -> None:
        """Make a complete staged output the output (no-op when the run wrote `output` itself)."""
        if self.replaces:
            _swap_into_place(self.target, self.output, self.lock)

    def release(self) -> None:
        """Drop the lock; a staging directory of a run that did not commit is removed."""
        try:
            if self.replaces and self.target.exists():
                shutil.rmtree(self.target, ignore_errors=True)
        finally:  # the lock file (with its notes for cleaning up) stays only if something was left behind
            self.lock.release()


def claim_output(output: Path, source: Path | None, *, resume: bool, overwrite: bool,
                 into_input: bool = False, lock_path: Path | None = None) -> OutputClaim:
    """Check `output`, take its lock, and decide where this run writes. EmsegError (one line) when the
    output may not be written: inside or around the input, a symlink, not ours, locked, not writable.

    source:     the local input (None for an array in memory or a URL: nothing local to protect).
    into_input: the output is the input image's `labels/<name>` (`--into-input`): inside it on purpose.
    lock_path:  the lock file (default: `.<name>.emseg-rt.lock` beside the output's real path).
    """
    _check_location(output, source, into_input)
    lock = hold_lock(lock_path or lock_path_beside(output), f"output {output}")
    try:
        _clean_up_after_dead_run(output, lock)
        target, resumable = _target(output, resume, overwrite, lock)
    except BaseException:
        lock.release()
        raise
    return OutputClaim(output, target, resumable, lock)


def _check_location(output: Path, source: Path | None, into_input: bool = False) -> None:
    if output.is_symlink():
        raise EmsegError(f"output {output} is a symbolic link; pass the directory it points to as --out")
    out, src = output.resolve(), (source or output).resolve()
    if source is not None and not into_input and (out == src or src in out.parents):
        raise EmsegError(f"output {output} is the input or inside it; choose another --out")
    if source is not None and out in src.parents:
        raise EmsegError(f"output {output} contains the input {source}; choose another --out")
    if output.exists() and not output.is_dir():
        raise EmsegError(f"output {output} is a file, not a directory; choose another --out")
    parent = _parent(output)
    if not parent.is_dir():
        raise EmsegError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK | os.X_OK)):
        raise EmsegError(f"cannot write {output}: {parent if not output.exists() else output} is not writable")


def _parent(output: Path) -> Path:
    return output.parent if str(output.parent) else Path(".")


def _sibling(output: Path, kind: str, lock: HeldLock) -> Path:
    """A new sibling directory name for `output`, noted in the lock file before anything creates it."""
    name = f".{output.name}.{kind}-{secrets.token_hex(4)}"
    lock.note(kind, name)
    return _parent(output) / name


def _noted_siblings(output: Path, lock: HeldLock, kind: str) -> list[Path]:
    """The sibling directories of `kind` that the lock's previous holder noted and that exist (exact names of
    the form `_sibling` makes: nothing found by a pattern, nothing that is not a plain directory)."""
    found = []
    for name in lock.noted(kind):
        prefix = f".{output.name}.{kind}-"
        path = _parent(output) / name
        if (name.startswith(prefix) and re.fullmatch(r"[0-9a-f]{8}", name[len(prefix):])
                and path.is_dir() and not path.is_symlink()):
            found.append(path)
    return found


def _clean_up_after_dead_run(output: Path, lock: HeldLock) -> None:
    """What the lock's previous holder left beside the output if it died (we hold the lock, so it is not
    running): the two-rename fallback can die between its renames, so a moved-aside output of ours is put
    back first; then its staging and moved-aside directories are removed."""
    aside = _noted_siblings(output, lock, _OLD)
    if not output.exists() and aside and is_our_output(aside[-1]):
        os.rename(aside[-1], output)
    for stale in _noted_siblings(output, lock, _STAGING) + _noted_siblings(output, lock, _OLD):
        shutil.rmtree(stale, ignore_errors=True)


def _target(output: Path, resume: bool, overwrite: bool, lock: HeldLock) -> tuple[Path, bool]:
    if not output.exists() or _nothing_written(output):
        return output, False
    if not is_our_output(output):
        action = "replace" if overwrite else "resume into" if resume else "write into"
        raise EmsegError(f"output {output} exists and is not an emseg-rt output (no {RUN_DIR} run record); "
                         f"refusing to {action} it; choose another --out")
    if overwrite:
        return _sibling(output, _STAGING, lock), False  # the old output stays until the new one is complete
    if resume:
        return output, True
    raise EmsegError(f"output {output} already exists; pass --resume to finish it or --overwrite to replace it")


def _nothing_written(output: Path) -> bool:
    """True for an empty directory, or one holding only the start of our run state: `.emseg-rt/` with nothing
    but `write_record`'s temporary files (a kill before the record's rename); those files are removed."""
    entries = list(output.iterdir())
    if not entries:
        return True
    state = output / RUN_DIR
    if [entry.name for entry in entries] != [RUN_DIR] or state.is_symlink() or not state.is_dir():
        return False
    leftovers = list(state.iterdir())
    if not all(_RECORD_TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink() for p in leftovers):
        return False
    for leftover in leftovers:
        leftover.unlink()
    return True


def _swap_into_place(staged: Path, output: Path, lock: HeldLock) -> None:
    if not output.exists():
        os.rename(staged, output)
        return
    if _exchange(staged, output):
        shutil.rmtree(staged, ignore_errors=True)  # `staged` now names the old output
        return
    aside = _sibling(output, _OLD, lock)
    os.rename(output, aside)
    os.rename(staged, output)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
