"""`emseg-rt eval`: score a predicted label volume against ground truth (Dice, IoU, mIoU, AJI, PQ)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from emseg_rt.cli.app import app


@app.command("eval")
def eval_command(
    pred: Path = typer.Argument(..., help="Predicted labels: a zarr array, an OME-Zarr label group "
                                "(OUT.zarr/labels/organelles) or an OME-Zarr image with --pred-labels."),
    gt: Path = typer.Argument(..., help="Ground truth, same forms (e.g. cell.zarr/labels/ground_truth)."),
    pred_labels: str | None = typer.Option(None, "--pred-labels", help="Label group name inside PRED."),
    gt_labels: str | None = typer.Option(None, "--gt-labels", help="Label group name inside GT."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    no_instances: bool = typer.Option(False, "--no-instances", help="Skip AJI and PQ (faster on big volumes)."),
) -> None:
    """Per-class Dice and IoU, mean IoU, and instance-level AJI and PQ (definitions: emseg_rt.metrics)."""
    from emseg_rt.metrics import evaluate

    scores = evaluate(read_volume_or_fail(pred, pred_labels), read_volume_or_fail(gt, gt_labels),
                      instance_metrics=not no_instances)
    if as_json:
        typer.echo(scores.to_json())
        return
    print_scores(scores)


def read_volume_or_fail(path: Path, labels: str | None = None):
    """`io.read_volume(path, labels=labels)`, with a chunk that cannot be read or decoded (corrupt,
    truncated, unreadable) as an EmsegError naming the volume instead of a codec traceback."""
    from emseg_rt.errors import EmsegError
    from emseg_rt.io.ome_zarr import read_volume

    where = f"{path}" + (f" (labels {labels})" if labels else "")
    try:
        return read_volume(path, labels=labels)
    except EmsegError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # zarr's codecs raise RuntimeError/ValueError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmsegError(f"{where}: cannot read the volume: a chunk is corrupt or unreadable ({detail[:200]})") from None


def print_scores(scores) -> None:
    """A rich table of per-class scores and their means."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.3f}"

    table = Table(title="segmentation scores")
    for column in ("class", "Dice", "IoU", "AJI", "PQ"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in scores.dice:
        table.add_row(name, fmt(scores.dice[name]), fmt(scores.iou[name]),
                      fmt(scores.aji.get(name, float("nan"))), fmt(scores.pq.get(name, float("nan"))))
    table.add_row("mean", fmt(scores.mean_dice), fmt(scores.mean_iou), fmt(scores.mean_aji), fmt(scores.mean_pq))
    Console().print(table)
