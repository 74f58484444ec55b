"""`emseg-rt cluster fit`: fit the K-means centres of a maester / his4mae model and name them by Hungarian
matching against ground truth; writes the whole pipeline's state dict (docs/clustering.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from emseg_rt.checks import check_seed
from emseg_rt.cli.app import app
from emseg_rt.cli.eval_cmd import read_volume_or_fail
from emseg_rt.constants import GROUND_TRUTH
from emseg_rt.errors import EmsegError

cluster_app = typer.Typer(help="Fit the clustering head of maester-* / his4mae-* models (K-means centres, "
                          "Hungarian cluster → class mapping).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _say(message: str) -> None:
    typer.echo(message, err=True)


KMEANS_SEED_MAX = 2**32 - 1  # scikit-learn's K-means takes random_state 0 .. 2**32 - 1
NO_LABELS = ("{data} has no ground_truth label group and no --labels was given: labels name the K-means clusters "
             "(Hungarian matching), so cluster fit needs them; a small annotated volume is enough (--labels NAME|PATH)")


def read_labels(data: Path, labels: str | None):
    """The ground truth: a label group of `data` or a label volume path; default the phantom's ground_truth."""
    from emseg_rt.io import list_label_groups  # deferred: CLI start-up (the library loads on use)

    groups = list_label_groups(data)
    if labels is None:
        if GROUND_TRUTH not in groups:
            raise EmsegError(NO_LABELS.format(data=data))
        labels = GROUND_TRUTH
    if labels in groups:
        return read_volume_or_fail(data, labels)
    if Path(labels).exists():
        return read_volume_or_fail(Path(labels))
    raise EmsegError(f"--labels {labels!r}: neither a label group of {data} nor an existing path")


@cluster_app.command("fit")
def fit_command(
    model: str = typer.Argument(..., help="Registry name of a maester-* or his4mae-* model."),
    data: Path = typer.Option(..., "--data", help="Volume (Z, Y, X) uint8: OME-Zarr image or zarr array."),
    labels: str | None = typer.Option(None, "--labels", help="Label group name inside --data, or a path to a label "
                                      "volume (0 background, 1..K classes); default: ground_truth (the group "
                                      "`emseg-rt phantom` writes)."),
    weights: list[Path] | None = typer.Option(None, "--checkpoint", "-c", help="Checkpoint(s) to load first, "
                                              "e.g. the pretrained encoder; repeatable, loaded in order."),
    out: Path = typer.Option(..., "--out", help="Fitted checkpoint to write: the whole pipeline's state dict."),
    clusters: int | None = typer.Option(None, "--clusters", help="K centres (default: the model's K, classes + 1)."),
    fraction: float = typer.Option(1e-3, "--fraction", help="Share of voxels sampled (HiS4MAE §3.3: 1/1000)."),
    halo: int | None = typer.Option(None, "--halo", help="Tile halo as for segment (default: tile/8)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the voxel sample and of K-means."),
    batch: int = typer.Option(64, "--batch", help="Tiles per encoder call."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (else refused)."),
) -> None:
    """Fit K-means centres on sampled expand-stride features, map clusters to classes, write the model."""
    from emseg_rt.clustering import fit_clusters  # deferred: CLI start-up (the library loads on use)
    from emseg_rt.io.outputs import check_output_file  # deferred: CLI start-up
    from emseg_rt.metrics import check_label_range  # deferred: CLI start-up
    from emseg_rt.models import build, get_config  # deferred: CLI start-up
    from emseg_rt.progress import Progress  # deferred: CLI start-up
    from emseg_rt.training.loop import atomic_save  # deferred: CLI start-up
    from emseg_rt.weights.fetch import resolve_checkpoints  # deferred: CLI start-up

    check_output_file(out, "--out", overwrite)  # before anything slow: refused in one line, the file untouched
    weights = resolve_checkpoints(weights or (), say=_say)  # official weights names → verified files in the cache
    config = get_config(model)
    if config.cluster_head is None:
        raise EmsegError(f"model {model} has no clustering head; cluster fit is for the maester-* and his4mae-* "
                         "models (`emseg-rt models` lists them)")
    if clusters is not None and clusters < 1:
        raise EmsegError(f"--clusters {clusters} must be at least 1")
    if batch < 1:
        raise EmsegError(f"--batch {batch} must be at least 1")
    check_seed(seed, limit=KMEANS_SEED_MAX)
    image = read_volume_or_fail(data)
    truth = read_labels(data, labels)
    check_label_range(truth, config.num_classes, f"--labels {labels or GROUND_TRUTH}")
    pipeline = build(model, checkpoint=list(weights) if weights else None)
    # A bar on a terminal, else a line every 10 s on stderr; the last line only once the checkpoint is written.
    with Progress("cluster fit", None, unit="slices", say=_say) as progress:
        fit = fit_clusters(pipeline, image, truth, clusters=clusters, fraction=fraction, seed=seed, halo=halo,
                           batch=batch, progress=progress)
        atomic_save(pipeline.state_dict(), out)
    mapping = ", ".join(f"{cluster}→{name}" for cluster, name, _, _ in fit.rows())
    typer.echo(f"{out}: {fit.clusters} clusters from {fit.samples} sampled voxels in {fit.seconds:.1f} s; {mapping}")
    for cluster, name, voxels, share in fit.rows():
        typer.echo(f"  cluster {cluster:>3}  {name:<14} {voxels:>8} voxels  {share:6.1%} of them {name}")
