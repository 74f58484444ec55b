"""Command-line interface: a thin typer layer over the library.

One module per command registers on `app`; `main` turns an `EmsegError` into one line on stderr and
exit code 2.
"""

from __future__ import annotations

import sys

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
    train_cmd,
)
from emseg_rt.cli.app import app
from emseg_rt.errors import EmsegError


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except EmsegError as exc:
        print(f"emseg-rt: error: {exc}", file=sys.stderr)
        sys.exit(2)
