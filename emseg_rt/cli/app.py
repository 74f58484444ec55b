"""The typer app every command module registers on. Commands stay thin: parse, call the library, print."""

import typer

app = typer.Typer(
    name="emseg-rt",
    help="Fast, dependable organelle segmentation of large EM volumes with SAM/MAE-based models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """emseg-rt: export, build and run SAM/MAE-based EM segmentation models."""
