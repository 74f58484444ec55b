"""`emseg-rt models`: the registry as a table or JSON, at once (read from `models.catalogue`, which loads no torch);
`--counts` adds each model's parameters and GFLOP per slice, counted on torch's meta device (seconds)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from emseg_rt.cli.app import app
from emseg_rt.cli.tables import print_table

COUNT_COLUMNS = (("params", "params", "{:,}"), ("gflops_per_slice", "GFLOP/slice", "{:,.1f}"))


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    counts: bool = typer.Option(False, "--counts", help="Also count parameters and GFLOP per slice (builds every "
                                "model on torch's meta device: about 10 s on 2 CPU cores)."),
) -> None:
    """List the registered models: name, family, tile size, classes and what each is (--counts: parameters and
    GFLOP per slice too). A table on a terminal, plain text in a log or pipe."""
    from emseg_rt.models.catalogue import CONFIGS  # deferred: CLI start-up (plain dataclasses, no torch)

    records = [{"name": c.name, "family": c.family, "size": c.size, "tile": c.tile, "classes": list(c.classes),
                "description": c.description} for c in CONFIGS.values()]
    if counts:
        from emseg_rt.models.info import model_info  # deferred: CLI start-up (torch loads here)

        for record in records:
            info = model_info(record["name"])
            record.update(params=info.params, gflops_per_slice=info.gflops_per_slice)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title="emseg-rt models")
    count_columns = COUNT_COLUMNS if counts else ()
    for column in ("name", "family", *(header for _, header, _ in count_columns), "tile", "classes", "description"):
        table.add_column(column, justify="right" if column in ("tile", "params", "GFLOP/slice") else "left",
                         no_wrap=column in ("name", "family"))  # names whole, the rest folds on a terminal
    for r in records:
        table.add_row(r["name"], r["family"], *(form.format(r[key]) for key, _, form in count_columns), str(r["tile"]),
                      ", ".join(r["classes"]), r["description"])
    print_table(table)
