"""`emseg-rt bench`: ScSAM's Table 5, backend by backend."""

import os
from pathlib import Path
from typing import Optional

import typer

from emseg_rt.checks import split_items
from emseg_rt.cli.app import app
from emseg_rt.cli.tables import print_markdown
from emseg_rt.constants import BENCH_BACKENDS, TABLE5_ROWS
from emseg_rt.errors import EmsegError


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _silent(message: str) -> None:
    pass


def _lists(batch: str, models: str, backends: str) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]:
    """--batch, --models and --backends as lists: '1, 2' is two items, '1,,2' is refused in one line."""
    try:
        batches = tuple(int(b) for b in split_items(batch, "--batch", "1,2,4"))
    except ValueError:
        raise EmsegError(f"--batch {batch!r}: give comma-separated integers") from None
    families = split_items(models, "--models", ",".join(TABLE5_ROWS[:2]))
    backend_names = () if backends == "auto" else split_items(backends, "--backends", ",".join(BENCH_BACKENDS[:2]))
    return batches, families, tuple(backend_names)


@app.command("bench")
def bench_command(
    models: str = typer.Option(",".join(TABLE5_ROWS), help="Comma-separated families (Table 5 rows)."),
    size: str = typer.Option("vit-h", help="Model size: vit-h (the paper's), vit-b or tiny."),
    backends: str = typer.Option("auto", help="Comma-separated bench backends (" + ", ".join(BENCH_BACKENDS) + "); "
                                 "auto: on CUDA torch-eager-fp32, torch-fp16, onnxruntime, tensorrt; on a CPU every "
                                 "path it runs: eager, torch fp32, torch bf16 (where native), onnxruntime fp32, "
                                 "fp32-fused and int8."),
    batch: str = typer.Option("1", help="Comma-separated batch sizes; latency is reported per slice."),
    warmup: int = typer.Option(3, help="Warm-up calls before timing."),
    iters: int = typer.Option(20, help="Timed calls per measurement."),
    device: str = typer.Option("auto", help="cpu, cuda or auto (cuda when torch sees a GPU)."),
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", "--weights", "-c", help="Weights for "
                                                    "the one model of --models, as segment's --checkpoint: every "
                                                    "backend and the fp32 reference of the label agreement load "
                                                    "them (default: the model's own, random for most)."),
    cache_dir: Path = typer.Option(None, help="Where exported model packages are cached (default: $EMSEG_RT_CACHE, "
                                   "else ~/.cache/emseg-rt; the same cache `segment` uses)."),
    breakdown: bool = typer.Option(True, help="Also time ScSAM stage by stage."),
    agreement: bool = typer.Option(True, help="Also measure each backend's agreement with fp32 (phantom tiles)."),
    json_path: Path = typer.Option(None, "--json", help="Write every record as JSON here."),
    markdown_path: Path = typer.Option(None, "--markdown", help="Write the markdown table here."),
    plot_path: Path = typer.Option(None, "--plot", help="Write a PNG bar chart here (.pdf, .svg: that format)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --json / --markdown / --plot files "
                                   "(else refused before the run)."),
    quiet: bool = typer.Option(False, help="Print only the table."),
) -> None:
    """Reproduce ScSAM's per-image inference-time table on this machine, for every backend."""
    from emseg_rt.bench.report import (  # deferred: CLI start-up (the library loads on use)
        check_report_paths, markdown_table, write_json, write_markdown, write_plot,
    )
    from emseg_rt.bench.table5 import BenchConfig, run_bench  # deferred: CLI start-up
    from emseg_rt.io.outputs import check_output_folder  # deferred: CLI start-up
    from emseg_rt.progress import Progress  # deferred: CLI start-up
    from emseg_rt.runtime.devices import resolve_device  # deferred: CLI start-up
    from emseg_rt.weights.fetch import resolve_checkpoints  # deferred: CLI start-up

    batches, families, backend_names = _lists(batch, models, backends)
    # Every output is checked before the run (folder exists, not a directory, no file replaced without
    # --overwrite): a long run never ends in a lost table.
    check_report_paths(json_path, markdown_path, plot_path, overwrite)
    if cache_dir is not None:
        check_output_folder(cache_dir, "--cache-dir")
    resolved_device = resolve_device(device)
    weights = resolve_checkpoints(checkpoint or (), say=None if quiet else _say, progress=not quiet)
    if cache_dir is not None:  # the export cache is located by the environment, for this process
        os.environ["EMSEG_RT_CACHE"] = str(cache_dir)
    config = BenchConfig(models=families, size=size, backends=backend_names,
                         batches=batches, warmup=warmup, iters=iters, device=resolved_device, breakdown=breakdown,
                         agreement=agreement, checkpoints=tuple(str(path) for path in weights))
    config.validate()  # a bad option is one line, before any bar is drawn
    say = _silent if quiet else _say
    # A bar on a terminal, else a line every 10 s on stderr; one step per measurement.
    with Progress("bench", None, unit="measurements", say=say, enabled=not quiet) as progress:
        result = run_bench(config, say=say, progress=progress)
    print_markdown(markdown_table(result))  # first: a write that fails (disk full) loses no numbers; plain in logs
    for path, write in ((json_path, write_json), (markdown_path, write_markdown), (plot_path, write_plot)):
        if path:
            write(result, path)
