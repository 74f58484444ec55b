"""The package cache: a model package exported once per (model, weights, precision, batch_max), then reused.

The runtime (`segment --backend onnxruntime` with a registry name), the benchmark and training get their
ONNX graphs only through `cached_package`, so they all run the graphs `emseg-rt export` writes:

    cache_root()/packages/<name>-<precision>-b<batch_max>-<weights digest[:16]>/   (a model package)

The weights digest is `emseg_rt.models.checkpoint.state_dict_digest`: equal digests, equal numbers. A
registry name is built by `models.build_model` (shipped weights for the default model, else a fixed-seed
init), so every process finds the same entry.

Safe under concurrency without locks: a package is exported into a temporary sibling and renamed into
place; when another process renamed its copy first, that one is used and ours is removed. An entry that
no longer loads (a half-deleted directory, a file changed on disk, an older package format) or that an
older emseg-rt or torch wrote is exported again and replaced.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from emseg_rt import __version__
from emseg_rt.errors import EmsegError
from emseg_rt.export.trace import Progress, _quiet, _resolve_model
from emseg_rt.export.writer import export_package
from emseg_rt.io.outputs import NO_SPACE, write_failure
from emseg_rt.models.checkpoint import state_dict_digest
from emseg_rt.package import FULL, PRECISIONS, ModelPackage, load_package

PACKAGES_DIR = "packages"
CACHED_COMPONENTS = (FULL,)  # what the cache's users run (runtime, bench, engines); tracing only it saves ~60 %
CACHE_PARITY_SEED = 0  # parity inputs of a cached export: fixed, so an entry is reproducible
_RENAME_ATTEMPTS = 3


def cache_root() -> Path:
    """Where emseg-rt caches what it derives from models: $EMSEG_RT_CACHE, else ~/.cache/emseg-rt."""
    return Path(os.environ.get("EMSEG_RT_CACHE") or Path.home() / ".cache" / "emseg-rt")


def cached_package(
    model: str | nn.Module,
    precision: str = "fp32",
    *,
    batch_max: int = 8,
    checkpoints: Sequence[str | Path] = (),
    say: Progress | None = None,
) -> Path:
    """The directory of a verified model package of `model`, exported with `export_package` on first use.

    The package holds the components in CACHED_COMPONENTS (the whole per-slice graph): what the runtime,
    the benchmark and engine builds run. `emseg-rt export` writes every component.

    model:       a registry name ('scsam-vit-h'; see `models.build_model`) or a built `SegmentationPipeline`
                 (its current weights are what is cached).
    precision:   'fp32' or 'fp16' (mixed), as `emseg-rt export --precision`.
    batch_max:   largest batch the graphs accept.
    checkpoints: loaded in order into the model before its weights are digested.
    say:         progress messages; called only when the package has to be exported.
    EmsegError for a bad name, checkpoint or option, an unwritable cache, or an export that misses parity.
    """
    _check(precision, batch_max)
    pipeline = _resolve_model(model, checkpoints)
    entry = _entry(pipeline, precision, batch_max)
    name = pipeline.config.name
    if _usable(entry, name, precision, batch_max):
        return entry
    say = say or _quiet
    say(f"exporting {name} ({precision}, batch ≤ {batch_max}) into the package cache: {entry}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=entry.parent))
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise write_failure(exc, f"package cache {entry.parent}", "EMSEG_RT_CACHE") from None
        raise EmsegError(f"package cache {entry.parent}: cannot write there ({exc.strerror or exc}); "
                         "set EMSEG_RT_CACHE to a writable directory") from None
    try:
        exported = export_package(pipeline, staging / "package", precision, batch_max=batch_max,
                                  parity_seed=CACHE_PARITY_SEED, progress=say, components=CACHED_COMPONENTS)
        _claim(exported, entry, name, precision, batch_max)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def cache_entry(
    model: str | nn.Module, precision: str = "fp32", *, batch_max: int = 8, checkpoints: Sequence[str | Path] = ()
) -> Path:
    """Where `cached_package` keeps the package of these arguments (whether or not it exists yet)."""
    _check(precision, batch_max)
    return _entry(_resolve_model(model, checkpoints), precision, batch_max)


def _check(precision: str, batch_max: int) -> None:
    if precision not in PRECISIONS:
        raise EmsegError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1")


def _entry(pipeline: nn.Module, precision: str, batch_max: int) -> Path:
    """cache_root()/packages/<name>-<precision>-b<batch_max>-<weights digest[:16]>"""
    key = f"{pipeline.config.name}-{precision}-b{batch_max}-{state_dict_digest(pipeline)[:16]}"
    return cache_root() / PACKAGES_DIR / key


def _claim(exported: Path, entry: Path, name: str, precision: str, batch_max: int) -> None:
    """Rename our `exported` package to `entry`, unless another process installed a usable one first;
    a stale or broken entry is moved aside and removed."""
    for _ in range(_RENAME_ATTEMPTS):
        try:
            os.rename(exported, entry)  # fails when entry is a non-empty directory
            return
        except OSError:
            if _usable(entry, name, precision, batch_max):
                return  # another process won the race: use theirs
        stale = entry.with_name(f".{entry.name}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(entry, stale)
        except OSError:
            pass  # someone else moved it aside already (or we may not: then the next rename fails too)
        shutil.rmtree(stale, ignore_errors=True)
    raise EmsegError(f"package cache {entry}: could not install the exported package (another process keeps "
                     "replacing it?); remove the directory and try again")


def _usable(entry: Path, name: str, precision: str, batch_max: int) -> bool:
    """Whether `entry` is a complete package of this model, precision and batch, written by this emseg-rt
    and torch (hashes verified)."""
    if not entry.is_dir():
        return False
    try:
        package = load_package(entry)
    except EmsegError:
        return False
    return _matches(package, name, precision, batch_max)


def _matches(package: ModelPackage, name: str, precision: str, batch_max: int) -> bool:
    toolchain = package.manifest.get("toolchain", {})
    return (package.name == name and package.precision == precision and package.batch_max == batch_max
            and set(CACHED_COMPONENTS) <= set(package.components)
            and toolchain.get("emseg_rt") == __version__ and toolchain.get("torch") == torch.__version__)
