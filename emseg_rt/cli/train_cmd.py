"""`emseg-rt train`: train a ScSAM-family head (FAFM + class prompt encoder + decoder) over cached embeddings."""

from __future__ import annotations

from pathlib import Path

import typer

from emseg_rt.cli.app import app


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help="Registry name of a ScSAM-family model (e.g. scsam-phantom, scsam-vit-b)."),
    data: Path = typer.Option(..., "--data", help="Training volume: OME-Zarr image or zarr array (Z, Y, X) uint8."),
    labels: str | None = typer.Option(None, "--labels", help="Label group name inside --data, or a path to a "
                                      "label volume (0 background, 1..K classes); default: the group "
                                      "`emseg-rt phantom` writes, ground_truth."),
    out: Path = typer.Option(..., "--out", help="Head checkpoint to write (CKPT; CKPT.state holds the resume state)."),
    weights: list[Path] | None = typer.Option(None, "--checkpoint", "--weights", "-c", help="Checkpoint(s) to load first, e.g. SAM "
                                                 "and MAE encoder files; default model: its shipped weights."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps in total (resume continues up to this)."),
    batch: int = typer.Option(8, "--batch", help="Tiles per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (ScSAM §4.2: 1e-3)."),
    cos_weight: float = typer.Option(0.2, "--cos-weight", help="λ of L_cos (ScSAM eq. 9: 0.2)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints."),
    cache: Path | None = typer.Option(None, "--cache", help="Embedding cache (default: CKPT.cache.zarr); an "
                                      "existing directory must be an emseg-rt embedding cache (it may be rebuilt)."),
    embeddings_from: Path | None = typer.Option(None, "--embeddings-from", help="Compute the cache with this "
                                                "exported model package's encoder graphs (ONNX Runtime) "
                                                "instead of the torch encoders (export it from the same "
                                                "weights you pass with --weights)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from CKPT.state."),
    seed: int = typer.Option(0, "--seed", help="Seed of batch sampling."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train FAFM + class prompt encoder + decoder with 0.2·L_cos + L_NTX + L_Dice on frozen encoders."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from emseg_rt.cli.eval_cmd import read_volume_or_fail
    from emseg_rt.data.phantom import GROUND_TRUTH
    from emseg_rt.errors import EmsegError
    from emseg_rt.io.ome_zarr import list_label_groups
    from emseg_rt.models import build
    from emseg_rt.models.default_model import default_model_name, load_default_model
    from emseg_rt.training import train_head
    from emseg_rt.training.cache import package_embedder

    labels = GROUND_TRUTH if labels is None else labels
    image = read_volume_or_fail(data)
    label_path = Path(labels)
    truth = read_volume_or_fail(data, labels) if labels in list_label_groups(data) else (
        read_volume_or_fail(label_path) if label_path.exists() else None)
    if truth is None:
        raise EmsegError(f"--labels {labels!r}: neither a label group of {data} nor an existing path")
    if model == default_model_name() and not weights:
        pipeline = load_default_model()
    else:
        pipeline = build(model, checkpoint=list(weights) if weights else None)
    embed_fn, embed_identity = package_embedder(embeddings_from, model) if embeddings_from else (None, None)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), disable=quiet) as progress:
        cache_task = progress.add_task("embedding cache", total=None, loss="")
        train_task = progress.add_task("training", total=steps, loss="")

        def on_cache(done: int, total: int) -> None:
            progress.update(cache_task, completed=done, total=total)

        def on_step(step: int, total: int, terms) -> None:
            f = terms.as_floats()
            progress.update(train_task, completed=step,
                            loss=f"loss {f['total']:.3f} (cos {f['cos']:.3f} ntx {f['ntx']:.3f} dice {f['dice']:.3f})")

        report = train_head(pipeline, image, truth, out, sources=[str(data.resolve()), labels], cache_path=cache,
                            steps=steps, batch=batch, lr=lr, cos_weight=cos_weight,
                            checkpoint_every=checkpoint_every, resume=resume, seed=seed,
                            on_step=on_step, on_cache=on_cache, embed_fn=embed_fn, embed_identity=embed_identity)
    if not quiet:
        last = report.losses[-1] if report.losses else {}
        typer.echo(f"{out}: steps {report.start_step}→{report.steps} on {report.tiles} cached tiles in "
                   f"{report.seconds:.1f} s; last loss {last.get('total', float('nan')):.4f}")
