"""Command-line interface: a thin typer layer over the library.

One module per command registers on `app`; `main` turns an `EmsegError` into one line on stderr and
exit code 2.
"""

from __future__ import annotations

import sys

from emseg_rt.cli import bench_cmd, models_cmd  # noqa: F401  (register the commands)
from emseg_rt.cli import segment_cmd  # noqa: F401  (registers `segment`)
from emseg_rt.cli import export_cmd  # noqa: F401  (registers `export`, `build`, `inspect`)
from emseg_rt.cli import phantom_cmd, eval_cmd, train_cmd, demo_cmd  # noqa: F401  (register phantom, eval, train, demo)
from emseg_rt.cli import pretrain_cmd  # noqa: F401  (registers `pretrain`)
from emseg_rt.cli import cluster_cmd  # noqa: F401  (registers `cluster fit`)
from emseg_rt.cli.app import app
from emseg_rt.errors import EmsegError


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except EmsegError as exc:
        print(f"emseg-rt: error: {exc}", file=sys.stderr)
        sys.exit(2)
