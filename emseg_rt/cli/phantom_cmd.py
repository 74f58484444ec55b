"""`emseg-rt phantom`: write a synthetic FIB-SEM beta-cell phantom with ground truth as OME-Zarr."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer

from emseg_rt.cli.app import app
from emseg_rt.errors import EmsegError


SHAPE_SEPARATOR = re.compile(r"\s*[,x×]\s*|\s+")  # '32,256,256', '32, 256, 256', '32x256x256', '32 256 256'


def parse_shape(text: str) -> tuple[int, int, int]:
    """'32,256,256' (spaces around the numbers allowed) → (32, 256, 256); EmsegError naming --shape otherwise."""
    parts = SHAPE_SEPARATOR.split(text.strip().lower())
    if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
        raise EmsegError(f"--shape {text!r} must be three whole numbers Z,Y,X, e.g. 32,256,256")
    return int(parts[0]), int(parts[1]), int(parts[2])


@app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Output OME-Zarr image (a new directory, e.g. cell.zarr)."),
    shape: str = typer.Option("32,256,256", "--shape", help="Volume size Z,Y,X in voxels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    noise: float = typer.Option(1.0, "--noise", help="Noise level: 0 none, 1 typical FIB-SEM, 2 poor."),
    anisotropy: float = typer.Option(1.0, "--anisotropy", help="z step / xy pixel size."),
) -> None:
    """Synthetic FIB-SEM of a pancreatic beta cell; ground truth in OUT/labels/ground_truth
    (1 nucleus, 2 mitochondria, 3 granules)."""
    from emseg_rt.data.phantom import (  # deferred: CLI start-up (the library loads on use)
        CLASS_NAMES, GROUND_TRUTH, generate_phantom, write_phantom,
    )
    from emseg_rt.io.outputs import check_output_folder  # deferred: CLI start-up

    zyx = parse_shape(shape)
    check_output_folder(out, "OUT", new=True)  # before generating: a new path in an existing, writable folder
    start = time.perf_counter()
    phantom = generate_phantom(zyx, seed=seed, noise=noise, anisotropy=anisotropy)
    write_phantom(out, phantom)
    fractions = ", ".join(
        f"{name} {100 * (phantom.labels == k).mean():.1f}%"
        for k, name in enumerate(CLASS_NAMES, start=1)
    )
    typer.echo(f"{out}: {zyx[0]}×{zyx[1]}×{zyx[2]} uint8, labels/{GROUND_TRUTH} ({fractions}) "
               f"in {time.perf_counter() - start:.1f} s")
