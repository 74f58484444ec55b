"""Which directory a `segment` run may write, and how `--overwrite` replaces an old output without losing it.

Guarantees (docs/runtime.md "What --overwrite, --resume and the lock promise"):

- An output is ours only if it holds our run record (the attributes of the zarr group `.emseg-rt`, written
  first, in one atomic file; outputs of earlier versions held `.emseg-rt/run.json`, still recognised).
  Anything else that is not an empty directory is never deleted, resumed into or written into.
- One writer at a time: an exclusive OS lock (`fcntl.flock`) on `<parent>/.<name>.emseg-rt.lock`, held for
  the run's life and released by the kernel when the process dies, so a stale lock cannot block anyone. A
  second run is refused with one line naming the holder's host and pid.
- `--overwrite` builds the new output in a sibling staging directory and, only once it is complete,
  exchanges the two directories in one `renameat2(RENAME_EXCHANGE)` call (Linux); the old output is then
  deleted under its staging name. A kill at any instant leaves OUT either the old complete output or the
  new complete one. Where the exchange is not available, two renames are used and a run that finds OUT
  missing beside a moved-aside complete output puts it back first.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from emseg_rt.errors import EmsegError

RUN_DIR = ".emseg-rt"
RUN_KEY = "emseg_rt_run"  # the run record's key in the attributes of the RUN_DIR zarr group
LEGACY_RECORD = "run.json"
_STAGING, _OLD = "emseg-rt-new", "emseg-rt-old"


def record_files(attributes: dict, zarr_format: int) -> list[tuple[str, dict]]:
    """The metadata files of a zarr group holding `attributes`, in the order to write them: v3 one
    `zarr.json`; v2 `.zattrs` first (the record), then `.zgroup`."""
    if zarr_format == 2:
        return [(".zattrs", attributes), (".zgroup", {"zarr_format": 2})]
    return [("zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": attributes})]


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
    lock: IO[str]

    @property
    def replaces(self) -> bool:
        return self.target != self.output

    def commit(self) -> None:
        """Make a complete staged output the output (no-op when the run wrote `output` itself)."""
        if self.replaces:
            _swap_into_place(self.target, self.output)

    def release(self) -> None:
        """Drop the lock; a staging directory of a run that did not commit is removed."""
        if self.replaces and self.target.exists():
            shutil.rmtree(self.target, ignore_errors=True)
        self.lock.close()


def claim_output(output: Path, source: Path | None, *, resume: bool, overwrite: bool,
                 into_input: bool = False, lock_path: Path | None = None) -> OutputClaim:
    """Check `output`, take its lock, and decide where this run writes. EmsegError (one line) when the
    output may not be written: inside or around the input, a symlink, not ours, locked, not writable.

    source:     the local input (None for an array in memory or a URL: nothing local to protect).
    into_input: the output is the input image's `labels/<name>` (`--into-input`): inside it on purpose.
    lock_path:  the lock file (default: `.<name>.emseg-rt.lock` beside the output).
    """
    _check_location(output, source, into_input)
    lock = _lock(output, lock_path)
    try:
        _recover_interrupted_swap(output)
        _remove_stale_siblings(output)
        target, resumable = _target(output, resume, overwrite)
    except BaseException:
        lock.close()
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


def _sibling(output: Path, kind: str) -> Path:
    return _parent(output) / f".{output.name}.{kind}-{secrets.token_hex(4)}"


def _lock(output: Path, lock_path: Path | None = None) -> IO[str]:
    import fcntl  # optional: POSIX only

    path = lock_path or _parent(output) / f".{output.name}.emseg-rt.lock"
    try:
        handle = open(path, "a+")  # noqa: SIM115  (held open for the run's life)
    except OSError as exc:
        raise EmsegError(f"cannot write {output}: cannot create the lock {path} ({exc.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise EmsegError(f"output {output} is being written by {holder}; wait for that run to finish "
                         "(or stop it) and try again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    return handle


def _target(output: Path, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    if not output.exists() or not any(output.iterdir()):
        return output, False
    if not is_our_output(output):
        action = "replace" if overwrite else "resume into" if resume else "write into"
        raise EmsegError(f"output {output} exists and is not an emseg-rt output (no {RUN_DIR} run record); "
                         f"refusing to {action} it; choose another --out")
    if overwrite:
        return _sibling(output, _STAGING), False  # the old output stays until the new one is complete
    if resume:
        return output, True
    raise EmsegError(f"output {output} already exists; pass --resume to finish it or --overwrite to replace it")


def _remove_stale_siblings(output: Path) -> None:
    """Staging and moved-aside directories of runs that died (we hold the lock, so none is live)."""
    for kind in (_STAGING, _OLD):
        for stale in _parent(output).glob(f".{output.name}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _recover_interrupted_swap(output: Path) -> None:
    """The two-rename fallback can die between its renames: put the moved-aside output back."""
    if output.exists():
        return
    moved = sorted(_parent(output).glob(f".{output.name}.{_OLD}-*"))
    if moved and is_our_output(moved[-1]):
        os.rename(moved[-1], output)


def _swap_into_place(staged: Path, output: Path) -> None:
    if not output.exists():
        os.rename(staged, output)
        return
    if _exchange(staged, output):
        shutil.rmtree(staged, ignore_errors=True)  # `staged` now names the old output
        return
    aside = _sibling(output, _OLD)
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
