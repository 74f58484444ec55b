"""`emseg-rt pretrain`: masked pretraining of a MAESTER / HiS4MAE FOV encoder on unlabelled volumes."""

from __future__ import annotations

from pathlib import Path

import typer

from emseg_rt.cli.app import app
from emseg_rt.cli.eval_cmd import read_volume_or_fail
from emseg_rt.errors import EmsegError


@app.command("pretrain")
def pretrain_command(
    model: str = typer.Argument(..., help="Registry name of a maester-* or his4mae-* model (e.g. his4mae-fov80)."),
    data: list[Path] = typer.Option(..., "--data", help="Training volume (Z, Y, X) uint8: OME-Zarr image, zarr, "
                                    "N5, HDF5 or TIFF; repeat --data for more volumes."),
    out: Path = typer.Option(..., "--out", help="Student encoder checkpoint to write (CKPT; CKPT.state holds the "
                             "resume state)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs the cosine schedule spans (default: the "
                                      "model's, HiS4MAE Table 2: 2800)."),
    samples_per_epoch: int | None = typer.Option(None, "--samples-per-epoch", help="Fresh FOVs per epoch (default: "
                                                 "the model's, Table 2: 20000)."),
    batch: int | None = typer.Option(None, "--batch", help="FOVs per step (default: the model's, Table 2: 256)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak AdamW learning rate (default: Table 2: 5e-4)."),
    stop_after: int | None = typer.Option(None, "--stop-after", help="End after this epoch, everything saved; "
                                          "--resume continues the same schedule."),
    checkpoint_every: int = typer.Option(1, "--checkpoint-every", help="Epochs between checkpoints."),
    resume: bool = typer.Option(False, "--resume", help="Continue from CKPT.state (same model, data, settings)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights, FOV sampling and masks."),
    device: str = typer.Option("auto", "--device", help="'cpu', 'cuda' or 'auto' (cuda when available). Exact "
                               "resume is guaranteed on the CPU."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pretrain the student FOV encoder (HiS4MAE eqs. 2–6 / MAESTER) and write it as a pipeline checkpoint."""
    import torch  # deferred: CLI start-up (the library loads on use)

    from emseg_rt.models import build, get_config  # deferred: CLI start-up
    from emseg_rt.runtime.devices import resolve_device  # deferred: CLI start-up
    from emseg_rt.training.loop import check_out  # deferred: CLI start-up
    from emseg_rt.training.pretrain import PretrainConfig, epoch_status, pretrain  # deferred: CLI start-up

    if get_config(model).pretrain is None:
        raise EmsegError(f"model {model} has no masked pretraining (only maester-* and his4mae-* do); to train a "
                         "ScSAM-family head use `emseg-rt train`")
    check_out(out, resume, "pretraining")  # --out before the volumes are read: one line, nothing written
    config = PretrainConfig(epochs=epochs, samples_per_epoch=samples_per_epoch, batch=batch, lr=lr,
                            checkpoint_every_epochs=checkpoint_every, stop_after=stop_after, resume=resume, seed=seed)
    device = resolve_device(device)
    volumes = [read_volume_or_fail(path) for path in data]
    torch.manual_seed(seed)  # the student's initial weights (decoder and codebook: `pretrain` seeds them)
    pipeline = build(model).to(device)
    report = pretrain(pipeline, volumes, out, config, names=[str(path) for path in data],
                      say=lambda line: typer.echo(line, err=True), quiet=quiet)
    last = epoch_status(report.losses[-1]) if report.losses else "no epochs run"
    typer.echo(f"{out}: {report.model} ({report.kind}) epochs {report.start_epoch}→{report.end_epoch} of "
               f"{report.epochs} in {report.seconds:.1f} s; last epoch {last}")
