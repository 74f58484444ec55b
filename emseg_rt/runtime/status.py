"""A run you can leave: the machine-readable status of a `segment` run, kept inside its output.

    OUT.zarr/.emseg-rt/status/         a zarr group of the run state whose attributes["emseg_rt_status"] is a
                                       `RunStatus`; its metadata file is replaced atomically (temporary file +
                                       rename, `claim.write_record`) at the start, at most every `interval`
                                       seconds as blocks finish, and at the end: "complete" with the run's
                                       report and versions, "failed" with the error's one line, "incomplete"
                                       when blocks are left (Dask failures)

`emseg-rt status OUT` prints it (`read_status`, `describe`). A "running" status whose process is gone (`pid` on
this `host` no longer alive) is a killed run: `--resume` finishes it.

Why a group of its own and not the root's attributes: the root's `zarr.json` is part of the output's pinned
bytes (tests/test_output_bytes.py: equal options give equal files), while a status holds times, rates, a pid and
a host that differ every run; scripts/record_output_digests.py leaves `.emseg-rt/status/` out of the digests.
A zarr group (not a plain status.json) because zarr warns about every file in a hierarchy that is not zarr
metadata ("not recognized as a component of a Zarr hierarchy"). The final `SegmentReport` (times, counts,
backend, config hash) and the library versions are kept here under "report" and "versions" once the run is
complete.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from emseg_rt.progress import format_duration
from emseg_rt.runtime.claim import RUN_DIR, write_record

STATUS_GROUP = "status"  # OUT/.emseg-rt/status/: a zarr group
STATUS_KEY = "emseg_rt_status"  # its attributes' key
STATUS_INTERVAL = 5.0  # seconds between updates while blocks finish (a fast run is not one write per block)
STATES = ("running", "complete", "failed", "incomplete")
# The libraries whose versions a complete status records (those installed; torch / onnxruntime only when loaded).
VERSIONED = ("emseg-rt", "numpy", "zarr", "ome-zarr", "torch", "onnxruntime", "tensorrt", "dask")


def utc_now() -> str:
    """Now as an ISO 8601 UTC time to the second, e.g. 2025-01-31T22:04:05Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunStatus:
    """Where a `segment` run stands (attributes["emseg_rt_status"] of OUT/.emseg-rt/status).

    planes: slices along the run's axis; blocks: write blocks. *_done count every finished one, those of earlier
    runs (a resume) included; slices_per_second and eta_seconds count only this run's (None until it measured).
    """

    state: str
    output: str
    config_hash: str
    pid: int
    host: str
    started: str
    updated: str
    blocks_total: int
    blocks_done: int
    planes_total: int
    planes_done: int
    slices_per_second: float | None = None
    eta_seconds: float | None = None
    error: str | None = None
    report: dict | None = None
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> RunStatus:
        known = {key: record[key] for key in cls.__dataclass_fields__ if key in record}
        return cls(**known)

    def process_gone(self) -> bool:
        """True when a "running" status's process no longer exists on this host (the run was killed)."""
        if self.state != "running" or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def status_group(output: Path) -> Path:
    """The zarr group holding the status of the output at `output`."""
    return Path(output) / RUN_DIR / STATUS_GROUP


def read_status(output: str | Path) -> RunStatus | None:
    """The status of the output at `output` (read as JSON: no zarr needed), or None when it holds none (not an
    emseg-rt output, or one written before statuses were kept)."""
    group = status_group(Path(output))
    for name, pick in (("zarr.json", lambda d: d.get("attributes", {}).get(STATUS_KEY)),
                       (".zattrs", lambda d: d.get(STATUS_KEY))):
        try:
            record = pick(json.loads((group / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict) and record.get("state") in STATES:
            break
    else:
        return None
    try:
        return RunStatus.from_dict(record)
    except TypeError:  # a required key is missing
        return None


def library_versions() -> dict[str, str]:
    """{distribution: version} of VERSIONED that are installed (torch and onnxruntime only when this process
    loaded them), plus python."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        module = name.replace("-", "_")
        if name in ("torch", "onnxruntime", "tensorrt", "dask") and module not in sys.modules:
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class StatusKeeper:
    """Keeps one run's status group up to date: `start` once the run's blocks are known, `advance` per finished
    block (written at most every `interval` seconds), then `complete`, `incomplete` or `fail`. A status that
    cannot be written (disk full) is skipped: the run goes on and says so in its own error, if any."""

    def __init__(self, target: Path, output: Path, interval: float = STATUS_INTERVAL) -> None:
        self.group, self.output, self.interval = status_group(target), output, interval
        self.status: RunStatus | None = None
        self._t0 = self._last = 0.0
        self._planes_before, self._zarr_format = 0, 3

    def start(self, config_hash: str, blocks: tuple[int, int], planes: tuple[int, int]) -> None:
        """The run begins its blocks. blocks, planes: (done before this run, total)."""
        self._t0 = self._last = time.monotonic()
        self._planes_before = planes[0]
        self._zarr_format = 3 if (self.group.parent / "zarr.json").is_file() else 2  # the run state's format
        self.status = RunStatus(state="running", output=str(self.output), config_hash=config_hash, pid=os.getpid(),
                                host=socket.gethostname(), started=utc_now(), updated=utc_now(),
                                blocks_done=blocks[0], blocks_total=blocks[1], planes_done=planes[0],
                                planes_total=planes[1])
        self._write()

    def advance(self, planes: int) -> None:
        """One block of `planes` planes finished; written when `interval` seconds passed since the last write."""
        if self.status is None:
            return
        self.status.blocks_done += 1
        self.status.planes_done += planes
        if time.monotonic() - self._last >= self.interval:
            self._write()

    def complete(self, report: dict[str, Any]) -> None:
        """Every block, level and stage is written: state "complete" with the run's report and versions."""
        self._end("complete", report=report, versions=library_versions())

    def incomplete(self) -> None:
        """The run ended with blocks left (a resume finishes them)."""
        self._end("incomplete")

    def fail(self, exc: BaseException) -> None:
        """The run stopped on `exc`: state "failed" with its first line."""
        self._end("failed", error=error_line(exc))

    def _end(self, state: str, **fields: Any) -> None:
        if self.status is None:
            return
        self.status.state = state
        for name, value in fields.items():
            setattr(self.status, name, value)
        self.status.eta_seconds = 0.0 if state == "complete" else None
        self._write()

    def _write(self) -> None:
        """Replace the status group's metadata atomically (`write_record`: its temporary files are ones a resume
        removes if a kill leaves them, `runtime.output.remove_write_leftovers`)."""
        status, now = self.status, time.monotonic()
        assert status is not None
        elapsed = now - self._t0
        computed = status.planes_done - self._planes_before
        if computed > 0 and elapsed > 0:
            status.slices_per_second = computed / elapsed
            if status.state == "running":
                status.eta_seconds = (status.planes_total - status.planes_done) / status.slices_per_second
        status.updated, self._last = utc_now(), now
        try:
            write_record(self.group, {STATUS_KEY: status.to_dict()}, self._zarr_format)
        except OSError:
            pass


def error_line(exc: BaseException) -> str:
    """An exception as one line (at most 300 characters): its message, prefixed with its type unless it is a
    user's error (`EmsegError`) or has no message."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    line = text if name == "EmsegError" and text else f"{name}: {text}" if text else name
    return line if len(line) <= 300 else line[:297] + "..."


def describe(status: RunStatus) -> list[str]:
    """A status as a few plain lines for `emseg-rt status`."""
    state = status.state
    if status.process_gone():
        state = f"stopped (process {status.pid} is gone: killed?); finish it with --resume"
    lines = [f"{status.output}: {state}",
             f"blocks {status.blocks_done}/{status.blocks_total}, planes {status.planes_done}/{status.planes_total}"
             f" ({100.0 * status.planes_done / max(status.planes_total, 1):.1f}%)"]
    rate = f"{status.slices_per_second:.3g} slices/s" if status.slices_per_second else "rate not measured yet"
    if status.state == "running" and status.eta_seconds is not None and not status.process_gone():
        rate += f", ETA {format_duration(status.eta_seconds)}"
    lines.append(rate)
    lines.append(f"started {status.started}, updated {status.updated}, pid {status.pid} on {status.host}")
    if status.error:
        lines.append(f"error: {status.error}")
    if status.report:
        rep = status.report
        lines.append(f"report: {rep.get('backend')} on {rep.get('device')}, {rep.get('slices_computed')} slices in "
                     f"{rep.get('wall_seconds', 0.0):.1f} s")
    return lines
