"""`emseg-rt eval`: score a predicted label volume against ground truth (Dice, IoU, mIoU, AJI, PQ, and the
CellMap segmentation challenge's semantic and instance scores)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from emseg_rt.cli.app import app
from emseg_rt.cli.tables import print_table
from emseg_rt.errors import EmsegError


@app.command("eval")
def eval_command(
    pred: Path = typer.Argument(..., help="Predicted labels: a segment output (OUT.zarr), an OME-Zarr image with "
                                "labels/ (the one label image that is not ground_truth, or --pred-labels), a label "
                                "group (IN.zarr/labels/organelles) or an integer label array."),
    gt: Path = typer.Argument(..., help="Ground truth, same forms (an image with labels/: labels/ground_truth "
                              "unless --gt-labels; e.g. cell.zarr from `emseg-rt phantom`)."),
    pred_labels: str | None = typer.Option(None, "--pred-labels", help="Label image NAME under PRED/labels/."),
    gt_labels: str | None = typer.Option(None, "--gt-labels", help="Label image NAME under GT/labels/."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    no_instances: bool = typer.Option(False, "--no-instances", help="Skip AJI, PQ and the CellMap instance "
                                      "scores (faster on big volumes)."),
) -> None:
    """Per-class Dice and IoU, mean IoU, instance-level AJI and PQ, and the CellMap challenge's scores: semantic
    IoU / Dice and instance accuracy, Hausdorff distance (in the ground truth's units) and combined score
    (definitions: emseg_rt.metrics). Predicted instances come from `segment --instances` label images
    (<class>_instances) where the prediction has them, else from connected components.

    Classes are matched by name when both label images name them (image-label properties), else by value.
    """
    from emseg_rt.io.label_images import (  # deferred: CLI start-up (the library loads on use)
        check_same_shape, instance_images, open_label_image,
    )
    from emseg_rt.metrics import evaluate_labels  # deferred: CLI start-up

    prediction = open_label_image(pred, pred_labels, role="prediction")
    truth = open_label_image(gt, gt_labels, role="truth")
    check_same_shape(prediction, truth)
    pred_instances = {} if no_instances else {name: image.read() for name, image in
                                              instance_images(prediction).items()}
    truth_labels = truth.read()
    voxel_size = tuple(truth.volume.voxel_size)
    scores = evaluate_labels(prediction.read(), truth_labels, prediction.class_names, truth.class_names,
                             instance_metrics=not no_instances, pred_instances=pred_instances,
                             voxel_size=voxel_size if len(voxel_size) == truth_labels.ndim else None)
    print_skipped(scores.skipped)
    if as_json:
        typer.echo(scores.to_json())
        return
    print_scores(scores)


def print_skipped(skipped: dict[str, str]) -> None:
    """One note line on stderr naming the classes only one side has (stdout stays the scores alone)."""
    if skipped:
        listed = ", ".join(f"{name} ({side})" for name, side in skipped.items())
        typer.echo(f"note: not scored, named on one side only: {listed}", err=True)


def read_volume_or_fail(path: Path, labels: str | None = None):
    """`io.read_volume(path, labels=labels)`, with a chunk that cannot be read or decoded (corrupt,
    truncated, unreadable) as an EmsegError naming the volume instead of a codec traceback (used by `train`)."""
    from emseg_rt.io import read_volume  # deferred: CLI start-up (the library loads on use)

    where = f"{path}" + (f" (labels {labels})" if labels else "")
    try:
        return read_volume(path, labels=labels)
    except EmsegError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # zarr's codecs raise RuntimeError/ValueError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmsegError(f"{where}: cannot read the volume: a chunk is corrupt or unreadable ({detail[:200]})") from None


def print_scores(scores) -> None:
    """A table of per-class scores and their means (rich on a terminal, plain text in a log: `print_table`)."""
    def fmt(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.3f}"

    def cellmap(name: str, key: str) -> str:
        return fmt(scores.cellmap_instance.get(name, {}).get(key, float("nan")))

    table = Table(title="segmentation scores")
    columns = ("class", "Dice", "IoU", "AJI", "PQ", "CellMap acc", "CellMap HD", "CellMap F1", "CellMap inst")
    for column in columns:
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in scores.dice:
        table.add_row(name, fmt(scores.dice[name]), fmt(scores.iou[name]),
                      fmt(scores.aji.get(name, float("nan"))), fmt(scores.pq.get(name, float("nan"))),
                      cellmap(name, "accuracy"), cellmap(name, "hausdorff_distance"), cellmap(name, "f1"),
                      cellmap(name, "combined_score"))
    table.add_row("mean", fmt(scores.mean_dice), fmt(scores.mean_iou), fmt(scores.mean_aji), fmt(scores.mean_pq),
                  "", "", "", fmt(scores.cellmap_instance_score))
    table.caption = (f"CellMap: semantic {fmt(scores.cellmap_semantic_score)} (mean IoU), instance "
                     f"{fmt(scores.cellmap_instance_score)}, overall {fmt(scores.cellmap_score)}")
    from_images = [n for n, source in scores.instance_source.items() if source == "instance label image"]
    if from_images:
        table.caption += (f"; instances: {', '.join(from_images)} from <class>_instances label images, "
                          "others from connected components")
    print_table(table)
