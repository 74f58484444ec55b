"""`emseg-rt models`: the registry as a table or JSON."""

import json

import typer
from rich.console import Console
from rich.table import Table

from emseg_rt.cli.app import app
from emseg_rt.models import list_models
from emseg_rt.models.info import model_info


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the registered models: family, parameters, GFLOP per slice, tile size, classes."""
    infos = [model_info(name) for name in list_models()]
    if as_json:
        typer.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    table = Table(title="emseg-rt models")
    for column, justify in [("name", "left"), ("family", "left"), ("params", "right"),
                            ("GFLOP/slice", "right"), ("tile", "right"), ("classes", "left")]:
        table.add_column(column, justify=justify, no_wrap=column != "classes")  # type: ignore[arg-type]
    for info in infos:
        table.add_row(info.name, info.family, f"{info.params:,}", f"{info.gflops_per_slice:,.1f}",
                      str(info.tile), ", ".join(info.classes))
    Console().print(table)
