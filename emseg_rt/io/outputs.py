"""May a command write this output? The one up-front check every output-writing command makes before its slow
part, the one atomic file write, and the one translation of a failed write into a one-line error.

The rule, the same for every command (`segment`'s in `runtime/claim.py`, for directories):

- the folder an output goes into must exist and be a writable directory; nothing is created above the output
  (a typo in a folder name is refused in one line, not turned into a new tree or a lost result);
- an output file that is a directory, or an output folder that is a file, is refused;
- an existing file is replaced only with `--overwrite` (a training `--out` only with `--resume`: its own rule);
- files are written to a hidden temporary sibling and renamed into place, so a failed write (disk full, a
  kill) leaves the old file as it was and nothing half-written; a disk-full error is one line naming the path
  and "no space left on device".

Commands call `check_output_file` / `check_output_folder` before reading their inputs or running anything
slow, and write with `write_file_atomic`; `write_failure` turns an `OSError` met while writing into the line.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from emseg_rt.errors import EmsegError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # "disk full" and "quota exceeded" read the same to a user


def write_failure(exc: OSError, path: str | Path, option: str = "the output") -> EmsegError:
    """The one line for an OSError met while writing `path`: 'no space left on device' for a full disk or
    quota, else the system's reason; both say what to do."""
    if exc.errno in NO_SPACE:
        return EmsegError(f"cannot write {path}: no space left on device; free some space or choose another "
                          f"{option} on a disk with room")
    return EmsegError(f"cannot write {path} ({exc.strerror or exc}); choose a writable {option}")


def check_writable(folder: str | Path, what: str) -> None:
    """EmsegError naming `what` when no file can be created in `folder` (read-only filesystem, permissions)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".emseg-rt-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EmsegError(f"{what} {folder}: cannot write there ({exc.strerror or exc}); choose a writable "
                         "location") from None


def check_folder_of(path: str | Path, option: str) -> Path:
    """EmsegError unless the folder `path` goes into exists, is a directory and is writable."""
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise EmsegError(f"{option} {path}: cannot write there (folder {parent} does not exist); create it first "
                         f"or choose another {option}")
    if not parent.is_dir():
        raise EmsegError(f"{option} {path}: cannot write there ({parent} is not a folder); choose another {option}")
    check_writable(parent, option)
    return path


def check_output_file(path: str | Path, option: str, overwrite: bool = False) -> Path:
    """EmsegError (one line naming `option` and `path`) unless `path` may be written as a file now: its folder
    exists and is writable, it is not a directory, and an existing file is replaced only with `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise EmsegError(f"{option} {path}: is a directory; give a file path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise EmsegError(f"{option} {path}: exists; pass --overwrite to replace it or choose another {option}")
    return check_folder_of(path, option)


def check_output_folder(path: str | Path, option: str, new: bool = False) -> Path:
    """EmsegError unless `path` is a writable directory (with `new`: refused, it must not exist yet), or absent
    with a writable folder to create it in."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if new:
            raise EmsegError(f"{option} {path}: already exists; choose another path or delete it")
        if not path.is_dir():
            raise EmsegError(f"{option} {path}: is a file, not a folder; give a folder (or a new path)")
        check_writable(path, option)
        return path
    return check_folder_of(path, option)


def check_distinct(paths: dict[str, Path | None]) -> None:
    """EmsegError when two options name the same output file (the second write would replace the first)."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise EmsegError(f"{seen[key]} and {option} both name {path}; give each its own file")
        seen[key] = option


def write_file_atomic(path: str | Path, write: Callable[[Path], None], option: str = "the output") -> Path:
    """`write(tmp)` fills a hidden temporary sibling of `path` (same suffix, so a writer that reads the format
    from the name still sees it), then one rename puts it in place. On an OSError the temporary file is removed,
    `path` is left as it was, and the error is one line (`write_failure`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.emseg-rt-tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failure(exc, path, option) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
