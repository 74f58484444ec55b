"""`emseg-rt weights list` and `emseg-rt weights fetch NAME`: the official checkpoints by name (emseg_rt.weights)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from emseg_rt.cli.app import app
from emseg_rt.cli.tables import print_table

weights_app = typer.Typer(help="Official checkpoints by name (SAM, SAM 2.1, MedSAM, MobileSAM): list them, or fetch "
                               "one into the cache ($EMSEG_RT_CACHE/weights) with its size and sha256 checked. "
                               "`--checkpoint NAME` on segment, export, train and cluster fetches the same way.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _say(message: str) -> None:
    typer.echo(message, err=True)


@weights_app.command("list")
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """The official checkpoints: name, family, the emseg-rt models that load each, size, sha256, URL and the
    source those facts were read from. A table on a terminal, plain text in a log or pipe."""
    from emseg_rt.weights.fetch import weights_dir  # deferred: CLI start-up
    from emseg_rt.weights.registry import OFFICIAL_WEIGHTS  # deferred: CLI start-up

    folder = weights_dir()
    records = [{"name": e.name, "family": e.family, "models": list(e.models), "size": e.size, "sha256": e.sha256,
                "url": e.url, "source": e.source, "md5": e.md5, "cached": (folder / e.filename).is_file()}
               for e in OFFICIAL_WEIGHTS.values()]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title=f"official weights (cache: {folder})")
    for column in ("name", "family", "models", "size", "sha256", "url", "source", "cached"):
        table.add_column(column, justify="right" if column == "size" else "left",
                         no_wrap=column in ("name", "sha256"))  # names and hashes whole, the rest folds
    for r in records:
        table.add_row(r["name"], r["family"], ", ".join(r["models"]) or "(none yet)", f"{r['size']:,}", r["sha256"],
                      r["url"], r["source"], "yes" if r["cached"] else "no")
    print_table(table)


@weights_app.command("fetch")
def fetch_command(
    names: list[str] = typer.Argument(..., help="Official weights name(s) (see `emseg-rt weights list`)."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Base URL holding the same files by name, in place "
                                         "of each publisher's (default: $EMSEG_RT_WEIGHTS_URL)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or lines."),
) -> None:
    """Download NAME into $EMSEG_RT_CACHE/weights (default ~/.cache/emseg-rt/weights), resuming a partial download,
    and check its size and sha256; print the verified file's path. Already there: only checked."""
    from emseg_rt.weights.fetch import fetch_weights  # deferred: CLI start-up

    for name in names:
        path = fetch_weights(name, mirror=mirror, say=None if quiet else _say, progress=not quiet)
        typer.echo(str(path))
