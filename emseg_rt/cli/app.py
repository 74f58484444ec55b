"""The typer app every command module registers on. Commands stay thin: parse, call the library, print."""

from typing import Optional

import typer

from emseg_rt import __version__

app = typer.Typer(
    name="emseg-rt",
    help="Fast, dependable organelle segmentation of large EM volumes with SAM/MAE-based models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"emseg-rt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """emseg-rt: export, build and run SAM/MAE-based EM segmentation models."""
