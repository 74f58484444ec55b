"""`emseg-rt demo`: phantom → segment with the embedded default model → scores → PNG preview."""

from __future__ import annotations

from pathlib import Path

import typer

from emseg_rt.cli.app import app
from emseg_rt.cli.eval_cmd import print_scores
from emseg_rt.cli.phantom_cmd import parse_shape
from emseg_rt.checks import check_seed


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the phantom, segmentation and preview."),
    seed: int = typer.Option(7, "--seed", help="Phantom seed (the default is never used in training)."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnxruntime | auto"),
    shape: str | None = typer.Option(None, "--shape", help="Phantom size Z,Y,X in voxels, Y and X >= 32 "
                                     "(default 16,256,256)."),
) -> None:
    """Segment a synthetic beta-cell volume with the default model and score it (under 2 min on 2 CPU cores)."""
    from emseg_rt.demo import DEMO_SHAPE, run_demo  # deferred: CLI start-up (the library loads on use)
    from emseg_rt.models.default_model import default_model_name  # deferred: CLI start-up

    zyx = DEMO_SHAPE if shape is None else parse_shape(shape)
    check_seed(seed)  # before run_demo creates --out
    report = run_demo(out, seed=seed, shape=zyx, backend=backend)
    print_scores(report.scores)
    dice = ", ".join(f"{name} {value:.3f}" for name, value in report.scores.dice.items())
    s = report.seconds
    typer.echo(f"Dice per class: {dice} (mean {report.scores.mean_dice:.3f})")
    model = default_model_name() if report.model in ("", "default", None) else report.model
    typer.echo(f"model {model}, backend {report.backend}; time {s['total']:.1f} s "
               f"(phantom {s['phantom']:.1f} s, segment {s['segment']:.1f} s, eval {s['eval']:.1f} s)")
    typer.echo(f"wrote {report.phantom}, {report.segmentation}, {report.preview}")
