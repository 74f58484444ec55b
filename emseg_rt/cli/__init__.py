"""Command-line interface: a thin typer layer over the library.

One module per command registers on `app`; `main` turns every error a user can fix into one line on stderr
and exit code 2: an `EmsegError` from the library, and a usage error typer finds while parsing (an option
value that is not a number, an unknown option, a missing argument) instead of typer's multi-line usage box.

Command modules import typer, rich and the light floor-0 modules at their top and the library inside the command
(`# deferred`), so `--help`, `--version`, `models` and a one-line error answer without loading torch, ONNX Runtime
or zarr (tests/test_cli_latency_imports.py; timed by benchmarks/cli_latency.py). Tables go through `tables.py`.
"""

from __future__ import annotations

import inspect
import sys

import typer

from emseg_rt.cli import (  # noqa: F401  (each module registers its commands on `app`)
    bench_cmd,
    cluster_cmd,
    demo_cmd,
    eval_cmd,
    export_cmd,
    models_cmd,
    phantom_cmd,
    pretrain_cmd,
    segment_cmd,
    status_cmd,
    train_cmd,
    weights_cmd,
)
from emseg_rt.cli.app import app
from emseg_rt.errors import EmsegError

# typer's click exceptions: its own copy of click (typer >= 0.2x) or click itself (older typer); found through
# the one exception typer exports from that module, so either works.
_CLICK = inspect.getmodule(typer.BadParameter)
USAGE_EXIT = 2


def main() -> None:
    """Console-script entry point: run the app; one `emseg-rt: error: ...` line and exit 2 for a user's error."""
    try:
        code = app(standalone_mode=False)  # typer raises its usage errors here instead of printing them
    except EmsegError as exc:
        _fail(str(exc))
    except _CLICK.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `emseg-rt` / `emseg-rt cluster` alone: help was printed
            sys.exit(USAGE_EXIT)
        _fail(usage_line(exc))
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code), 130 after Ctrl-C; 0 as a standalone app


def usage_line(exc: Exception) -> str:
    """A typer/click usage error as one line: its own message (which names the option or argument) and where
    the command's help is."""
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path.endswith(" segment") and "unexpected extra argument" in message:
        # `segment raw/*.tif` unquoted: the shell expanded the pattern into many arguments
        message += "; to segment many files, quote the pattern ('raw/*.tif') or give the folder"
    return message + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


def _fail(message: str) -> None:
    print(f"emseg-rt: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)
