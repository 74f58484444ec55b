"""`emseg-rt status OUT`: where a `segment` run stands, read from OUT/.emseg-rt/status/ (blocks and planes
done, rate, ETA, the error of a failed run, the report of a complete one), as plain lines or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emseg_rt.cli.app import app
from emseg_rt.errors import EmsegError


@app.command("status")
def status_command(
    output: Path = typer.Argument(..., help="A segment output (the --out directory, or an image's "
                                  "labels/<name> with --into-input)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status file's JSON (with the report of a "
                                 "complete run) instead of lines."),
) -> None:
    """Say where a segment run stands: running (blocks, planes, slices/s, ETA), complete (with its report),
    failed (with the error) or stopped (its process is gone: finish it with --resume). Exit 2 when OUT holds no
    run state."""
    from emseg_rt.runtime.status import describe, read_status  # deferred: CLI start-up (the runtime loads torch)

    status = read_status(output)
    if status is None:
        inside = sorted(str(p.parent.parent) for p in output.glob("labels/*/.emseg-rt/status"))
        hint = f"; the label images written into it: {', '.join(inside)}" if inside else ""
        raise EmsegError(f"{output}: no run state (not an emseg-rt segment output, or one written before "
                         f"statuses were kept){hint}")
    if as_json:
        record = status.to_dict()
        record["process_gone"] = status.process_gone()
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    for line in describe(status):
        typer.echo(line)
