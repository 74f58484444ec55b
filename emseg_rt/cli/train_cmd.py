"""`emseg-rt train`: train a ScSAM-family head (FAFM + class prompt encoder + decoder) over cached embeddings,
or a whole Prompt-DAS pipeline (`prompt-das-*`, `emseg_rt.training.prompt_das`)."""

from __future__ import annotations

from pathlib import Path

import typer

from emseg_rt.cli.app import app


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help="Registry name of a ScSAM-family model (e.g. scsam-phantom, scsam-vit-b) "
                                "or a Prompt-DAS model (prompt-das-tiny, prompt-das-vit-s8)."),
    data: Path = typer.Option(..., "--data", help="Training volume: OME-Zarr image or zarr array (Z, Y, X) uint8."),
    labels: str | None = typer.Option(None, "--labels", help="Label group name inside --data, or a path to a "
                                      "label volume (0 background, 1..K classes); default: the group "
                                      "`emseg-rt phantom` writes, ground_truth."),
    out: Path = typer.Option(..., "--out", help="Head checkpoint to write (CKPT; CKPT.state holds the resume state)."),
    weights: list[Path] | None = typer.Option(None, "--checkpoint", "--weights", "-c", help="Checkpoint(s) to load first, e.g. SAM "
                                                 "and MAE encoder files; default model: its shipped weights."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps in total (resume continues up to this)."),
    batch: int | None = typer.Option(None, "--batch", help="Tiles per step (default: ScSAM 8, Prompt-DAS 2)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: ScSAM §4.2 Adam 1e-3; Prompt-DAS "
                                    "§3 AdamW 1e-5 with poly decay)."),
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
    sigma: float | None = typer.Option(None, "--sigma", help="Prompt-DAS: density Gaussian σ in pixels "
                                       "(default: 10 at vit-s8 as the Prompt-DAS code, 2 at tiny)."),
    prompt_fraction: float | None = typer.Option(None, "--prompt-fraction", help="Prompt-DAS: share of each "
                                                 "window's centres given as prompts (default: random per window)."),
    class_id: int = typer.Option(2, "--class-id", help="Prompt-DAS: label id of the objects (default 2, the "
                                 "phantom's mitochondria)."),
    target: Path | None = typer.Option(None, "--target", help="Prompt-DAS: unlabelled target-domain volume; "
                                       "turns on mean-teacher adaptation."),
    ema_decay: float = typer.Option(0.99, "--ema-decay", help="Prompt-DAS: mean-teacher EMA decay."),
    contrastive_weight: float = typer.Option(0.0, "--contrastive-weight", help="Prompt-DAS: weight of the "
                                             "prompt-guided contrastive loss (needs --target)."),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Prompt-DAS: end after this step (resume "
                                          "continues exactly)."),
    recipe: str | None = typer.Option(None, "--recipe", help="samda-* models: the SAMDA step, samda-source "
                                      "(labelled --data), samda-uda (unlabelled --data and --target) or "
                                      "samda-fewshot (--shots annotated slices of --data)."),
    shots: int | None = typer.Option(None, "--shots", help="samda-fewshot: annotated target slices used, spread "
                                     "evenly over --data (default 10, SAMDA §4)."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when torch sees one, said in one line), "
                               "cpu, cuda or cuda:N. Exact --resume is guaranteed on the CPU."),
) -> None:
    """Train FAFM + class prompt encoder + decoder with 0.2·L_cos + L_NTX + L_Dice on frozen encoders, or a
    whole Prompt-DAS pipeline (Dice + BCE + density MSE; optional mean teacher and contrastive loss)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from emseg_rt.cli.eval_cmd import read_volume_or_fail
    from emseg_rt.data.phantom import GROUND_TRUTH
    from emseg_rt.errors import EmsegError
    from emseg_rt.io.ome_zarr import list_label_groups
    from emseg_rt.models import build
    from emseg_rt.models.default_model import default_model_name, load_default_model
    from emseg_rt.runtime.devices import resolve_device
    from emseg_rt.training import train_head
    from emseg_rt.training.cache import package_embedder

    device = resolve_device(device, None if quiet else lambda line: typer.echo(line, err=True))
    if recipe is not None or model.startswith("samda-"):
        other = {"--sigma": sigma, "--prompt-fraction": prompt_fraction, "--class-id": class_id != 2 or None,
                 "--ema-decay": ema_decay != 0.99 or None, "--contrastive-weight": contrastive_weight or None,
                 "--cos-weight": cos_weight != 0.2 or None, "--cache": cache, "--embeddings-from": embeddings_from}
        _train_samda(model, recipe, weights, data, labels, out, target=target, shots=shots, steps=steps, batch=batch,
                     lr=lr, checkpoint_every=checkpoint_every, stop_after=stop_after, resume=resume, seed=seed,
                     quiet=quiet, device=device, wrong=[name for name, value in other.items() if value is not None])
        return
    prompt_das_options = {"--sigma": sigma is not None, "--prompt-fraction": prompt_fraction is not None,
                          "--class-id": class_id != 2, "--target": target is not None, "--ema-decay": ema_decay != 0.99,
                          "--contrastive-weight": contrastive_weight != 0.0, "--stop-after": stop_after is not None}
    scsam_options = {"--cos-weight": cos_weight != 0.2, "--cache": cache is not None,
                     "--embeddings-from": embeddings_from is not None}
    prompt_das = model.startswith("prompt-das-")
    wrong = [name for name, given in (scsam_options if prompt_das else prompt_das_options).items() if given]
    if wrong:
        raise EmsegError(f"{', '.join(wrong)}: not an option for training {model} "
                         f"({'ScSAM heads' if prompt_das else 'prompt-das-* models'} only)")
    labels = GROUND_TRUTH if labels is None else labels
    image = read_volume_or_fail(data)
    label_path = Path(labels)
    truth = read_volume_or_fail(data, labels) if labels in list_label_groups(data) else (
        read_volume_or_fail(label_path) if label_path.exists() else None)
    if truth is None:
        raise EmsegError(f"--labels {labels!r}: neither a label group of {data} nor an existing path")
    if prompt_das:
        _train_prompt_das(model, weights, image, truth, out, target=target, steps=steps, batch=batch, lr=lr,
                          sigma=sigma, prompt_fraction=prompt_fraction, class_id=class_id, ema_decay=ema_decay,
                          contrastive_weight=contrastive_weight, checkpoint_every=checkpoint_every,
                          stop_after=stop_after, resume=resume, seed=seed, quiet=quiet, device=device)
        return
    batch = 8 if batch is None else batch
    lr = 1e-3 if lr is None else lr
    if model == default_model_name() and not weights:
        pipeline = load_default_model()
    else:
        pipeline = build(model, checkpoint=list(weights) if weights else None)
    pipeline = pipeline.to(device)
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


def _train_prompt_das(model: str, weights: list[Path] | None, image, truth, out: Path, *, target: Path | None,
                      steps: int, batch: int | None, lr: float | None, sigma: float | None,
                      prompt_fraction: float | None, class_id: int, ema_decay: float, contrastive_weight: float,
                      checkpoint_every: int, stop_after: int | None, resume: bool, seed: int, quiet: bool,
                      device: str) -> None:
    """`emseg-rt train prompt-das-*`: the whole pipeline with `train_prompt_das`, on `device`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from emseg_rt.cli.eval_cmd import read_volume_or_fail
    from emseg_rt.models import build
    from emseg_rt.training.prompt_das import PAPER_BATCH, PAPER_LR, MeanTeacher, train_prompt_das

    pipeline = build(model, checkpoint=list(weights) if weights else None).to(device)
    mean_teacher = MeanTeacher(targets=[read_volume_or_fail(target)], ema_decay=ema_decay) if target else None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), disable=quiet) as progress:
        task = progress.add_task("training", total=steps, loss="")

        def on_step(step: int, total: int, terms) -> None:
            f = terms.as_floats()
            progress.update(task, completed=step, loss=f"loss {f['total']:.3f} (dice {f['dice']:.3f} bce "
                            f"{f['bce']:.3f} density {f['density']:.4f})")

        report = train_prompt_das(pipeline, [image], [truth], out, steps=steps,
                                  batch=PAPER_BATCH if batch is None else batch, lr=PAPER_LR if lr is None else lr,
                                  sigma=sigma, prompt_fraction=prompt_fraction, mean_teacher=mean_teacher,
                                  contrastive_weight=contrastive_weight, class_id=class_id,
                                  checkpoint_every=checkpoint_every, stop_after=stop_after, resume=resume, seed=seed,
                                  on_step=on_step)
    if not quiet:
        last = report.losses[-1] if report.losses else {}
        typer.echo(f"{out}: steps {report.start_step}→{report.end_step} of {report.steps} in {report.seconds:.1f} s; "
                   f"last loss {last.get('total', float('nan')):.4f}")


def _train_samda(model: str, recipe: str | None, weights: list[Path] | None, data: Path, labels: str | None,
                 out: Path, *, target: Path | None, shots: int | None, steps: int, batch: int | None,
                 lr: float | None, checkpoint_every: int, stop_after: int | None, resume: bool, seed: int,
                 quiet: bool, device: str, wrong: list[str]) -> None:
    """`emseg-rt train samda-* --recipe ...`: one SAMDA step with `emseg_rt.training.samda.train_samda`, on
    `device`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from emseg_rt.cli.eval_cmd import read_volume_or_fail
    from emseg_rt.data.phantom import GROUND_TRUTH
    from emseg_rt.errors import EmsegError
    from emseg_rt.io.ome_zarr import list_label_groups
    from emseg_rt.models.reproducible import build_model
    from emseg_rt.training.samda import few_shot_slices, train_samda
    from emseg_rt.training.samda import recipe as samda_recipe
    from emseg_rt.training.trainer import STATE_SUFFIX, check_out

    if recipe is None or not model.startswith("samda-"):
        raise EmsegError(f"--recipe {recipe}: SAMDA's steps train samda-* models" if recipe else
                         f"{model}: choose a SAMDA step with --recipe samda-source|samda-uda|samda-fewshot")
    samda_recipe(recipe)  # an unknown step is refused before anything is read or drawn
    check_out(out, out.with_name(out.name + STATE_SUFFIX), resume)
    uda = recipe == "samda-uda"
    given = wrong + (["--shots"] if shots is not None and recipe != "samda-fewshot" else []) + (
        ["--target"] if target is not None and not uda else [])
    if given:
        raise EmsegError(f"{', '.join(given)}: not an option for --recipe {recipe}")
    if uda and target is None:
        raise EmsegError("--recipe samda-uda needs an unlabelled target-domain volume: --target")
    image = read_volume_or_fail(data)
    truth = None
    if not uda:  # a label group of --data, or a label volume's path (as for the other models)
        group = GROUND_TRUTH if labels is None else labels
        truth = (read_volume_or_fail(data, group) if group in list_label_groups(data) else
                 read_volume_or_fail(Path(group)) if Path(group).exists() else None)
        if truth is None:
            raise EmsegError(f"--labels {group!r}: neither a label group of {data} nor an existing path")
    if recipe == "samda-fewshot":
        slices = few_shot_slices(image.shape[0], 10 if shots is None else shots)
        image, truth = image[slices], truth[slices]
    pipeline = build_model(model, list(weights or ())).to(device)  # same random init in every process: resumable
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), disable=quiet) as progress:
        task = progress.add_task(recipe, total=steps, loss="")

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            progress.update(task, completed=step, loss=" ".join(f"{k} {v:.4f}" for k, v in terms.items()))

        report = train_samda(pipeline, recipe, out, volumes=[image], labels=None if uda else [truth],
                             target=[read_volume_or_fail(target)] if uda else (), steps=steps,
                             batch=4 if batch is None else batch, lr=lr, checkpoint_every=checkpoint_every,
                             stop_after=stop_after, resume=resume, seed=seed, on_step=on_step)
    if not quiet:
        last = report.losses[-1] if report.losses else {}
        typer.echo(f"{out}: {recipe} steps {report.start_step}→{report.end_step} of {report.steps} in "
                   f"{report.seconds:.1f} s; last loss {last.get('total', float('nan')):.4f}")
